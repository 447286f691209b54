"""Serving the admin app on its own port, in a thread of the daemon, with the cookie's lifetime tied to it.

``start()`` writes a fresh cookie to the cookie directory, builds the app and starts listening (a failure
to bind raises ``AdminServerError`` and leaves no cookie behind); ``stop()`` stops accepting, waits for the
request in hand and deletes the cookie. The admin API sees a few requests from an operator, so Werkzeug's
threaded server is enough here and, unlike waitress's loop, can be shut down cleanly from another thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from common.cookie import cookie_path, remove_cookie, write_cookie
from teos.admin.app import create_admin_app
from teos.admin.backend import AdminBackend
from teos.metrics import Metrics

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    """Logs each admin request at debug level, in the daemon's ``event key=value`` style."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("admin request method=%s path=%s status=%s", self.command, self.path.split("?")[0], code)


class AdminServerError(RuntimeError):
    """The admin API cannot listen (port in use, address not available)."""


class AdminServer:
    """The admin API on ``host:port`` (port 0: any free port, read back from ``port``)."""

    def __init__(
        self,
        backend: AdminBackend,
        cookie_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 8814,
        metrics: Metrics | None = None,
    ) -> None:
        self._backend = backend
        self.cookie_dir = Path(cookie_dir)
        self.host = host
        self._port = port
        self._metrics = metrics
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else self._port

    @property
    def cookie_file(self) -> Path:
        return cookie_path(self.cookie_dir)

    def start(self) -> None:
        if self._server is not None:
            return
        secret = write_cookie(self.cookie_dir)
        app = create_admin_app(self._backend, secret, self._metrics)
        try:
            server = make_server(self.host, self._port, app, threaded=True, request_handler=_QuietHandler)
        except (OSError, SystemExit) as e:  # werkzeug exits when the port is taken
            remove_cookie(self.cookie_dir)
            raise AdminServerError(f"cannot listen on {self.host}:{self._port} for the admin API: {e} "
                                   "(is another teosd running? see --rpcport)") from e
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="admin-api", daemon=True)
        self._thread.start()
        log.info("admin API listening host=%s port=%d cookie=%s", self.host, self.port, self.cookie_file)

    def stop(self, timeout: float = 5.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if self._thread is not None:
                self._thread.join(timeout)
        remove_cookie(self.cookie_dir)
