"""How the public API is served so that no one client can blind it: granian's limits and ``GuardedApp``.

granian does the HTTP in Rust (tokio, hyper); an idle or slow connection there costs a task and a small
buffer, no thread. What used to tie the tower up was what happened next: under WSGI, granian hands a
request to a Python thread as soon as its header is read, and the thread then waits for the body for as
long as the client cares to trickle it (40 such connections froze both workers), and it also waits on a
slow reader of a streamed answer. So the public API is an RSGI app, ``GuardedApp``, that runs on each
worker's event loop and uses a thread only for work that is ready:

1. the body, awaited on the event loop: refused at once (413) if its declared length is over the limit
   (``max_body_bytes`` for add_appointment, a paid tower's payment requests their own ``BODY_LIMITS``
   from ``teos.api.payments``, ``SMALL_BODY_BYTES`` for everything else), and answered
   408 unless it is complete within ``client_timeout`` seconds. Waiting for a body costs an asyncio
   task and the bytes received so far (at most ``max_body_bytes``), no thread;
2. admission: at most ``rate_per_address`` requests a second per client address (a burst of twice that),
   counted before the body is read, so a flood's CPU stays bounded whatever its concurrency; at most
   ``per_address`` requests in progress (waiting for, or holding, a thread) per client
   address (IPv4 address, IPv6 /64) in this worker, half its threads, so one address can never keep
   them all busy nor queue work ahead of others; and at most ``threads + max_waiting`` in all. Beyond
   that the answer is an immediate 503 (``Retry-After: 1``), which costs next to nothing. Behind Tor or
   a reverse proxy every client has the proxy's address, so ``per_address`` is then off
   (``--behindproxy``);
3. the Flask app, in a thread of a pool of ``threads``; a POST ``/add_appointment``, nearly every request a
   tower serves, first goes to ``fast`` (``teos.api.fastpath.AsyncFastAdd``: the same steps and the same
   bytes without Flask and without a thread, on the event loop), which hands anything unusual back to
   the app;
4. the answer: small ones are handed to granian whole; an answer over ``STREAM_THRESHOLD`` bytes (a
   subscription with many appointments) is streamed, each chunk produced in the pool and written on the
   event loop, so a slow reader holds no thread; it must be read within ``RESPONSE_TIMEOUT``.

What granian itself is told (``granian_options``): HTTP/1.1 only; a header (and, on a keep-alive
connection, the wait for the next one) must arrive within ``client_timeout``; hyper's per-connection
read buffer is capped at ``HEADER_BUFFER_BYTES`` (its default lets one connection buffer 417 KB of
header); each worker holds up to ``max_connections`` connections (granian's ``backpressure``; it used to be
1024 for all workers together, and 1,100 idle connections stopped the API), bounded by the open-file limit,
which teosd raises to its hard limit; the kernel's accept queue is ``LISTEN_BACKLOG`` long. Each worker's
event loop is uvloop's (a requirement on POSIX; granian's ``auto`` loop takes it when installed): about 8 %
more add_appointment/s than asyncio's own loop (``bench/load.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from common.errors import ErrorKind
from teos.api.errors import error_body
from teos.api.limits import host_key
from teos.api.payments import BODY_LIMITS as PAYMENT_BODY_LIMITS
from teos.api.public import guess_dialect
from teos.metrics import GUARD_ENDPOINT

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
HEADER_BUFFER_BYTES = 16 * 1024  # hyper's minimum is 8 KiB
STREAM_THRESHOLD = 64 * 1024  # answers larger than this are streamed
RESPONSE_TIMEOUT = 120.0  # seconds a client has to read a streamed answer
WAITING_PER_THREAD = 16  # admitted requests waiting for a thread, per thread, before 503
FD_RESERVE = 256  # open files a worker keeps for itself (logs, the worker channel, libraries)
MAX_TRACKED_ADDRESSES = 100_000  # request-rate buckets kept per worker
# Only add_appointment carries a blob; every other request of either client family is a few hundred
# bytes (a 104-character signature, a 66-character key, a 32-character locator), so a bigger body there
# is refused before it is read or parsed. A paid tower's payment requests have their own, tighter limits.
LARGE_BODY_PATHS = frozenset({"/add_appointment"})
FAST_PATH = "/add_appointment"  # answered by ``GuardedApp.fast`` when it can (nearly every request)
SMALL_BODY_BYTES = 4096
PATH_BODY_LIMITS = {path: min(limit, SMALL_BODY_BYTES) for path, limit in PAYMENT_BODY_LIMITS.items()}

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastHandler(Protocol):
    """Answers a POST ``/add_appointment`` from its body and headers without the Flask app, on the event
    loop, or returns None to let the app answer (``teos.api.fastpath.AsyncFastAdd``)."""

    async def __call__(self, body: bytes, user_agent: str | None, content_type: str | None) -> Any: ...


class RequestObserver(Protocol):
    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None: ...


@dataclass(frozen=True)
class GuardSettings:
    """The guard's limits (see the module docstring)."""

    threads: int
    client_timeout: float
    max_body_bytes: int
    per_address: int | None
    max_waiting: int
    rate_per_address: float | None = None  # requests per second (a burst of twice that)

    @classmethod
    def for_threads(
        cls,
        threads: int,
        client_timeout: float,
        max_body_bytes: int,
        behind_proxy: bool,
        rate_per_address: float = 0.0,
    ) -> GuardSettings:
        """Half of a worker's threads per client address, and ``rate_per_address`` requests a second
        (0: no rate); none of that behind a proxy."""
        return cls(
            threads=threads,
            client_timeout=client_timeout,
            max_body_bytes=max_body_bytes,
            per_address=None if behind_proxy else max(1, threads // 2),
            max_waiting=threads * WAITING_PER_THREAD,
            rate_per_address=None if behind_proxy or rate_per_address <= 0 else rate_per_address,
        )


def body_limit(path: str, max_body_bytes: int) -> int:
    """The most bytes a request's body to ``path`` may have."""
    if path in LARGE_BODY_PATHS:
        return max_body_bytes
    return PATH_BODY_LIMITS.get(path, SMALL_BODY_BYTES)


def client_host(client: str) -> str:
    """The address part of RSGI's ``host:port`` (``[v6]:port`` for IPv6)."""
    return client[1:].split("]", 1)[0] if client.startswith("[") else client.rsplit(":", 1)[0]


def address_key(client: str) -> str:
    """Whom a request from RSGI's ``client`` counts against (see ``teos.api.limits.host_key``)."""
    return host_key(client_host(client))


class _Refusal(Exception):
    def __init__(self, status: int, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


@dataclass
class _Answer:
    """The Flask app's answer: status, headers, the first chunks, and the rest still to produce."""

    status: int
    headers: list[tuple[str, str]]
    chunks: list[bytes]
    rest: Iterator[bytes] | None
    result: Iterable[bytes]


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class GuardedApp:
    """An RSGI app serving ``wsgi_app`` within ``settings`` (see the module docstring)."""

    def __init__(
        self,
        wsgi_app: WsgiApp,
        settings: GuardSettings,
        observer: RequestObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        fast: FastHandler | None = None,
    ) -> None:
        self.app = wsgi_app
        self.fast = fast
        self.settings = settings
        self.observer = observer
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._pool: ThreadPoolExecutor | None = None
        self._in_progress: dict[str, int] = {}  # address key -> requests (touched on the loop only)
        self._admitted = 0
        self.refused = 0  # requests the guard answered itself (for tests and logs)

    # -- lifecycle (granian calls these in the worker) -------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="api")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian stopped accepting: the requests in hand finish (their writes are synced or not begun)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="api")
        return self._pool

    # -- a request ---------------------------------------------------------------------------------

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        started = time.perf_counter()
        key = address_key(scope.client)
        if not self._within_rate(key):
            self._refuse(scope, protocol, started, 503, ErrorKind.SERVICE_UNAVAILABLE,
                         "Too many requests from this address, retry later")
            return
        try:
            body = await self._read_body(scope, protocol)
        except _Refusal as r:
            self._refuse(scope, protocol, started, r.status, r.kind, r.message)
            return
        except (OSError, RuntimeError) as e:  # the body ended before its declared end (RSGIProtocolClosed)
            # The client may have closed only its sending half and still read: it gets a 400, never the
            # empty 500 granian sends for an app that answered nothing. One that is gone hears nothing.
            log.debug("request body abandoned: %s", type(e).__name__)
            self._refuse(scope, protocol, started, 400, ErrorKind.INVALID_REQUEST_FORMAT,
                         "Bad Request: the body ended before its declared length")
            return
        limit = self.settings.per_address
        if limit is not None and self._in_progress.get(key, 0) >= limit:
            self._refuse(scope, protocol, started, 503, ErrorKind.SERVICE_UNAVAILABLE,
                         "Too many requests in progress from this address, retry later")
            return
        self._in_progress[key] = self._in_progress.get(key, 0) + 1
        try:
            await self._serve(scope, protocol, started, body)
        finally:
            left = self._in_progress[key] - 1
            if left:
                self._in_progress[key] = left
            else:
                del self._in_progress[key]

    def _within_rate(self, key: str) -> bool:
        """Takes a token from ``key``'s bucket (``rate_per_address`` a second, twice that at once);
        False when it is empty. At most ``MAX_TRACKED_ADDRESSES`` buckets, the least recent dropped."""
        rate = self.settings.rate_per_address
        if rate is None:
            return True
        now = self.clock()
        burst = 2 * rate
        tokens, at = self._buckets.pop(key, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        admitted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if admitted else tokens, now)
        while len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)
        return admitted

    async def _serve(self, scope: Any, protocol: Any, started: float, body: bytes) -> None:
        if self._admitted >= self.settings.threads + self.settings.max_waiting:
            self._refuse(scope, protocol, started, 503, ErrorKind.SERVICE_UNAVAILABLE,
                         "Service currently unavailable")
            return
        self._admitted += 1
        try:
            loop = asyncio.get_running_loop()
            if self.fast is not None and scope.method == "POST" and scope.path == FAST_PATH:
                headers = scope.headers
                quick = await self.fast(body, headers.get("user-agent"), headers.get("content-type"))
                if quick is not None:
                    protocol.response_bytes(quick.status, quick.headers, quick.body)
                    return
            answer = await loop.run_in_executor(self.pool, self._call, self._environ(scope, body))
            if answer.rest is None:
                protocol.response_bytes(answer.status, answer.headers, b"".join(answer.chunks))
            else:
                await self._stream(protocol, answer)
        except Exception:
            log.exception("unexpected error serving a request")
            with contextlib.suppress(Exception):
                self._refuse(scope, protocol, started, 503, ErrorKind.UNEXPECTED, "Unexpected error")
        finally:
            self._admitted -= 1

    async def _read_body(self, scope: Any, protocol: Any) -> bytes:
        limit = body_limit(scope.path, self.settings.max_body_bytes)
        declared = scope.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise _Refusal(400, ErrorKind.INVALID_REQUEST_FORMAT, "Bad Request") from None
            if length > limit:
                raise _Refusal(413, ErrorKind.INVALID_REQUEST_FORMAT, "Request Entity Too Large")
            if length == 0:
                return b""
            try:  # framed by its declared length (hyper reads no more): taken whole, in one call
                async with asyncio.timeout(self.settings.client_timeout):
                    body: bytes = await protocol()
            except TimeoutError:
                raise _Refusal(408, ErrorKind.INVALID_REQUEST_FORMAT, "Request Timeout") from None
            if len(body) > limit:
                raise _Refusal(413, ErrorKind.INVALID_REQUEST_FORMAT, "Request Entity Too Large")
            return body
        elif "transfer-encoding" not in scope.headers:
            return b""
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.client_timeout):
                async for chunk in protocol:
                    size += len(chunk)
                    if size > limit:
                        raise _Refusal(413, ErrorKind.INVALID_REQUEST_FORMAT, "Request Entity Too Large")
                    parts.append(chunk)
        except TimeoutError:
            raise _Refusal(408, ErrorKind.INVALID_REQUEST_FORMAT, "Request Timeout") from None
        return b"".join(parts)

    def _environ(self, scope: Any, body: bytes) -> dict[str, Any]:
        server_host, _, server_port = scope.server.rpartition(":")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(scope.path, encoding="latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": server_host.strip("[]"),
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": client_host(scope.client),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in scope.headers.items():
            if name in ("content-length", "transfer-encoding"):
                continue
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
                continue
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _call(self, environ: dict[str, Any]) -> _Answer:
        """Runs the Flask app (in a pool thread); collects the answer up to ``STREAM_THRESHOLD`` bytes."""
        head: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            head[:] = [int(status.split(" ", 1)[0]), list(headers)]
            return None

        result = self.app(environ, start_response)
        chunks: list[bytes] = []
        size = 0
        rest = iter(result)
        for chunk in rest:
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
            if size > STREAM_THRESHOLD:
                return _Answer(head[0], head[1], chunks, rest, result)
        _close(result)
        return _Answer(head[0], head[1], chunks, None, result)

    @staticmethod
    def _next_chunk(rest: Iterator[bytes]) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        for chunk in rest:
            parts.append(chunk)
            size += len(chunk)
            if size >= STREAM_THRESHOLD:
                break
        return b"".join(parts) if parts else None

    async def _stream(self, protocol: Any, answer: _Answer) -> None:
        assert answer.rest is not None
        loop = asyncio.get_running_loop()
        headers = [(k, v) for k, v in answer.headers if k.lower() != "content-length"]
        transport = protocol.response_stream(answer.status, headers)
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT):
                await transport.send_bytes(b"".join(answer.chunks))
                while True:
                    chunk = await loop.run_in_executor(self.pool, self._next_chunk, answer.rest)
                    if chunk is None:
                        break
                    await transport.send_bytes(chunk)
        except (TimeoutError, OSError, RuntimeError) as e:  # a reader too slow, or gone (RSGIProtocolClosed)
            log.debug("streamed answer abandoned: %s", type(e).__name__)
        finally:
            await loop.run_in_executor(self.pool, _close, answer.result)

    def _refuse(
        self, scope: Any, protocol: Any, started: float, status: int, kind: ErrorKind, message: str
    ) -> None:
        self.refused += 1
        body = json.dumps(error_body(kind, message, guess_dialect(scope.headers.get("user-agent")))).encode()
        headers = [("content-type", "application/json")]
        if status in (400, 408, 413):  # the body may be unfinished or unread: the connection cannot go on
            headers.append(("connection", "close"))
        if status == 503:  # a keep-alive client may retry on the same connection (no reconnect churn)
            headers.append(("retry-after", "1"))
        protocol.response_bytes(status, headers, body)
        if self.observer is not None:
            self.observer.observe_request(GUARD_ENDPOINT, status, time.perf_counter() - started,
                                          method=scope.method, app="public")


# -- granian ---------------------------------------------------------------------------------------


def raise_open_file_limit() -> int:
    """Raises this process's soft limit on open files to its hard limit (API workers inherit it);
    returns the soft limit in force. Under a sandbox that forbids it (systemd's ``@resources`` filter),
    the limit stays as set from outside (``LimitNOFILE=``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft


def connections_per_worker(wanted: int, open_file_limit: int) -> int:
    """``wanted`` connections per API worker, or fewer if the open-file limit cannot hold them."""
    possible = max(64, open_file_limit - FD_RESERVE)
    if wanted > possible:
        log.warning("the open-file limit (%d) allows %d connections per API worker, not %d; raise it "
                    "(ulimit -n, or LimitNOFILE= in the systemd unit)", open_file_limit, possible, wanted)
        return possible
    return wanted


def granian_options(*, workers: int, max_connections: int, client_timeout: float) -> dict[str, Any]:
    """The arguments of ``granian.Granian`` that bound what clients can hold (see the module docstring)."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    return {
        "interface": Interfaces.RSGI,
        "workers": workers,
        "blocking_threads": 1,
        "http": HTTPModes.http1,
        "websockets": False,
        "backlog": LISTEN_BACKLOG,
        "backpressure": max_connections,
        "http1_settings": HTTP1Settings(
            header_read_timeout=int(client_timeout * 1000),
            keep_alive=True,
            max_buffer_size=HEADER_BUFFER_BYTES,
        ),
        "respawn_failed_workers": True,
    }
