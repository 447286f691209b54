"""A JSON-RPC proxy for tests that forwards to any bitcoind and breaks the answers to chosen methods.

It sits between the tower and a bitcoind (the simulator or real Bitcoin Core) on a free 127.0.0.1 port,
forwards every request and passes every answer back unchanged, except for the faults a test queued:
``proxy.inject("getblock", "html_500", count=3)`` makes the next three ``getblock`` calls answer an HTML
error page, after which the calls are forwarded normally again. The faults are rendered by
``teos.regtest.faults`` (the same module behind the simulator's fault knob), so the kinds are those listed
there: wrong types, missing fields, out-of-range values, cut bodies, an HTML 500, Core's text/plain 503
"Work queue depth exceeded", a hang.

Faults queued for one method are delivered in the order queued. Kinds that rewrite bitcoind's answer
forward the request first (so a garbled ``sendrawtransaction`` did reach bitcoind, as when a proxy breaks
the answer on its way back) and only break successful answers; the others (error pages, hang) answer in
bitcoind's place and never forward (bitcoind never saw the request).

Usage::

    with RpcProxy(node.rpc_host, node.rpc_port) as proxy:
        tower = start_tower(proxy.front(node))   # rpc_host/rpc_port of the proxy, the rest of the node
        proxy.inject("sendrawtransaction", "wrong_type", count=3)
        wait_until(lambda: proxy.pending() == 0)
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from teos.regtest import faults
from teos.regtest.faults import FaultReply

log = logging.getLogger(__name__)

FORWARDED_HEADERS = ("Authorization", "Content-Type")


@dataclass(frozen=True)
class Proxied:
    """A bitcoind as seen through the proxy: the proxy's RPC address, the node's credentials and ZMQ
    endpoint (ZMQ is not proxied). Has the attributes the tests' teosd and engine helpers read."""

    kind: str
    rpc_host: str
    rpc_port: int
    rpc_user: str
    rpc_password: str
    zmq_url: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, proxy: RpcProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 120
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("rpcproxy %s", format % args)

    def do_POST(self) -> None:
        proxy = self.server.proxy
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        method = _method_of(body)
        if method is not None:
            proxy._count(method)
            taken = proxy.faults.take_before(method)
            if taken is not None:
                proxy._log(method, taken)
                self._write(faults.render_taken(taken, method))
                return
        try:
            status, content_type, data = proxy._forward(self.path, body, self.headers)
        except (OSError, http.client.HTTPException) as e:
            log.debug("rpcproxy upstream failed method=%s error=%r", method, e)
            self.close_connection = True
            return
        if method is not None:
            reply = _parse(data)
            taken = proxy.faults.take_after(method, reply)
            if taken is not None:
                proxy._log(method, taken)
                self._write(faults.render_taken(taken, method, reply))
                return
        self._reply(status, content_type, data)

    def _reply(self, status: int, content_type: str | None, data: bytes) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _write(self, reply: FaultReply) -> None:
        reply.write(self, self.server.proxy._stopping)


def _method_of(body: bytes) -> str | None:
    """The method of a single JSON-RPC request (None for batches and anything unreadable)."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    method = request.get("method") if isinstance(request, dict) else None
    return method if isinstance(method, str) else None


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class RpcProxy:
    """The proxy (see the module docstring). ``start``/``stop``, or use it as a context manager."""

    def __init__(self, upstream_host: str, upstream_port: int, timeout: float = 60.0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.timeout = timeout
        self.faults = faults.FaultQueue()
        self._calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> RpcProxy:
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="rpcproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> RpcProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return int(self._server.server_address[1])

    def front(self, node: Any) -> Proxied:
        """``node`` (a BitcoindHandle) as reached through this proxy."""
        return Proxied(node.kind, "127.0.0.1", self.port, node.rpc_user, node.rpc_password, node.zmq_url)

    # -- faults ------------------------------------------------------------------------------------

    def inject(
        self, method: str, kind: str, count: int = 1, seconds: float = faults.DEFAULT_HANG_SECONDS
    ) -> None:
        """Queues ``count`` faults of ``kind`` for ``method`` (after those already queued for it)."""
        self.faults.add(method, kind, count, seconds)

    def clear(self, method: str | None = None) -> None:
        """Drops the faults still queued (for ``method``, or for every method)."""
        self.faults.clear(method)

    def pending(self, method: str | None = None) -> int:
        """Faults queued and not delivered yet."""
        return self.faults.pending(method)

    def delivered(self, method: str | None = None, kind: str | None = None) -> int:
        """Faults delivered so far (for ``method`` and ``kind`` when given)."""
        return self.faults.delivered(method, kind)

    def calls(self, method: str) -> int:
        """Requests for ``method`` seen so far, broken or forwarded."""
        with self._lock:
            return self._calls[method]

    def _count(self, method: str) -> None:
        with self._lock:
            self._calls[method] += 1

    @staticmethod
    def _log(method: str, taken: faults.Taken) -> None:
        log.info("rpcproxy fault delivered method=%s kind=%s n=%d", method, taken.kind, taken.n)

    # -- forwarding --------------------------------------------------------------------------------

    def _forward(self, path: str, body: bytes, headers: Any) -> tuple[int, str | None, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.timeout)
        try:
            sent = {name: headers[name] for name in FORWARDED_HEADERS if headers.get(name) is not None}
            conn.request("POST", path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type"), response.read()
        finally:
            conn.close()
