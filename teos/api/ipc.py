"""The channel between the API worker processes and teosd's main process, which owns the state.

teosd serves the public API from worker processes (``teos.api.worker``) so that a request's CPU work
(HTTP, JSON, public-key recovery, receipt signing) uses every core; the store, the Gatekeeper and the
engine stay in the main process, the single writer. A worker's ``RemoteCore`` asks the main process's
``CoreServer`` for each state change, over a Unix socket:

- Address: a Linux abstract socket (``\\0teosd-<pid>-<random>``): no file to clean up after a crash, and
  no path-length limit from deep data directories. Any local process may connect to an abstract socket,
  so each connection must first send the 32-byte token the main process handed to its workers (in the
  spawn pickle, never in argv or the environment); a wrong token closes the connection unanswered.
- Frames: a 4-byte big-endian length, then a ``marshal`` payload. Requests are ``(op, *args)``; answers are
  ``("ok", result)`` or ``("err", kind_name, message, is_request_error)`` (a payment refusal adds the
  name of its ``Refusal``). Only bytes, str, int, None, tuples and lists cross (records travel as their
  storage encodings); ``marshal`` cannot build other objects, and the peer is authenticated anyway. A paid
  tower adds the payment ops (``teos.payments.service.PaymentOps``) to the server's.
- Connections: one per worker thread (kept for the thread's life); one server thread per connection,
  which blocks in the use case (a synced group commit) exactly as an in-process HTTP thread would, so
  concurrent requests still share one fsync.

A broken connection (teosd stopping, or gone) is answered as SERVICE_UNAVAILABLE, never a 500: the client
may retry, and an ``add_appointment`` retried is an update of the same uuid, charged nothing twice.
"""

from __future__ import annotations

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
from typing import Any

from common.appointment import Appointment
from common.channel_wire import PaymentError, Refusal
from common.errors import ErrorKind, RequestError, TeosError
from common.types import Dialect, Locator, UserId
from teos.service import AppointmentState, Core, SubscriptionInfo
from teos.storage.codec import AppointmentRecord, TrackerRecord, UserRecord

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
HANDSHAKE_TIMEOUT = 5.0  # seconds a new connection has to present the token
MAX_CONNECTIONS = 1024  # workers x threads is far below; bounds threads if something local floods the socket
MAX_REQUEST_BYTES = 1 << 20  # an add_appointment with the largest blob is ~17 KB
MAX_ANSWER_BYTES = 1 << 28  # a subscription's locator list (16 B each) for millions of appointments
_HEADER = struct.Struct(">I")

# One request observed by a worker's metrics: (app, endpoint, method, status, seconds).
Observation = tuple[str, str, str, int, float]


class ChannelError(OSError):
    """The connection to the main process broke or carried something unreadable."""


def new_address() -> str:
    """A fresh abstract Unix socket address for this process's ``CoreServer``."""
    return f"\0teosd-{os.getpid()}-{os.urandom(8).hex()}"


def _send(sock: socket.socket, payload: Any) -> None:
    data = marshal.dumps(payload)
    sock.sendall(_HEADER.pack(len(data)) + data)


class _Reader:
    """Reads length-prefixed frames from a socket, buffering what arrives beyond the current frame."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock = sock
        self.limit = limit
        self.buffer = bytearray()

    def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_exact(self, n: int) -> bytes | None:
        """``n`` bytes, or None if the peer closed the connection first."""
        if not self._fill(n):
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

    ``on_observations`` receives the request metrics the workers forward. ``start`` binds and starts the
    accept thread; ``stop`` closes the listener and every connection and joins the threads (a request in
    progress finishes its use case first: its synced write is never cut in half).
    """

    def __init__(
        self,
        core: Core,
        token: bytes,
        address: str | None = None,
        on_observations: Callable[[Sequence[Observation]], None] | None = None,
        extra_ops: Mapping[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.core = core
        self.token = token
        self.address = address or new_address()
        self.on_observations = on_observations
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._ops: dict[str, Callable[..., Any]] = {
            "user": self._user,
            "register": self._register,
            "add": self._add,
            "get": self._get,
            "info": self._info,
            "observe": self._observe,
        }
        for name, op in (extra_ops or {}).items():  # a paid tower's payment ops (teos.payments.service)
            if name in self._ops:
                raise ValueError(f"worker channel op {name!r} is defined twice")
            self._ops[name] = op

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
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

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            with self._lock:
                if len(self._connections) >= MAX_CONNECTIONS:
                    log.warning("refused a connection to the worker channel: %d open", MAX_CONNECTIONS)
                    conn.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(conn,), name="core-conn", daemon=True)
                self._connections[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn, MAX_REQUEST_BYTES)
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            token = reader.read_exact(TOKEN_BYTES)
            if token is None or not hmac.compare_digest(token, self.token):
                log.warning("refused a connection to the worker channel: wrong token")
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
    ) -> tuple[bytes, bytes]:
        appointment = Appointment(Locator(locator), blob, to_self_delay)
        record, user = self.core.add_appointment(UserId(user_id), signature, appointment)
        return record.encode(), user.encode()

    def _get(self, user_id: bytes, locator: bytes) -> tuple[str, bytes | None, bytes | None]:
        state = self.core.get_appointment(UserId(user_id), Locator(locator))
        return (
            state.status,
            None if state.appointment is None else state.appointment.encode(),
            None if state.tracker is None else state.tracker.encode(),
        )

    def _info(self, user_id: bytes) -> tuple[bytes, list[bytes]]:
        info = self.core.get_subscription_info(UserId(user_id))
        return info.user.encode(), [locator.raw for locator in info.locators]

    def _observe(self, observations: list[Observation]) -> None:
        if self.on_observations is not None:
            self.on_observations(observations)


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
        if answer[0] == "ok":
            return answer[1]
        if len(answer) == 5:
            raise PaymentError(Refusal[answer[4]], answer[2])
        _, kind_name, message, is_request_error = answer
        kind = ErrorKind[kind_name]
        raise RequestError(kind, message) if is_request_error else TeosError(kind, message)

    def close(self) -> None:
        self._drop()


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
        cached = self._users.get(user_id)
        if cached is not None and cached[1] > self.clock():
            return cached[0]
        raw = self.client.call("user", user_id.raw)
        if raw is None:
            self._users.pop(user_id, None)
            return None
        return self._remember(UserRecord.decode(raw))

    def register(self, user_id: UserId, dialect: Dialect) -> UserRecord:
        return self._remember(UserRecord.decode(self.client.call("register", user_id.raw, dialect.value)))

    def add_appointment(
        self, user_id: UserId, signature: str, appointment: Appointment
    ) -> tuple[AppointmentRecord, UserRecord]:
        record, user = self.client.call(
            "add",
            user_id.raw,
            signature,
            appointment.locator.raw,
            appointment.encrypted_blob,
            appointment.to_self_delay,
        )
        return AppointmentRecord.decode(record), self._remember(UserRecord.decode(user))

    def get_appointment(self, user_id: UserId, locator: Locator) -> AppointmentState:
        status, appointment, tracker = self.client.call("get", user_id.raw, locator.raw)
        return AppointmentState(
            status,
            appointment=None if appointment is None else AppointmentRecord.decode(appointment),
            tracker=None if tracker is None else TrackerRecord.decode(tracker),
        )

    def get_subscription_info(self, user_id: UserId) -> SubscriptionInfo:
        user, locators = self.client.call("info", user_id.raw)
        return SubscriptionInfo(UserRecord.decode(user), [Locator(raw) for raw in locators])
