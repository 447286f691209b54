"""The admin HTTP API that ``teos-cli`` talks to, bound to localhost by the daemon (``rpcbind:rpcport``).

Routes (JSON in and out; every admin route needs HTTP basic auth ``__cookie__:<secret>`` from the cookie
file, see ``common.cookie``; anything else is answered 401 with a JSON body):

    GET  /gettowerinfo                                     tower id, counts, heights, readiness
    GET  /getallappointments?section=watcher|responder&cursor=<hex>&limit=<n>   one page
    GET  /getappointments/<locator>                        every user's appointment for a locator
    GET  /getusers?cursor=<hex>&limit=<n>                  one page of users
    GET  /getuser/<user_id>                                a user and their appointments (404 if unknown)
    POST /stop                                             asks the daemon to stop
    GET  /listchannels                                     a paid tower's channels and totals (404: free)
    POST /claim/<txid>:<vout>                              claims one channel now (on the engine thread)
    POST /claimall                                         claims every open channel with a payment

Two routes need no cookie: ``GET /ready`` (200 ``{"ready": true}`` or 503 with the reason) and ``GET
/metrics`` (Prometheus text format). They reveal only aggregate numbers, and probes and scrapers cannot
follow a secret that changes at every start; the app is bound to localhost, so exposing them further is an
explicit choice of the operator (a reverse proxy).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from common.channel import ChannelError, ChannelId
from common.cookie import COOKIE_USER
from common.errors import RequestError
from common.types import UserId
from common.validation import parse_locator
from teos.admin.backend import (
    DEFAULT_PAGE_LIMIT,
    SECTION_WATCHER,
    AdminBackend,
    AdminError,
    JsonObject,
    PaymentsAdmin,
)
from teos.metrics import Metrics, instrument, metrics_response

log = logging.getLogger(__name__)

BACKEND_KEY = "teos.admin.backend"
PUBLIC_ROUTES = frozenset({"/ready", "/metrics"})


def _backend() -> AdminBackend:
    backend: AdminBackend = current_app.extensions[BACKEND_KEY]
    return backend


def _error(message: str, status: int) -> tuple[Response, int]:
    return jsonify({"error": message, "status": status}), status


def _page_args() -> tuple[str | None, int]:
    cursor = request.args.get("cursor") or None
    limit_text = request.args.get("limit", str(DEFAULT_PAGE_LIMIT))
    try:
        limit = int(limit_text)
    except ValueError:
        raise AdminError("limit must be an integer") from None
    return cursor, limit


def _on_engine(fn: Callable[[], JsonObject]) -> JsonObject:
    """A claim waits for the engine thread; one that does not get to it in time is a 503 (try again)."""
    try:
        return fn()
    except TimeoutError as e:
        raise AdminError(f"{e}; try again", 503) from None


def create_admin_app(backend: AdminBackend, cookie: str, metrics: Metrics | None = None) -> Flask:
    """The admin app. ``cookie`` is the secret ``write_cookie`` returned; ``metrics`` (optional) gets its
    state gauges from ``backend.tower_info`` and is served on ``/metrics``; the admin routes are
    instrumented too (``app="admin"``)."""
    if not cookie:
        raise ValueError("the admin API needs a cookie secret")
    app = Flask("teos.admin")
    app.config["MAX_CONTENT_LENGTH"] = 4096
    app.json.sort_keys = True  # type: ignore[attr-defined]
    app.extensions[BACKEND_KEY] = backend
    expected = cookie.encode("ascii")

    if metrics is not None:
        instrument(app, metrics, name="admin")

    @app.before_request
    def _authenticate() -> tuple[Response, int] | None:
        if request.path in PUBLIC_ROUTES:
            return None
        auth = request.authorization
        if (
            auth is None
            or auth.type != "basic"
            or auth.username != COOKIE_USER
            or not hmac.compare_digest((auth.password or "").encode("utf-8", "replace"), expected)
        ):
            response, status = _error("authentication required: send the cookie from the datadir", 401)
            response.headers["WWW-Authenticate"] = 'Basic realm="teos-admin"'
            return response, status
        return None

    @app.errorhandler(AdminError)
    def _admin_error(error: AdminError) -> tuple[Response, int]:
        return _error(error.message, error.status)

    @app.errorhandler(RequestError)
    def _request_error(error: RequestError) -> tuple[Response, int]:
        return _error(error.message, 400)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        return _error(error.description or error.name, error.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("admin: unexpected error: %r", error)
        return _error(f"internal error: {type(error).__name__}", 500)

    @app.get("/gettowerinfo")
    def gettowerinfo() -> Response:
        return jsonify(_backend().tower_info())

    @app.get("/getallappointments")
    def getallappointments() -> Response:
        cursor, limit = _page_args()
        section = request.args.get("section", SECTION_WATCHER)
        return jsonify(_backend().appointments(section, cursor, limit).to_json())

    @app.get("/getappointments/<locator>")
    def getappointments(locator: str) -> Response:
        return jsonify(_backend().appointments_by_locator(parse_locator(locator)))

    @app.get("/getusers")
    def getusers() -> Response:
        cursor, limit = _page_args()
        return jsonify(_backend().users(cursor, limit).to_json())

    @app.get("/getuser/<user_id>")
    def getuser(user_id: str) -> Response | tuple[Response, int]:
        try:
            uid = UserId.from_hex(user_id)
        except ValueError:
            raise AdminError("user_id must be 66 hex characters (a compressed public key)") from None
        info = _backend().user(uid)
        if info is None:
            return _error(f"user {uid.hex()} not found", 404)
        return jsonify(info)

    @app.post("/stop")
    def stop() -> Response:
        # Asked only once the answer is sent, so teos-cli never sees the daemon vanish mid-reply.
        response = jsonify({"stopping": True})
        response.call_on_close(_backend().stop)
        return response

    def _payments() -> PaymentsAdmin:
        payments = _backend().payments()
        if payments is None:
            raise AdminError("this tower is free (paymentprice = 0): it has no payment channels", 404)
        return payments

    @app.get("/listchannels")
    def listchannels() -> Response:
        return jsonify(_payments().channels())

    @app.post("/claim/<channel_id>")
    def claim(channel_id: str) -> Response:
        try:
            cid = ChannelId.parse(channel_id)
        except ChannelError as e:
            raise AdminError(str(e)) from None
        return jsonify(_on_engine(lambda: _payments().claim(cid)))

    @app.post("/claimall")
    def claimall() -> Response:
        return jsonify(_on_engine(lambda: _payments().claim_all()))

    @app.get("/ready")
    def ready() -> tuple[Response, int]:
        is_ready, reason = _backend().ready()
        return jsonify({"ready": is_ready, "reason": reason or None}), 200 if is_ready else 503

    @app.get("/metrics")
    def metrics_route() -> Response | tuple[Response, int]:
        if metrics is None:
            return _error("metrics are not enabled", 404)
        return metrics_response(metrics)

    if metrics is not None:
        metrics.bind_status(backend.tower_info)
    return app
