"""The one table from errors to HTTP answers, per client dialect.

Domain errors (``TeosError``) carry a kind and a message and no HTTP; this module decides the status each
dialect expects, and ``common.errors`` the ``error_code``. Statuses follow what each family's clients see
from their own tower: python-teos answers every refusal with 400 (a missing appointment is a 404 with its
own body, built by the endpoint), rust-teos answers an authentication failure with 401 and a missing
appointment with 404. Both get 503 for what is the tower's problem rather than the request's: bitcoind
unreachable, the tower's storage cap reached, an unexpected failure (the client may retry later; no answer
is ever a 500). HTTP-level refusals (unknown path, wrong method, oversize body) answer JSON with the
dialect's INVALID_REQUEST_FORMAT code.
"""

from __future__ import annotations

from flask import Response, jsonify

from common.channel_wire import PaymentError
from common.errors import ErrorKind, TeosError, error_code
from common.types import Dialect

# Paid subscriptions (docs/PAYMENTS.md §10) exist in neither family's tower: the same statuses in both.
PAYMENT_STATUS: dict[ErrorKind, int] = {
    ErrorKind.PAYMENT_REQUIRED: 402,
    ErrorKind.CHANNEL_NOT_FOUND: 404,
    ErrorKind.CHANNEL_UNAVAILABLE: 409,
    ErrorKind.PAYMENT_CONFLICT: 409,
}

HTTP_STATUS: dict[Dialect, dict[ErrorKind, int]] = {
    Dialect.PYTHON: {
        ErrorKind.APPOINTMENT_NOT_FOUND: 404,
        ErrorKind.SERVICE_UNAVAILABLE: 503,
        ErrorKind.RESOURCE_EXHAUSTED: 503,
        ErrorKind.UNEXPECTED: 503,
        **PAYMENT_STATUS,
    },
    Dialect.RUST: {
        ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION: 401,
        ErrorKind.APPOINTMENT_NOT_FOUND: 404,
        ErrorKind.SERVICE_UNAVAILABLE: 503,
        ErrorKind.RESOURCE_EXHAUSTED: 503,
        ErrorKind.UNEXPECTED: 503,
        **PAYMENT_STATUS,
    },
}
DEFAULT_STATUS = 400  # every other kind is a refusal of the request itself


def http_status(kind: ErrorKind, dialect: Dialect) -> int:
    return HTTP_STATUS[dialect].get(kind, DEFAULT_STATUS)


def error_body(kind: ErrorKind, message: str, dialect: Dialect) -> dict[str, object]:
    return {"error": message, "error_code": error_code(kind, dialect)}


def error_response(error: TeosError, dialect: Dialect, prefix: str = "") -> tuple[Response, int]:
    """``{"error", "error_code"}`` with the status of ``error``'s kind in ``dialect``.

    ``prefix`` is put before messages that lack it (python-teos starts add_appointment refusals with
    "appointment rejected. ").
    """
    message = error.message if error.message.startswith(prefix) else prefix + error.message
    body = error_body(error.kind, message, dialect)
    if isinstance(error, PaymentError):
        body["reason"] = error.reason.text  # which payment check refused it (docs/PAYMENTS.md §10)
    return jsonify(body), http_status(error.kind, dialect)


def http_error_response(status: int, message: str, dialect: Dialect) -> tuple[Response, int]:
    """An HTTP-level refusal (404, 405, 413, ...) as JSON."""
    return jsonify(error_body(ErrorKind.INVALID_REQUEST_FORMAT, message, dialect)), status
