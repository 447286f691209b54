"""The simulator's HTTP JSON-RPC server, answering the way Bitcoin Core's httprpc.cpp does.

- POST only (else 405); paths ``/`` and ``/wallet/<name>`` (else 404).
- HTTP basic auth against the configured user/password or the cookie; a failure waits 250 ms (Core's
  brute-force deterrent) and answers 401 with ``WWW-Authenticate: Basic realm="jsonrpc"`` and no body.
- JSON-RPC 1.0 (or no ``jsonrpc`` member): ``{"result","error","id"}``; errors carry HTTP 500, except
  -32600 (400) and -32601 (404). JSON-RPC 2.0: always HTTP 200, only ``result`` or ``error``; a
  notification (no ``id``) gets 204. Batches (arrays) answer 200 with an array.
- Bodies above 32 MB get 413. Malformed input of any kind gets an error answer, never a dead thread:
  every handler runs under a catch-all that answers -32603 and logs the traceback.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from teos.regtest import errors as E
from teos.regtest.errors import RpcError
from teos.regtest.faults import FaultQueue, FaultReply, render_taken

logger = logging.getLogger(__name__)

MAX_BODY = 0x02000000
AUTH_FAILURE_DELAY = 0.25


class Faults:
    """Fault knobs the HTTP layer applies before dispatching (shared with the simulator)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.warmup_until: float | None = None  # monotonic deadline; inf = until cleared
        self.warmup_message = "Loading block index…"
        self.hang_until = 0.0
        self.refuse_until = 0.0
        self.latency = 0.0
        self.fail_rules: dict[str, list[Any]] = {}  # method -> [code, message, remaining]
        self.garble = FaultQueue()  # malformed answers (teos.regtest.faults), per method
        self.stopping = threading.Event()

    def warming_up(self) -> bool:
        with self.lock:
            if self.warmup_until is None:
                return False
            if time.monotonic() >= self.warmup_until:
                self.warmup_until = None
                return False
            return True

    def take_failure(self, method: str) -> RpcError | None:
        with self.lock:
            rule = self.fail_rules.get(method)
            if not rule:
                return None
            rule[2] -= 1
            if rule[2] <= 0:
                del self.fail_rules[method]
            return RpcError(int(rule[0]), str(rule[1]))

    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until


Dispatch = Callable[[str, Any], Any]


def _legacy_status(code: int) -> int:
    if code == E.RPC_INVALID_REQUEST:
        return 400
    if code == E.RPC_METHOD_NOT_FOUND:
        return 404
    return 500


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm on, a keep-alive client then
    # waits for the delayed ACK (~40 ms) on every call. bitcoind's libevent server does not stall so.
    disable_nagle_algorithm = True
    server_version = "teos-regtest"
    timeout = 60  # idle keep-alive connections are closed after a minute

    server: RpcHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s", format % args)

    # -- plumbing ---------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", "application/json")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_fault(self, reply: FaultReply) -> None:
        """A malformed answer from ``sim_garble``: held, cut or replaced as ``reply`` says."""
        reply.write(self, self.server.faults.stopping)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, (json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n").encode())

    def do_GET(self) -> None:
        self._guarded(self._not_post)

    do_PUT = do_GET
    do_DELETE = do_GET
    do_HEAD = do_GET

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            if self.server.faults.refusing():
                self.close_connection = True
                return
            action()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
        except Exception:
            logger.exception("unexpected error while answering an RPC request")
            self.close_connection = True
            try:
                self._send_json(
                    500,
                    {
                        "result": None,
                        "error": {"code": E.RPC_INTERNAL_ERROR, "message": "Internal error"},
                        "id": None,
                    },
                )
            except OSError:
                pass

    def _not_post(self) -> None:
        self._drain()
        self._send(405, b"JSONRPC server handles only POST requests")

    def _drain(self) -> bytes | None:
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length < 0 or length > MAX_BODY:
            return None
        return self.rfile.read(length)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        ok = False
        if header.startswith("Basic "):
            try:
                creds = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                creds = ""
            ok = any(hmac.compare_digest(creds, allowed) for allowed in self.server.credentials())
        if not ok:
            time.sleep(AUTH_FAILURE_DELAY)
            self.close_connection = True
            self._send(401, b"", {"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        return ok

    # -- JSON-RPC ---------------------------------------------------------------------------------------
    def _post(self) -> None:
        faults = self.server.faults
        while time.monotonic() < faults.hang_until and not faults.stopping.is_set():
            time.sleep(0.02)
        if faults.latency > 0:
            time.sleep(faults.latency)
        body = self._drain()
        if body is None:
            self.close_connection = True
            self._send(413, b"")
            return
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path != "/" and not path.startswith("/wallet/"):
            self._send(404, b"")
            return
        try:
            request = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._send_json(
                500,
                {"result": None, "error": {"code": E.RPC_PARSE_ERROR, "message": "Parse error"}, "id": None},
            )
            return
        if isinstance(request, dict):
            name = request.get("method")
            method = name if isinstance(name, str) and not name.startswith("sim_") else ""
            taken = faults.garble.take_before(method) if method else None
            if taken is not None:
                self._send_fault(render_taken(taken, method))
                return
            reply, status = self._exec_one(request)
            taken = faults.garble.take_after(method, reply) if method and reply is not None else None
            if taken is not None:
                self._send_fault(render_taken(taken, method, reply))
            elif reply is None:
                self._send(204, b"")
            else:
                self._send_json(status, reply)
        elif isinstance(request, list):
            replies = [r for r, _ in (self._exec_one(item) for item in request) if r is not None]
            self._send_json(200, replies)
        else:
            self._send_json(
                500,
                {
                    "result": None,
                    "error": {"code": E.RPC_PARSE_ERROR, "message": "Top-level object parse error"},
                    "id": None,
                },
            )

    def _exec_one(self, request: Any) -> tuple[dict[str, Any] | None, int]:
        """One request object -> (reply or None for a 2.0 notification, HTTP status if sent alone)."""
        if not isinstance(request, dict):
            return self._error_reply(None, False, E.RPC_INVALID_REQUEST, "Invalid Request object")
        v2 = request.get("jsonrpc") == "2.0"
        req_id = request.get("id")
        notification = v2 and "id" not in request
        method = request.get("method")
        params = request.get("params", [])
        try:
            if "method" not in request:
                raise RpcError(E.RPC_INVALID_REQUEST, "Missing method")
            if not isinstance(method, str):
                raise RpcError(E.RPC_INVALID_REQUEST, "Method must be a string")
            if params is None:
                params = []
            if not isinstance(params, (list, dict)):
                raise RpcError(E.RPC_INVALID_REQUEST, "Params must be an array or object")
            faults = self.server.faults
            if not method.startswith("sim_"):
                if faults.warming_up():
                    raise RpcError(E.RPC_IN_WARMUP, faults.warmup_message)
                failure = faults.take_failure(method)
                if failure is not None:
                    raise failure
            result = self.server.dispatch(method, params)
        except RpcError as e:
            if notification:
                return None, 204
            return self._error_reply(req_id, v2, e.code, e.message)
        except Exception:
            logger.exception("RPC method failed method=%s", method)
            if notification:
                return None, 204
            return self._error_reply(req_id, v2, E.RPC_INTERNAL_ERROR, "Internal error")
        if notification:
            return None, 204
        if v2:
            return {"jsonrpc": "2.0", "result": result, "id": req_id}, 200
        return {"result": result, "error": None, "id": req_id}, 200

    @staticmethod
    def _error_reply(req_id: Any, v2: bool, code: int, message: str) -> tuple[dict[str, Any], int]:
        error = {"code": code, "message": message}
        if v2:
            return {"jsonrpc": "2.0", "error": error, "id": req_id}, 200
        return {"result": None, "error": error, "id": req_id}, _legacy_status(code)


class RpcHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self, port: int, dispatch: Dispatch, credentials: Callable[[], list[str]], faults: Faults
    ) -> None:
        self.dispatch = dispatch
        self.credentials = credentials
        self.faults = faults
        super().__init__(("127.0.0.1", port), _Handler)


class RpcServer:
    """Owns the listening socket and its serving thread; can close and reopen it on the same port."""

    def __init__(
        self, port: int, dispatch: Dispatch, credentials: Callable[[], list[str]], faults: Faults
    ) -> None:
        self.port = port
        self._dispatch = dispatch
        self._credentials = credentials
        self._faults = faults
        self._httpd: RpcHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._httpd is not None:
                return
            httpd = RpcHTTPServer(self.port, self._dispatch, self._credentials, self._faults)
            self.port = int(httpd.server_address[1])
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="regtest-rpc", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
