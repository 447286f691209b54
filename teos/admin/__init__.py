"""Operating the tower: the admin API (``teos-cli``'s server side), its cookie, metrics and readiness."""

from teos.admin.app import create_admin_app
from teos.admin.backend import AdminBackend, AdminError, Page, StoreAdminBackend
from teos.admin.cookie import COOKIE_USER, CookieError, read_cookie, remove_cookie, write_cookie
from teos.admin.metrics import Metrics, instrument
from teos.admin.server import AdminServer, AdminServerError

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
