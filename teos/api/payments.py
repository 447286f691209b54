"""The public API of a paid tower (docs/PAYMENTS.md): ``GET /payment_terms``, ``POST /open_channel``,
``POST /pay`` and ``POST /get_channel``. Registered only when the price is above 0: a free tower answers
404 to these paths, as to any unknown one.

Each endpoint parses its body with ``common.channel_wire`` and hands the typed request to the
``PaymentGateway`` (``teos.payments.service``): the signature checks run here, in the API worker; the
compare-and-swap, the grant and the ``gettxout`` in the main process. Refusals go through the app's one
error table (``teos.api.errors``), with the payment check that failed as ``reason``.

Dialect of an answer: ``/pay`` names its user with ``public_key`` (python-teos) or ``user_id``
(rust-teos), as ``/register`` does; the other endpoints do not identify their caller, whose dialect is
guessed from the ``User-Agent`` (``teos.api.public.guess_dialect``).

Bounds: every body is limited (``BODY_LIMITS``, answered 413: by ``teos.api.serving``'s guard on its
declared length before it is read, and here again), and ``/open_channel``, which costs bitcoind a
``gettxout`` before anything is known of its caller, is limited per address (``teos.api.limits``, in
teosd's main process; off with ``--behindproxy``).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from flask import Blueprint, Response, current_app, g, jsonify, request

from common.channel_wire import (
    parse_get_channel_request,
    parse_open_request,
    parse_pay_request,
)
from common.errors import ErrorKind, RequestError
from common.types import Dialect
from teos.api.limits import admission
from teos.payments.service import PaymentGateway

bp = Blueprint("payments", __name__)

GATEWAY_KEY = "teos.payments.gateway"
REFUSALS_KEY = "teos.payments.refusals"

# Whole-body limits by path, in bytes: a few times what a well-formed request needs (an open ~560 B, a
# payment ~1 KB with its 400-byte transaction in hex, a get_channel ~200 B).
BODY_LIMITS = {
    "/open_channel": 2048,
    "/pay": 4096,
    "/get_channel": 1024,
}


class RefusalCounter(Protocol):
    """Where refusals are counted by reason (``teos.metrics.Metrics``, or a worker's forwarder)."""

    def payment_refused(self, reason: str) -> None: ...


def gateway() -> PaymentGateway | None:
    """The paid tower's gateway, or None on a free tower."""
    found: PaymentGateway | None = current_app.extensions.get(GATEWAY_KEY)
    return found


def count_refusal(reason: str) -> None:
    counter: RefusalCounter | None = current_app.extensions.get(REFUSALS_KEY)
    if counter is not None:
        counter.payment_refused(reason)


def _gateway() -> PaymentGateway:
    found = gateway()
    if found is None:  # pragma: no cover - the blueprint is registered only with a gateway
        raise RuntimeError("payment endpoints without a payment gateway")
    return found


def _read_body() -> Any:
    limit = BODY_LIMITS.get(request.path)
    if limit is not None and (request.max_content_length is None or limit < request.max_content_length):
        request.max_content_length = limit
    try:
        return json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        raise RequestError(ErrorKind.INVALID_REQUEST_FORMAT, "Request is not json encoded") from None


@bp.get("/payment_terms")
def payment_terms() -> Response:
    return jsonify(_gateway().terms_body())


@bp.post("/open_channel")
def open_channel() -> Response:
    limits = admission()
    if limits is not None:
        limits.admit_channel_opening(request.remote_addr or "")
    return jsonify(_gateway().open_channel(parse_open_request(_read_body())))


@bp.post("/pay")
def pay() -> Response:
    body = _read_body()
    if isinstance(body, dict) and ("public_key" in body) != ("user_id" in body):
        g.dialect = Dialect.PYTHON if "public_key" in body else Dialect.RUST
    return jsonify(_gateway().pay(parse_pay_request(body)))


@bp.post("/get_channel")
def get_channel() -> Response:
    return jsonify(_gateway().get_channel(parse_get_channel_request(_read_body())))
