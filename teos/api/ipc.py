"""The channel between the API worker processes and teosd's main process, which owns the state.

teosd serves the public API from worker processes (``teos.api.worker``) so that a request's CPU work
(HTTP, JSON, public-key recovery, receipt signing) uses every core; the store, the Gatekeeper and the
engine stay in the main process, the single writer. A worker's ``RemoteCore`` asks the main process's
``CoreServer`` for each state change, over a Unix socket:

- Address: ``<datadir>/<network>/worker.sock`` (``socket_address``), in a directory only teosd's user
  may enter, so the kernel turns other users away before teosd sees them (a stale file left by a killed
  teosd is replaced at start). Where that path is too long for a Unix socket, a Linux abstract socket
  (``\\0teosd-<pid>-<random>``), which any local process may connect to. Either way a connection is
  refused at once unless its peer runs as teosd's own user (``SO_PEERCRED``), and it
  must then send, within ``HANDSHAKE_TIMEOUT`` seconds in all, the 32-byte token the main process handed
  to its workers (in the spawn pickle, never in argv or the environment); a wrong token closes the
  connection unanswered. At most ``MAX_HANDSHAKES`` connections may be presenting their token at once,
  and refusals are logged once a minute with a count (another user's 1,100 connections used to hold the
  channel full and write 4,400 lines a minute).
- Frames: a 4-byte big-endian length, then a ``marshal`` payload. Requests are ``(op, *args)``; answers are
  ``("ok", result)`` or ``("err", kind_name, message, is_request_error)`` (a payment refusal adds the
  name of its ``Refusal``). Only bytes, str, int, None, tuples and lists cross (records travel as their
  storage encodings); ``marshal`` cannot build other objects, and the peer is authenticated anyway. An
  ``add`` is answered with the start block and the user record only: the worker has the rest of the
  appointment's record. A paid tower adds the payment ops (``teos.payments.service.PaymentOps``) to the
  server's.
- Connections: one per worker thread (kept for the thread's life), and the connections of a worker's
  event loop (``AsyncCoreClient``, one per request in flight, up to the worker's thread count); one
  server thread per connection, which blocks in the use case (a synced group commit) exactly as an
  in-process HTTP thread would, so concurrent requests still share one fsync.

A broken connection (teosd stopping, or gone) is answered as SERVICE_UNAVAILABLE, never a 500: the client
may retry, and an ``add_appointment`` retried is an update of the same uuid, charged nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import marshal
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from common.appointment import Appointment
from common.channel_wire import PaymentError, Refusal
from common.errors import ErrorKind, RequestError, TeosError
from common.types import Dialect, Locator, UserId
from teos.api.limits import Admission
from teos.logutil import RateLimitedLog
from teos.service import AppointmentState, Core, SubscriptionInfo
from teos.storage.codec import AppointmentRecord, TrackerRecord, UserRecord

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
SOCKET_NAME = "worker.sock"
MAX_SOCKET_PATH = 100
HANDSHAKE_TIMEOUT = 5.0  # seconds, in all, a new connection has to present the token
MAX_CONNECTIONS = 1024  # workers x threads is far below; bounds threads if something local floods the socket
MAX_HANDSHAKES = 64  # connections of teosd's user still presenting their token
REFUSAL_LOG_INTERVAL = 60.0  # seconds between log lines about refused connections (the rest are counted)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_REQUEST_BYTES = 1 << 20  # an add_appointment with the largest blob is ~17 KB
MAX_ANSWER_BYTES = 1 << 28  # a subscription's locator list (16 B each) for millions of appointments
MAX_PAGE = 16_384  # locators per page of a subscription's list (256 KiB)
_HEADER = struct.Struct(">I")

# One request observed by a worker's metrics: (app, endpoint, method, status, seconds).
Observation = tuple[str, str, str, int, float]


class ChannelError(OSError):
    """The connection to the main process broke or carried something unreadable."""


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (None where SO_PEERCRED is missing)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    except OSError:
        return None
    return int(uid)


def new_address() -> str:
    """A fresh abstract Unix socket address for this process's ``CoreServer``."""
    return f"\0teosd-{os.getpid()}-{os.urandom(8).hex()}"


def socket_address(directory: Path) -> str:
    """The channel's address for a tower whose private (0700) directory is ``directory``: a socket file
    there, so that the kernel refuses other users before teosd even sees them; an abstract address if
    the path is too long for a Unix socket (108 bytes, with room to spare)."""
    path = directory / SOCKET_NAME
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        log.info("worker channel on an abstract socket: the path %s is too long for a socket file", path)
        return new_address()
    return str(path)


def _send(sock: socket.socket, payload: Any) -> None:
    data = marshal.dumps(payload)
    sock.sendall(_HEADER.pack(len(data)) + data)


class _Reader:
    """Reads length-prefixed frames from a socket, buffering what arrives beyond the current frame."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.limit = limit
        self.buffer = bytearray()

    def _fill(self, n: int, deadline: float | None = None) -> bool:
        while len(self.buffer) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_exact(self, n: int, deadline: float | None = None) -> bytes | None:
        """``n`` bytes, or None if the peer closed the connection first (or, with ``deadline``, a
        ``time.monotonic()`` value, did not send them all by then)."""
        if not self._fill(n, deadline):
            return None
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def frame(self) -> Any:
        """The next frame's payload; None at a clean end of stream. Raises ChannelError on a bad frame."""
        if not self._fill(_HEADER.size):
            if self.buffer:
                raise ChannelError("connection closed inside a frame")
            return None
        (size,) = _HEADER.unpack_from(self.buffer)
        if size > self.limit:
            raise ChannelError(f"frame of {size} bytes over the limit of {self.limit}")
        if not self._fill(_HEADER.size + size):
            raise ChannelError("connection closed inside a frame")
        data = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
        del self.buffer[: _HEADER.size + size]
        try:
            return marshal.loads(data)
        except (ValueError, EOFError, TypeError) as e:
            raise ChannelError(f"unreadable frame: {e}") from None


# -- the main process's side -------------------------------------------------------------------------


class CoreServer:
    """Answers the workers' requests with ``core`` (see the module docstring).

    ``on_observations`` receives the request metrics the workers forward, ``on_dropped`` how many they
    answered but had to drop.
    ``start`` binds and starts the accept thread; ``stop`` closes the listener and every connection and
    joins the threads (a request in progress finishes its use case first: its synced write is never cut
    in half).
    """

    def __init__(
        self,
        core: Core,
        token: bytes,
        address: str | None = None,
        on_observations: Callable[[Sequence[Observation]], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
        admission: Admission | None = None,
        extra_ops: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.core = core
        self.token = token
        self.address = address or new_address()
        self.on_observations = on_observations
        self.on_dropped = on_dropped
        self.admission = admission
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._handshaking = 0
        self._stopping = threading.Event()
        self.uid = os.geteuid()
        self.refused = 0  # connections refused (other user, no token, too many): for tests and logs
        self._refusals = RateLimitedLog(log, REFUSAL_LOG_INTERVAL)
        self._ops: dict[str, Callable[..., Any]] = {
            "user": self._user,
            "register": self._register,
            "add": self._add,
            "get": self._get,
            "info": self._info,
            "page": self._page,
            "observe": self._observe,
            "admit": self._admit,
            "admit_open": self._admit_open,
        }
        for name, op in (extra_ops or {}).items():  # a paid tower's payment ops (teos.payments.service)
            if name in self._ops:
                raise ValueError(f"worker channel op {name!r} is defined twice")
            self._ops[name] = op

    @property
    def socket_file(self) -> Path | None:
        """The socket file, when the channel is not on an abstract address."""
        return None if self.address.startswith("\0") else Path(self.address)

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.socket_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_file.unlink()  # left by a teosd that was killed
        listener.bind(self.address)
        if self.socket_file is not None:
            os.chmod(self.socket_file, 0o600)
        listener.listen(256)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name="core-server", daemon=True)
        self._accept_thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            connections = list(self._connections.items())
        for conn, _ in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)  # the thread finishes its request, then sees the end
        for _, thread in connections:
            thread.join(timeout=30)
        if self.socket_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_file.unlink()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            uid = _peer_uid(conn)
            if uid is not None and uid != self.uid:
                self.refused += 1
                self._refusals.warning("uid", "refused a connection to the worker channel from uid %d", uid)
                conn.close()
                continue
            with self._lock:
                if len(self._connections) >= MAX_CONNECTIONS or self._handshaking >= MAX_HANDSHAKES:
                    self.refused += 1
                    self._refusals.warning(
                        "full", "refused a connection to the worker channel: %d open, %d presenting their "
                        "token", len(self._connections), self._handshaking)
                    conn.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(conn,), name="core-conn", daemon=True)
                self._connections[conn] = thread
                self._handshaking += 1
            thread.start()

    def _handshake(self, conn: socket.socket, reader: _Reader) -> bool:
        """Whether ``conn`` presents the token within ``HANDSHAKE_TIMEOUT`` in all (not per read: a byte
        every few seconds used to hold a connection for as long as the sender liked)."""
        try:
            token = reader.read_exact(TOKEN_BYTES, deadline=time.monotonic() + HANDSHAKE_TIMEOUT)
        except OSError:
            token = None
        finally:
            with self._lock:
                self._handshaking -= 1
        if token is None or not hmac.compare_digest(token, self.token):
            self.refused += 1
            self._refusals.warning("token", "refused a connection to the worker channel: no valid token "
                                   "within %.0f s", HANDSHAKE_TIMEOUT)
            return False
        return True

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn, MAX_REQUEST_BYTES)
        try:
            if not self._handshake(conn, reader):
                return
            conn.settimeout(None)  # a worker thread may stay idle for hours between requests
            while True:
                request = reader.frame()
                if request is None:
                    return
                _send(conn, self._answer(request))
        except OSError as e:
            if not self._stopping.is_set():
                log.info("worker connection closed: %s", e)
        finally:
            with self._lock:
                self._connections.pop(conn, None)
            conn.close()

    def _answer(self, request: Any) -> Any:
        if not isinstance(request, tuple) or not request or request[0] not in self._ops:
            log.error("unknown request on the worker channel: %.80r", request)
            return ("err", ErrorKind.UNEXPECTED.name, "Unexpected error", False)
        try:
            return ("ok", self._ops[request[0]](*request[1:]))
        except PaymentError as e:  # the check that refused it travels too (the answer's "reason")
            return ("err", e.kind.name, e.message, False, e.reason.name)
        except TeosError as e:
            return ("err", e.kind.name, e.message, isinstance(e, RequestError))
        except Exception:
            log.exception("unexpected error answering a worker's %s request", request[0])
            return ("err", ErrorKind.UNEXPECTED.name, "Unexpected error", False)

    # -- ops ---------------------------------------------------------------------------------------

    def _user(self, user_id: bytes) -> bytes | None:
        user = self.core.user(UserId(user_id))
        return None if user is None else user.encode()

    def _register(self, user_id: bytes, dialect: str) -> bytes:
        return self.core.register(UserId(user_id), Dialect(dialect)).encode()

    def _add(
        self, user_id: bytes, signature: str, locator: bytes, blob: bytes, to_self_delay: int
    ) -> tuple[int, bytes]:
        appointment = Appointment(Locator(locator), blob, to_self_delay)
        record, user = self.core.add_appointment(UserId(user_id), signature, appointment)
        return record.start_block, user.encode()  # the worker holds the rest of the record

    def _get(self, user_id: bytes, locator: bytes) -> tuple[str, bytes | None, bytes | None]:
        state = self.core.get_appointment(UserId(user_id), Locator(locator))
        return (
            state.status,
            None if state.appointment is None else state.appointment.encode(),
            None if state.tracker is None else state.tracker.encode(),
        )

    def _info(self, user_id: bytes, limit: int | None = None) -> tuple[bytes, bytes, bytes | None]:
        info = self.core.get_subscription_info(UserId(user_id), _page_limit(limit))
        locators = b"".join(locator.raw for locator in info.locators)
        return info.user.encode(), locators, None if info.next_page is None else info.next_page.raw

    def _page(self, user_id: bytes, after: bytes, limit: int) -> tuple[bytes, bytes | None]:
        page_limit = _page_limit(limit) or 1
        locators, next_page = self.core.subscription_page(UserId(user_id), Locator(after), page_limit)
        return b"".join(locator.raw for locator in locators), None if next_page is None else next_page.raw

    def _admit(self, address: str) -> None:
        if self.admission is not None:
            self.admission.admit_registration(str(address))

    def _admit_open(self, address: str) -> None:
        if self.admission is not None:
            self.admission.admit_channel_opening(str(address))

    def _observe(self, observations: list[Observation], dropped: int = 0) -> None:
        if self.on_observations is not None and observations:
            self.on_observations(observations)
        if self.on_dropped is not None and isinstance(dropped, int) and dropped > 0:
            self.on_dropped(dropped)


# -- the workers' side --------------------------------------------------------------------------------


class CoreClient:
    """A worker's connections to the ``CoreServer``: one per thread, opened on first use."""

    def __init__(self, address: str, token: bytes, timeout: float = 120.0) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> tuple[socket.socket, _Reader]:
        conn: tuple[socket.socket, _Reader] | None = getattr(self._local, "conn", None)
        if conn is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
                sock.sendall(self.token)
            except OSError:
                sock.close()
                raise
            conn = (sock, _Reader(sock, MAX_ANSWER_BYTES))
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn[0].close()

    def call(self, op: str, *args: Any) -> Any:
        """The result of ``op`` in the main process; raises its TeosError, or SERVICE_UNAVAILABLE when
        the main process cannot be reached."""
        try:
            sock, reader = self._connection()
            _send(sock, (op, *args))
            answer = reader.frame()
        except OSError as e:
            self._drop()
            log.warning("the worker channel failed during %s: %s", op, e)
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable") from None
        if answer is None:
            self._drop()
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable")
        return _result(answer)

    def close(self) -> None:
        self._drop()


def _result(answer: Any) -> Any:
    """An answer's result, or its error raised as it was raised in the main process."""
    if answer[0] == "ok":
        return answer[1]
    if len(answer) == 5:
        raise PaymentError(Refusal[answer[4]], answer[2])
    _, kind_name, message, is_request_error = answer
    kind = ErrorKind[kind_name]
    raise RequestError(kind, message) if is_request_error else TeosError(kind, message)


class _FrameProtocol(asyncio.Protocol):
    """One connection of an ``AsyncCoreClient``: frames in, and the one answer awaited at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one without deriving from it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < _HEADER.size:
            return
        (size,) = _HEADER.unpack_from(self.buffer)
        if size > MAX_ANSWER_BYTES:
            self._fail(ChannelError(f"frame of {size} bytes over the limit of {MAX_ANSWER_BYTES}"))
        elif len(self.buffer) >= _HEADER.size + size:
            payload = bytes(self.buffer[_HEADER.size : _HEADER.size + size])
            del self.buffer[: _HEADER.size + size]
            waiter, self.waiter = self.waiter, None
            if waiter is None or waiter.done() or self.buffer:
                self._fail(ChannelError("an answer nobody asked for"))
            else:
                waiter.set_result(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ChannelError("the main process closed the worker channel"))

    def _fail(self, error: BaseException) -> None:
        self.lost = error
        if self.transport is not None:
            self.transport.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def ask(self, frame: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(frame)
        return self.waiter


class AsyncCoreClient:
    """A worker's connections to the ``CoreServer`` for its event loop (the add_appointment fast path,
    ``teos.api.fastpath.AsyncFastAdd``): a call borrows an idle connection, or opens one while fewer than
    ``size`` are open (else it waits for one), sends its frame and awaits the answer; the loop serves other
    requests meanwhile, with no thread handed the request and none waiting for it. Each connection carries
    one request at a time, so the main process answers them on as many threads and they share its fsync.
    A connection is a plain ``asyncio.Protocol`` that completes the awaited answer when its frame is in (the
    streams' buffering and two reads per answer cost a worker more than the rest of the channel). Errors
    are those of ``CoreClient.call``, and a call not answered within ``timeout`` seconds is one of them."""

    def __init__(self, address: str, token: bytes, size: int, timeout: float = 120.0) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        self._idle: list[_FrameProtocol] = []
        self._slots = asyncio.Semaphore(size)

    async def call(self, op: str, *args: Any) -> Any:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                conn = self._idle.pop()
                if conn.lost is not None:  # closed while idle (the main process restarted its channel)
                    conn = None
            loop = asyncio.get_running_loop()
            timer = None
            try:
                if conn is None:
                    async with asyncio.timeout(self.timeout):
                        _, conn = await loop.create_unix_connection(_FrameProtocol, self.address)
                    assert conn.transport is not None
                    conn.transport.write(self.token)
                data = marshal.dumps((op, *args))
                answer = conn.ask(_HEADER.pack(len(data)) + data)
                timer = loop.call_later(self.timeout, _expire, answer)
                result = marshal.loads(await answer)
            except (OSError, EOFError, ValueError, TypeError, TimeoutError) as e:
                if conn is not None:
                    conn._fail(ChannelError("dropped"))
                log.warning("the worker channel failed during %s: %r", op, e)
                raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable") from None
            finally:
                if timer is not None:
                    timer.cancel()
            self._idle.append(conn)
        return _result(result)

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


def _expire(answer: asyncio.Future[bytes]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError("the main process did not answer in time"))


class RemoteAdmission:
    """``teos.api.limits.Admission`` over a ``CoreClient``: the limits are kept in the main process."""

    def __init__(self, client: CoreClient) -> None:
        self.client = client

    def admit_registration(self, address: str) -> None:
        self.client.call("admit", address)

    def admit_channel_opening(self, address: str) -> None:
        self.client.call("admit_open", address)


class RemoteCore:
    """``Core`` over a ``CoreClient``: the use cases run in teosd's main process.

    ``user`` (who is calling, and in which dialect) is answered from a short-lived cache of the user
    records this worker has seen, saving a round trip on most requests. That is safe because the cache
    only identifies the caller: every use case re-reads the user in the main process (slots, expiry,
    existence) under the user's lock. A user deleted within ``USER_CACHE_SECONDS`` is refused there.
    """

    USER_CACHE_SECONDS = 10.0
    USER_CACHE_SIZE = 100_000

    def __init__(self, client: CoreClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        self._users: dict[UserId, tuple[UserRecord, float]] = {}

    def _remember(self, user: UserRecord) -> UserRecord:
        if len(self._users) >= self.USER_CACHE_SIZE:
            self._users.clear()
        self._users[user.user_id] = (user, self.clock() + self.USER_CACHE_SECONDS)
        return user

    def user(self, user_id: UserId) -> UserRecord | None:
        cached = self.cached_user(user_id)
        if cached is not None:
            return cached
        return self.user_answer(user_id, self.client.call("user", user_id.raw))

    def cached_user(self, user_id: UserId) -> UserRecord | None:
        """The user as remembered, if still fresh (else None: ask the main process, ``user_answer``)."""
        cached = self._users.get(user_id)
        return cached[0] if cached is not None and cached[1] > self.clock() else None

    def user_answer(self, user_id: UserId, raw: bytes | None) -> UserRecord | None:
        """What the main process's answer to ``("user", user_id)`` says, remembered."""
        if raw is None:
            self._users.pop(user_id, None)
            return None
        return self._remember(UserRecord.decode(raw))

    def register(self, user_id: UserId, dialect: Dialect) -> UserRecord:
        return self._remember(UserRecord.decode(self.client.call("register", user_id.raw, dialect.value)))

    def add_appointment(
        self, user_id: UserId, signature: str, appointment: Appointment
    ) -> tuple[AppointmentRecord, UserRecord]:
        return self.add_answer(self.client.call(*self.add_request(user_id, signature, appointment)),
                               user_id, signature, appointment)  # fmt: skip

    @staticmethod
    def add_request(user_id: UserId, signature: str, appointment: Appointment) -> tuple[Any, ...]:
        """The ``add`` request (op and arguments) for the worker channel."""
        return ("add", user_id.raw, signature, appointment.locator.raw, appointment.encrypted_blob,
                appointment.to_self_delay)  # fmt: skip

    def added(self, result: Any) -> tuple[int, UserRecord]:
        """The start block and the user (remembered, with its new slots) of an ``add``'s answer."""
        start_block, raw_user = result
        if not isinstance(start_block, int):
            raise TypeError("start block is not an int")
        return start_block, self._remember(UserRecord.decode(raw_user))

    def add_answer(
        self, result: Any, user_id: UserId, signature: str, appointment: Appointment
    ) -> tuple[AppointmentRecord, UserRecord]:
        """The stored record and the user (remembered, with its new slots) from the main process's answer
        to the ``add`` of ``appointment``: the start block and the user record (the worker has the rest)."""
        start_block, user = self.added(result)
        return AppointmentRecord.of(appointment, user_id, signature, start_block, user.dialect), user

    def get_appointment(self, user_id: UserId, locator: Locator) -> AppointmentState:
        status, appointment, tracker = self.client.call("get", user_id.raw, locator.raw)
        return AppointmentState(
            status,
            appointment=None if appointment is None else AppointmentRecord.decode(appointment),
            tracker=None if tracker is None else TrackerRecord.decode(tracker),
        )

    def get_subscription_info(self, user_id: UserId, limit: int | None = None) -> SubscriptionInfo:
        user, locators, next_page = self.client.call("info", user_id.raw, limit)
        return SubscriptionInfo(
            UserRecord.decode(user), _locators(locators), None if next_page is None else Locator(next_page)
        )

    def subscription_page(
        self, user_id: UserId, after: Locator, limit: int
    ) -> tuple[list[Locator], Locator | None]:
        locators, next_page = self.client.call("page", user_id.raw, after.raw, limit)
        return _locators(locators), None if next_page is None else Locator(next_page)


def _locators(raw: bytes) -> list[Locator]:
    size = Locator.SIZE
    return [Locator(raw[i : i + size]) for i in range(0, len(raw), size)]


def _page_limit(limit: object) -> int | None:
    """A page size asked over the channel: None (everything, for callers that want the whole list) or
    at most ``MAX_PAGE``, so one answer stays small whatever a worker asks."""
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError("page limit must be an int")
    return max(1, min(limit, MAX_PAGE))
