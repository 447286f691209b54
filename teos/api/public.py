"""The public HTTP API: ``/register``, ``/add_appointment``, ``/get_appointment``, ``/get_subscription_info``
and ``/ping``, answering each client family (python-teos, rust-teos) in its own dialect.

Which dialect a request gets:

- a registered user (recovered from the request's signature) gets the dialect it registered with;
- ``/register`` takes it from the field it was sent: ``public_key`` (python-teos) or ``user_id`` (rust-teos);
- otherwise (no signature that recovers a registered user, or a body that cannot be read) the
  ``User-Agent`` decides: none at all, or one naming ``reqwest`` or ``rust``, is the rust-teos plugin
  (its plugin posts with a default ``reqwest::Client``, which sends none); anything else, python-requests
  included, is python-teos. Such a caller gets its refusal in that dialect.

rust-teos's per-endpoint body limits apply to requests the User-Agent marks as rust-teos (answered 413);
every request is bounded by the app's global ``MAX_CONTENT_LENGTH``.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.wsgi import ClosingIterator

from common.errors import ErrorKind, RequestError, TeosError
from common.messages import GET_SUBSCRIPTION_INFO_MESSAGE, get_appointment_message
from common.types import Dialect, Locator, UserId
from common.validation import parse_appointment, parse_locator, parse_signature, parse_user_id
from teos.api.limits import admission
from teos.api.payments import count_refusal
from teos.api.payments import gateway as payment_gateway
from teos.service import AppointmentState, TowerService
from teos.storage.codec import UserRecord

bp = Blueprint("public", __name__)

SERVICE_KEY = "teos.service"
PYTHON_ADD_PREFIX = "appointment rejected. "

# rust-teos's whole-body limits, in bytes.
RUST_BODY_LIMITS = {
    "public.register": 87,
    "public.add_appointment": 2048,
    "public.get_appointment": 178,
    "public.get_subscription_info": 127,
}

NOT_ENOUGH_SLOTS = "Invalid signature or user does not have enough slots available"
USER_NOT_FOUND = "User not found. Have you registered?"
CANNOT_AUTHENTICATE = "User cannot be authenticated"

JsonObject = dict[str, Any]


def _service() -> TowerService:
    service: TowerService = current_app.extensions[SERVICE_KEY]
    return service


def guess_dialect(user_agent: str | None) -> Dialect:
    """The dialect of a caller the tower cannot identify (see the module docstring)."""
    if not user_agent:
        return Dialect.RUST
    ua = user_agent.lower()
    return Dialect.RUST if ("reqwest" in ua or "rust" in ua) else Dialect.PYTHON


def request_dialect() -> Dialect:
    """The dialect this request is answered in so far (refined once the caller is known)."""
    dialect = g.get("dialect")
    if isinstance(dialect, Dialect):
        return dialect
    return guess_dialect(request.headers.get("User-Agent"))


def _read_json_object() -> JsonObject:
    """The request body as a JSON object, or a RequestError (INVALID_REQUEST_FORMAT).

    python-teos clients must send ``Content-Type: application/json`` as python-teos required; rust-teos
    parsed any body. Oversize bodies end in a 413 from werkzeug.
    """
    dialect = request_dialect()
    if dialect is Dialect.RUST and request.endpoint in RUST_BODY_LIMITS:
        limit = RUST_BODY_LIMITS[request.endpoint]
        if request.max_content_length is None or limit < request.max_content_length:
            request.max_content_length = limit
    if dialect is Dialect.PYTHON and not request.is_json:
        raise RequestError(ErrorKind.INVALID_REQUEST_FORMAT, "Request is not json encoded")
    data = request.get_data(cache=True)
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise RequestError(
            ErrorKind.INVALID_REQUEST_FORMAT,
            "Request is not json encoded" if dialect is Dialect.RUST else "Invalid request content",
        ) from None
    if not isinstance(body, dict):
        raise RequestError(ErrorKind.INVALID_REQUEST_FORMAT, "Invalid request content")
    return body


def _rust_require(body: JsonObject, field: str, *, nonempty: bool = True) -> None:
    """rust-teos's own checks before a field is parsed: missing -> MISSING_FIELD, "" -> EMPTY_FIELD."""
    if field not in body:
        raise RequestError(ErrorKind.MISSING_FIELD, f"missing field `{field}`")
    value = body[field]
    if value is None:
        raise RequestError(ErrorKind.WRONG_FIELD_TYPE, f"invalid type: null for field `{field}`")
    if nonempty and value == "":
        raise RequestError(ErrorKind.EMPTY_FIELD, f"`{field}` field is empty")


def _rust_check_hex_field(value: object, field: str, size: int) -> None:
    """rust-teos's order of checks on a fixed-size hex field: type, hex format, then size."""
    if not isinstance(value, str):
        raise RequestError(ErrorKind.WRONG_FIELD_TYPE, f"invalid type for `{field}`, expected a hex string")
    if len(value) % 2:
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, f"Odd number of digits in `{field}`")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, f"Invalid character in `{field}`") from None
    if len(raw) != size:
        raise RequestError(
            ErrorKind.WRONG_FIELD_SIZE, f"Wrong `{field}` field size. Expected {size}, received {len(raw)}"
        )


# -- /register ------------------------------------------------------------------------------------


@bp.post("/register")
def register() -> tuple[Response, int]:
    body = _read_json_object()
    if "public_key" in body:
        dialect, field = Dialect.PYTHON, "public_key"
    elif "user_id" in body:
        dialect, field = Dialect.RUST, "user_id"
    elif request_dialect() is Dialect.PYTHON:
        raise RequestError(ErrorKind.REGISTRATION_MISSING_FIELD, "public_key not found in register message")
    else:
        raise RequestError(ErrorKind.MISSING_FIELD, "missing field `user_id`")
    g.dialect = dialect
    value = body[field]
    if dialect is Dialect.RUST:
        _rust_require(body, field)
        _rust_check_hex_field(value, field, UserId.SIZE)
    user_id = parse_user_id(value)
    paid = payment_gateway()
    if paid is not None:  # a paid tower registers through /pay (docs/PAYMENTS.md §10)
        count_refusal("payment_required")
        return jsonify(paid.payment_required_body(dialect)), 402
    limits = admission()
    if limits is not None:
        limits.admit_registration(request.remote_addr or "")
    registration = _service().register(user_id, dialect)
    user = registration.user
    response: JsonObject = {
        "user_id": user.user_id.hex(),
        "available_slots": user.available_slots,
        "subscription_expiry": user.subscription_expiry,
        "subscription_signature": registration.signature,
    }
    if registration.dialect is Dialect.PYTHON:
        response["public_key"] = user.user_id.hex()
    else:
        response["subscription_start"] = user.subscription_start
    return jsonify(response), 200


# -- /add_appointment -----------------------------------------------------------------------------


@bp.post("/add_appointment")
def add_appointment() -> tuple[Response, int]:
    body = _read_json_object()
    g.error_prefix = PYTHON_ADD_PREFIX  # python-teos's refusals of a readable request start with it
    service = _service()
    if request_dialect() is Dialect.RUST:
        _rust_require(body, "appointment")
        appointment_data = body["appointment"]
        if isinstance(appointment_data, dict):
            for field in ("locator", "encrypted_blob", "to_self_delay"):
                _rust_require(appointment_data, field, nonempty=field == "locator")
        _rust_require(body, "signature")
    appointment = parse_appointment(
        body.get("appointment"),
        min_to_self_delay=service.min_to_self_delay,
        max_blob_size=service.max_blob_bytes,
    )
    try:
        signature = parse_signature(body.get("signature"))
    except RequestError:
        raise RequestError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS) from None
    caller = service.authenticate(appointment.serialize(), signature)
    if caller is None:
        raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS)
    g.dialect = caller.dialect
    accepted = service.add_appointment(caller, appointment)
    return (
        jsonify(
            {
                "locator": accepted.record.locator.hex(),
                "start_block": accepted.record.start_block,
                "signature": accepted.signature,
                "available_slots": accepted.user.available_slots,
                "subscription_expiry": accepted.user.subscription_expiry,
            }
        ),
        200,
    )


# -- /get_appointment -----------------------------------------------------------------------------


def _python_not_found(locator: object) -> tuple[Response, int]:
    """python-teos's answer to every get_appointment it cannot serve (echoing what was sent)."""
    echoed = locator if isinstance(locator, str) or locator is None else str(locator)[:64]
    return jsonify({"locator": echoed, "status": "not_found"}), 404


def _state_json(state: AppointmentState, dialect: Dialect) -> JsonObject:
    """A found appointment: the watched appointment, or the tracker of its penalty, in ``dialect``."""
    if state.appointment is not None:
        locator = state.appointment.locator
        data: JsonObject = {
            "locator": locator.hex(),
            "encrypted_blob": state.appointment.encrypted_blob.hex(),
            "to_self_delay": state.appointment.to_self_delay,
        }
    elif state.tracker is not None:
        locator = state.tracker.locator
        data = {
            "dispute_txid": state.tracker.dispute_txid.hex(),
            "penalty_txid": state.tracker.penalty_txid.hex(),
            "penalty_rawtx": state.tracker.penalty_rawtx.hex(),
        }
        if dialect is Dialect.PYTHON:
            data["locator"] = locator.hex()
    else:  # pragma: no cover - the service never builds an empty state
        raise TeosError(ErrorKind.UNEXPECTED, "appointment state without data")
    if dialect is Dialect.PYTHON:
        return {"locator": locator.hex(), "status": state.status, "appointment": data}
    return {"appointment": data, "status": state.status}


@bp.post("/get_appointment")
def get_appointment() -> tuple[Response, int]:
    body = _read_json_object()
    service = _service()
    if request_dialect() is Dialect.RUST:
        return _get_appointment_rust(body, service)
    raw_locator = body.get("locator")
    try:
        locator = parse_locator(raw_locator)
        signature = parse_signature(body.get("signature"))
    except RequestError:
        return _python_not_found(raw_locator)
    caller = service.authenticate(get_appointment_message(locator), signature)
    if caller is None:
        return _python_not_found(raw_locator)
    g.dialect = caller.dialect
    try:
        state = service.get_appointment(caller, locator)
    except TeosError as e:
        if caller.dialect is Dialect.RUST:
            raise
        if e.kind in (ErrorKind.APPOINTMENT_NOT_FOUND, ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION):
            return _python_not_found(raw_locator)
        raise
    return jsonify(_state_json(state, caller.dialect)), 200


def _get_appointment_rust(body: JsonObject, service: TowerService) -> tuple[Response, int]:
    _rust_require(body, "locator")
    _rust_check_hex_field(body["locator"], "locator", Locator.SIZE)
    _rust_require(body, "signature")
    locator = parse_locator(str(body["locator"]).lower())
    signature = parse_signature(body["signature"])
    caller = service.authenticate(get_appointment_message(locator), signature)
    if caller is None:
        raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, CANNOT_AUTHENTICATE)
    g.dialect = caller.dialect
    try:
        state = service.get_appointment(caller, locator)
    except TeosError as e:
        if caller.dialect is Dialect.PYTHON and e.kind in (
            ErrorKind.APPOINTMENT_NOT_FOUND,
            ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION,
        ):
            return _python_not_found(body["locator"])
        raise
    return jsonify(_state_json(state, caller.dialect)), 200


# -- /get_subscription_info -----------------------------------------------------------------------


@bp.post("/get_subscription_info")
def get_subscription_info() -> tuple[Response, int]:
    body = _read_json_object()
    service = _service()
    if request_dialect() is Dialect.RUST:
        _rust_require(body, "signature")
    try:
        signature = parse_signature(body.get("signature"))
    except RequestError:
        raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, USER_NOT_FOUND) from None
    caller = service.authenticate(GET_SUBSCRIPTION_INFO_MESSAGE, signature)
    if caller is None:
        raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, USER_NOT_FOUND)
    g.dialect = caller.dialect
    user, pages, several = service.subscription_pages(caller)
    done: Callable[[], None] = _nothing
    if several:
        if not _big_answer_due(caller.user_id) or not _BIG_ANSWERS.acquire(blocking=False):
            _close_pages(pages)
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable")
        done = _release_once()
    # The slot comes back when the answer is complete, or when the server closes it (sent, abandoned,
    # or never iterated at all).
    answer = ClosingIterator(_subscription_json(user, pages, caller.dialect, done),
                             [functools.partial(_close_pages, pages), done])
    return Response(answer, mimetype="application/json"), 200


# Subscriptions of more than one page being streamed at once, per API worker, and how often one user may
# have its own streamed; more get a 503 (retry later). A list of 100,000 locators costs ~0.2 s of CPU.
BIG_ANSWERS_AT_ONCE = 2
BIG_ANSWER_INTERVAL = 10.0  # seconds
_BIG_ANSWERS = threading.BoundedSemaphore(BIG_ANSWERS_AT_ONCE)
_big_answer_times: OrderedDict[UserId, float] = OrderedDict()
_big_answer_lock = threading.Lock()
_MAX_TRACKED_USERS = 10_000
big_answer_clock: Callable[[], float] = time.monotonic  # tests move it


def _big_answer_due(user_id: UserId) -> bool:
    """Whether ``user_id`` may have a multi-page answer now (and, if so, records that it does)."""
    now = big_answer_clock()
    with _big_answer_lock:
        last = _big_answer_times.pop(user_id, None)
        if last is not None and now - last < BIG_ANSWER_INTERVAL:
            _big_answer_times[user_id] = last
            return False
        _big_answer_times[user_id] = now
        while len(_big_answer_times) > _MAX_TRACKED_USERS:
            _big_answer_times.popitem(last=False)
    return True


def _nothing() -> None:
    pass


def _release_once() -> Callable[[], None]:
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            _BIG_ANSWERS.release()

    return release


def _close_pages(pages: Iterator[list[Locator]]) -> None:
    close = getattr(pages, "close", None)
    if close is not None:
        close()


def _subscription_json(
    user: UserRecord, pages: Iterator[list[Locator]], dialect: Dialect, done: Callable[[], None]
) -> Iterator[bytes]:
    """The answer both client families expect in one JSON object (the bytes ``jsonify`` makes, keys
    sorted, compact), produced page by page so that a subscription with 100,000 appointments is never
    held whole in memory: ``{"appointments": [...], "available_slots", "subscription_expiry"}`` for
    python-teos, ``{"available_slots", "locators": [...], "subscription_expiry"}`` for rust-teos."""
    slots, expiry = user.available_slots, user.subscription_expiry
    if dialect is Dialect.PYTHON:
        head = '{"appointments":['
        tail = f'],"available_slots":{slots},"subscription_expiry":{expiry}}}\n'
    else:
        head = f'{{"available_slots":{slots},"locators":['
        tail = f'],"subscription_expiry":{expiry}}}\n'
    yield head.encode()
    separator = ""
    for page in pages:
        if page:
            yield (separator + ",".join(f'"{locator.hex()}"' for locator in page)).encode()
            separator = ","
    done()
    yield tail.encode()


# -- /ping ----------------------------------------------------------------------------------------


@bp.get("/ping")
def ping() -> Response:
    """Liveness probe of the rust-teos plugin's ``pingtower``: 200 with an empty body."""
    return Response(status=200)
