"""The public API's hot path: an ``add_appointment`` that parses and validates, answered without Flask.

Nearly every request a tower serves is a well-formed ``add_appointment``. Through Flask it costs about
twice the CPU of the work itself (request and response objects, context locals, routing, hooks), and that
is what bounds how many a worker answers per second. ``FastAdd`` does the same steps as
``teos.api.public.add_appointment`` on the raw body, with the same functions (``common.validation``,
``TowerService``), and builds the same bytes Flask's ``jsonify`` builds (sorted keys, compact separators,
a final newline, ``Content-Type: application/json``), for the answer and for the refusals it gives itself:

- a signature that does not recover a registered user (in the dialect the User-Agent suggests), and
- every refusal of the use case (subscription expired, not enough slots, already triggered, bitcoind away,
  the tower full), in the caller's dialect, with python-teos's "appointment rejected. " prefix.

Anything else (a body that is not a JSON object, a missing or malformed field, the wrong Content-Type for a
python-teos client, a rust-teos body over its limit) happens before any key is recovered or any state is
touched: ``FastAdd`` returns None and the caller hands the request to the Flask app, whose answer is then
the reference by construction. ``tests/api/test_fastpath.py`` checks both paths answer alike.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from common.errors import ErrorKind, RequestError, TeosError
from common.types import Dialect
from common.validation import parse_appointment, parse_signature
from teos.api.errors import error_body, http_status
from teos.api.public import NOT_ENOUGH_SLOTS, PYTHON_ADD_PREFIX, RUST_BODY_LIMITS, guess_dialect
from teos.service import TowerService

PATH = "/add_appointment"
_RUST_LIMIT = RUST_BODY_LIMITS["public.add_appointment"]
_RUST_FIELDS = ("locator", "encrypted_blob", "to_self_delay")
_JSON_HEADERS = "application/json"


class RequestObserver(Protocol):
    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None: ...


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers (as Flask sends them) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_answer(status: int, obj: object) -> Answer:
    """What ``flask.jsonify`` makes of ``obj`` in this app (``sort_keys``, not in debug mode)."""
    body = (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()
    return Answer(status, [("Content-Type", _JSON_HEADERS), ("Content-Length", str(len(body)))], body)


def _is_json(content_type: str | None) -> bool:
    """werkzeug's ``Request.is_json``: ``application/json`` or ``application/*+json``, parameters aside."""
    if not content_type:
        return False
    mimetype = content_type.split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _rust_ready(body: Mapping[str, object]) -> bool:
    """rust-teos's own field checks pass (``public._rust_require``): else Flask words the refusal."""
    if "appointment" not in body or "signature" not in body:
        return False
    appointment, signature = body["appointment"], body["signature"]
    if appointment is None or appointment == "" or signature is None or signature == "":
        return False
    if isinstance(appointment, dict):
        for field in _RUST_FIELDS:
            if field not in appointment or appointment[field] is None:
                return False
            if field == "locator" and appointment[field] == "":
                return False
    return True


class FastAdd:
    """``add_appointment`` without Flask (see the module docstring)."""

    def __init__(self, service: TowerService, observer: RequestObserver | None = None) -> None:
        self.service = service
        self.observer = observer

    def __call__(self, body: bytes, user_agent: str | None, content_type: str | None) -> Answer | None:
        """The answer to a POST ``/add_appointment`` with this body and headers, or None: let Flask answer."""
        started = time.perf_counter()
        answer = self._answer(body, user_agent, content_type)
        if answer is not None and self.observer is not None:
            self.observer.observe_request(PATH, answer.status, time.perf_counter() - started, method="POST")
        return answer

    def _answer(self, raw: bytes, user_agent: str | None, content_type: str | None) -> Answer | None:
        guessed = guess_dialect(user_agent)
        if guessed is Dialect.RUST and len(raw) > _RUST_LIMIT:
            return None
        if guessed is Dialect.PYTHON and not _is_json(content_type):
            return None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return None
        if not isinstance(body, dict) or (guessed is Dialect.RUST and not _rust_ready(body)):
            return None
        service = self.service
        try:
            appointment = parse_appointment(
                body.get("appointment"),
                min_to_self_delay=service.min_to_self_delay,
                max_blob_size=service.max_blob_bytes,
            )
            signature = parse_signature(body.get("signature"))
        except RequestError:
            return None
        caller = service.authenticate(appointment.serialize(), signature)
        if caller is None:
            return _refusal(TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS), guessed)
        try:
            accepted = service.add_appointment(caller, appointment)
        except TeosError as e:
            return _refusal(e, caller.dialect)
        return json_answer(200, {
            "locator": accepted.record.locator.hex(),
            "start_block": accepted.record.start_block,
            "signature": accepted.signature,
            "available_slots": accepted.user.available_slots,
            "subscription_expiry": accepted.user.subscription_expiry,
        })  # fmt: skip


def _refusal(error: TeosError, dialect: Dialect) -> Answer:
    """``teos.api.errors.error_response`` with the app's python-teos prefix for add_appointment."""
    message = error.message
    if dialect is Dialect.PYTHON and not message.startswith(PYTHON_ADD_PREFIX):
        message = PYTHON_ADD_PREFIX + message
    return json_answer(http_status(error.kind, dialect), error_body(error.kind, message, dialect))


class FastPathWsgi:
    """A WSGI app that answers POST ``/add_appointment`` with ``FastAdd`` and the rest with ``app``."""

    def __init__(self, app: Any, fast: FastAdd, max_body_bytes: int) -> None:
        self.app = app
        self.fast = fast
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == PATH:
            try:
                length = int(environ.get("CONTENT_LENGTH") or -1)
            except ValueError:
                length = -1
            if 0 <= length <= self.max_body_bytes:
                body = environ["wsgi.input"].read(length)
                answer = self.fast(body, environ.get("HTTP_USER_AGENT"), environ.get("CONTENT_TYPE"))
                if answer is not None:
                    start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", answer.headers)
                    return [answer.body]
                environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)
