"""The tower's HTTP API: ``create_app`` builds the Flask app around a ``TowerService``."""

from __future__ import annotations

import logging

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from common.channel_wire import PaymentError
from common.errors import ErrorKind, TeosError
from common.types import Dialect
from teos.api.errors import error_response, http_error_response
from teos.api.limits import ADMISSION_KEY, Admission
from teos.api.payments import GATEWAY_KEY, REFUSALS_KEY, RefusalCounter, count_refusal
from teos.api.payments import bp as payments_bp
from teos.api.public import SERVICE_KEY, bp, request_dialect
from teos.payments.service import PaymentGateway
from teos.service import TowerService

log = logging.getLogger(__name__)

# No request of either dialect comes near this; python-teos's largest (an add_appointment with a blob at
# the service's cap) is about 2 x 16 KiB of hex.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


def create_app(
    service: TowerService,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    admission: Admission | None = None,
    payments: PaymentGateway | None = None,
    refusals: RefusalCounter | None = None,
) -> Flask:
    """The public API app. Every answer is JSON (or ``/ping``'s empty 200) and none is a 500.

    Errors are turned into answers in one place: ``TeosError`` through the per-dialect table of
    ``teos.api.errors``; HTTP-level refusals (404, 405, 413, ...) as JSON; anything unexpected is logged
    with its traceback and answered 503 UNEXPECTED (the client may retry; no stack trace leaks).

    ``admission`` (optional: the per-address limits of ``teos.api.limits``) is asked before each
    registration or top-up and, on a paid tower, each channel opening. With ``payments`` the tower is
    paid: the payment endpoints (``teos.api.payments``) are served, ``/register`` answers 402 with the
    terms, and ``refusals`` counts the payment refusals by reason.
    """
    app = Flask("teos.api")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.json.sort_keys = True  # type: ignore[attr-defined]
    app.extensions[SERVICE_KEY] = service
    app.extensions[ADMISSION_KEY] = admission
    app.register_blueprint(bp)
    if payments is not None:
        app.extensions[GATEWAY_KEY] = payments
        app.extensions[REFUSALS_KEY] = refusals
        app.register_blueprint(payments_bp)

    @app.errorhandler(TeosError)
    def _teos_error(error: TeosError) -> tuple[Response, int]:
        if isinstance(error, PaymentError):
            count_refusal(error.reason.text)
        return error_response(error, request_dialect(), _prefix())

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 400
        if status >= 500:
            return _unexpected(error)
        return http_error_response(status, error.name, request_dialect())

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        log.exception("unexpected error answering a request: %r", error)
        return error_response(TeosError(ErrorKind.UNEXPECTED, "Unexpected error"), request_dialect())

    return app


def _prefix() -> str:
    prefix = g.get("error_prefix", "")
    return prefix if isinstance(prefix, str) and request_dialect() is Dialect.PYTHON else ""


__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]
