"""Serving the admin app on its own port, from a thread of the daemon, with the cookie's lifetime tied to it.

``start()`` writes a fresh cookie to the cookie directory, builds the app and starts listening (a failure
to bind raises ``AdminServerError`` and leaves no cookie behind); ``stop()`` stops accepting, lets the
requests in hand finish and deletes the cookie.

The admin port is on localhost, but every local user can connect to it, and it runs inside teosd's main
process, next to the engine. Werkzeug's threaded server gave each connection a thread with no timeout:
3,000 idle connections made 1,790 threads. So this is a small HTTP/1.1 server of its own, on an asyncio
event loop in one thread, where a connection costs a few hundred bytes until its request is complete:

- a request (header and body) must arrive within ``client_timeout`` seconds, and fit ``MAX_HEADER_BYTES``
  and ``MAX_BODY_BYTES``; one request per connection (``Connection: close``);
- at most ``max_connections`` (16,384) are open; at the limit, the oldest connection still waiting for
  its request is closed to make room, so whoever sends a request promptly is served;
- the Flask app runs in a pool of ``THREADS`` threads with at most ``MAX_QUEUED`` requests waiting
  (then 503): an admin-port flood can occupy two threads of the main process, never more. A paid tower's
  claims (``POST /claim/<channel_id>``, ``POST /claimall``) wait for the engine thread, up to a minute
  while it has a block in hand, so they run in a pool of their own (``CLAIM_THREADS`` thread,
  ``MAX_CLAIMS_QUEUED`` waiting): neither the event loop nor ``/ready``, ``/metrics`` and the other routes
  ever wait behind a claim;
- the answer must be read within ``client_timeout`` too, or the connection is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from werkzeug.test import run_wsgi_app

from common.cookie import cookie_path, remove_cookie, write_cookie
from teos.admin.app import create_admin_app
from teos.admin.backend import AdminBackend
from teos.metrics import Metrics

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 4096  # the admin app's own limit too
THREADS = 2
MAX_QUEUED = 32
CLAIM_THREADS = 1  # claims run one at a time on the engine thread anyway
MAX_CLAIMS_QUEUED = 4
SWEEP_INTERVAL = 0.5  # seconds between checks for connections past their deadline
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def is_claim(path: str) -> bool:
    """A route that waits for the engine thread (served by the claims' own pool)."""
    return path == "/claimall" or path.startswith("/claim/")


class AdminServerError(RuntimeError):
    """The admin API cannot listen (port in use, address not available)."""


class _Connection(asyncio.Protocol):
    """One client connection: buffers its request until complete, then hands it to the server."""

    __slots__ = ("buffer", "deadline", "peer", "server", "state", "transport")

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.deadline = 0.0
        self.peer = ""
        self.state = "reading"  # -> "working" -> "writing"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self.server._opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._closed(self)

    def data_received(self, data: bytes) -> None:
        if self.state != "reading":
            return  # one request per connection; anything after it is ignored
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self.reply_error(431)
            return
        if end > MAX_HEADER_BYTES:
            self.reply_error(431)
            return
        try:
            request = _parse_head(bytes(self.buffer[:end]))
        except ValueError:
            self.reply_error(400)
            return
        length_text = request["headers"].get("CONTENT_LENGTH", "0")
        if "HTTP_TRANSFER_ENCODING" in request["headers"]:
            self.reply_error(411)
            return
        try:
            length = int(length_text)
        except ValueError:
            self.reply_error(400)
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self.reply_error(413)
            return
        body = bytes(self.buffer[end + 4 :])
        if len(body) < length:
            return  # the rest of the body is still coming
        self.state = "working"
        self.server._dispatch(self, request, body[:length])

    def reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Writes the answer and closes (the server drops the connection if it is not read in time)."""
        if self.transport is None or self.transport.is_closing():
            return
        self.state = "writing"
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("connection", "content-length")]
        lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
        self.transport.write("\r\n".join(lines).encode("latin-1") + body)
        self.transport.close()

    def reply_error(self, status: int) -> None:
        body = f'{{"error": "{_REASONS.get(status, "error")}", "status": {status}}}'.encode()
        self.reply(status, [("Content-Type", "application/json")], body)


def _parse_head(head: bytes) -> dict[str, Any]:
    """The request line and headers of an HTTP/1.x request, as WSGI environ parts; ValueError if bad."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise ValueError("bad request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise ValueError("bad version")
    path, _, query = target.partition("?")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise ValueError("bad header line")
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return {"method": method.upper(), "path": path, "query": query, "version": version, "headers": headers}


class AdminServer:
    """The admin API on ``host:port`` (port 0: any free port, read back from ``port``)."""

    def __init__(
        self,
        backend: AdminBackend,
        cookie_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 8814,
        metrics: Metrics | None = None,
        *,
        client_timeout: float = 10.0,
        max_connections: int = 16384,
    ) -> None:
        self._backend = backend
        self.cookie_dir = Path(cookie_dir)
        self.host = host
        self._port = port
        self._metrics = metrics
        self.client_timeout = client_timeout
        self.max_connections = max_connections
        self._app: Callable[..., Any] | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._claims_pool: ThreadPoolExecutor | None = None
        self._ready = threading.Event()
        self._connections: dict[_Connection, None] = {}  # every open one, oldest first
        self._queued = 0
        self._claims_queued = 0
        self.evicted = 0  # connections closed to make room (for tests and logs)
        self.refused = 0  # requests answered 503 because their pool was full (for tests and logs)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1]) if self._socket is not None else self._port

    @property
    def cookie_file(self) -> Path:
        return cookie_path(self.cookie_dir)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        if self._socket is not None:
            return
        secret = write_cookie(self.cookie_dir)
        self._app = create_admin_app(self._backend, secret, self._metrics)
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            address = (self.host, self._port)
            self._socket = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
        except OSError as e:
            remove_cookie(self.cookie_dir)
            raise AdminServerError(f"cannot listen on {self.host}:{self._port} for the admin API: {e} "
                                   "(is another teosd running? see --rpcport)") from e
        self._pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="admin")
        self._claims_pool = ThreadPoolExecutor(max_workers=CLAIM_THREADS, thread_name_prefix="admin-claims")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="admin-api", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        log.info("admin API listening host=%s port=%d cookie=%s", self.host, self.port, self.cookie_file)

    def stop(self, timeout: float = 5.0) -> None:
        """Stops accepting, lets the requests in hand finish and answer, then ends the loop."""
        loop = self._loop
        if loop is not None and self._server is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._server.close)
        if self._claims_pool is not None:  # a claim in hand ends with the engine (Engine.call), not here
            self._claims_pool.shutdown(wait=False, cancel_futures=True)
            self._claims_pool = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # their answers are written by the loop, still running
            self._pool = None
        self._loop = None
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        remove_cookie(self.cookie_dir)

    # -- the event loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        assert self._socket is not None
        server = loop.run_until_complete(  # asyncio listens again with its backlog, so it is given ours
            loop.create_server(lambda: _Connection(self), sock=self._socket, backlog=LISTEN_BACKLOG)
        )
        self._server = server
        sweeper = loop.create_task(self._sweep())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            sweeper.cancel()
            server.close()
            for conn in list(self._connections):
                if conn.transport is not None:
                    conn.transport.abort()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _opened(self, conn: _Connection) -> None:
        conn.deadline = time.monotonic() + self.client_timeout
        if len(self._connections) >= self.max_connections:
            oldest = next((c for c in self._connections if c.state == "reading"), None)
            if oldest is None or oldest.transport is None:
                assert conn.transport is not None
                conn.transport.abort()
                return
            self.evicted += 1
            oldest.transport.abort()
            self._connections.pop(oldest, None)
        self._connections[conn] = None

    def _closed(self, conn: _Connection) -> None:
        self._connections.pop(conn, None)

    async def _sweep(self) -> None:
        """Drops connections past their deadline (reading their request, or not reading their answer)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self._connections):
                if conn.deadline > now:
                    if conn.state == "reading":
                        break  # connections are in opening order: the rest are younger
                    continue
                if conn.state != "working" and conn.transport is not None:
                    conn.transport.abort()
                    self._connections.pop(conn, None)

    def _dispatch(self, conn: _Connection, request: dict[str, Any], body: bytes) -> None:
        claim = is_claim(request["path"])
        pool = self._claims_pool if claim else self._pool
        full = (self._claims_queued >= CLAIM_THREADS + MAX_CLAIMS_QUEUED if claim
                else self._queued >= THREADS + MAX_QUEUED)
        if full or pool is None or self._loop is None:
            self.refused += 1
            conn.reply_error(503)
            return
        try:
            future = self._loop.run_in_executor(pool, self._call, self._environ(conn, request, body))
        except RuntimeError:  # the pool is shutting down: teosd is stopping
            conn.reply_error(503)
            return
        if claim:
            self._claims_queued += 1
        else:
            self._queued += 1

        def done(f: asyncio.Future[tuple[int, list[tuple[str, str]], bytes]]) -> None:
            if claim:
                self._claims_queued -= 1
            else:
                self._queued -= 1
            conn.deadline = time.monotonic() + self.client_timeout  # to read the answer
            try:
                status, headers, answer = f.result()
            except Exception:
                log.exception("admin request failed")
                conn.reply_error(503)
                return
            conn.reply(status, headers, answer)

        future.add_done_callback(done)

    def _environ(self, conn: _Connection, request: dict[str, Any], body: bytes) -> dict[str, Any]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request["method"],
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(request["path"], encoding="latin-1"),
            "QUERY_STRING": request["query"],
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": request["version"],
            "REMOTE_ADDR": conn.peer,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        environ.update(request["headers"])
        environ["CONTENT_LENGTH"] = str(len(body))
        return environ

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        assert self._app is not None
        app_iter, status, headers = run_wsgi_app(self._app, environ, buffered=True)
        try:
            body = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        log.debug("admin request method=%s path=%s status=%s", environ["REQUEST_METHOD"],
                  environ["PATH_INFO"], status.split(" ", 1)[0])
        return int(status.split(" ", 1)[0]), list(headers.items()), body
