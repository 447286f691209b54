"""Operating the tower: the admin API (``teos-cli``'s server side), its cookie, metrics and readiness.

Wiring, in the composition root (``teos/daemon.py``, after the store, the chain side and the tower id
exist)::

    metrics = Metrics()                                       # teos.metrics
    backend = StoreAdminBackend(store, progress.status, tower_id,
                                stop_callback=lambda: os.kill(os.getpid(), signal.SIGTERM))
    admin = AdminServer(backend, config.network_dir, host=config.rpc_bind, port=config.rpc_port,
                        metrics=metrics)
    admin.start()    # writes <network_dir>/.cookie (0600) and listens; AdminServerError if it cannot
    ...
    admin.stop()     # first thing at shutdown: stops listening and deletes the cookie

The engine calls ``metrics.breach_seen()``, ``metrics.penalty_broadcast()`` and
``metrics.penalty_confirmed()``, progress ``metrics.block_processed()``; the state gauges need no calls.
"""

from common.cookie import COOKIE_USER, CookieError, read_cookie, remove_cookie, write_cookie
from teos.admin.app import create_admin_app
from teos.admin.backend import AdminBackend, AdminError, Page, StoreAdminBackend
from teos.admin.server import AdminServer, AdminServerError
from teos.metrics import Metrics, instrument

__all__ = [
    "COOKIE_USER",
    "AdminBackend",
    "AdminError",
    "AdminServer",
    "AdminServerError",
    "CookieError",
    "Metrics",
    "Page",
    "StoreAdminBackend",
    "create_admin_app",
    "instrument",
    "read_cookie",
    "remove_cookie",
    "write_cookie",
]
