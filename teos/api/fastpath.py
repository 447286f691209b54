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

An API worker runs ``AsyncFastAdd``: the same steps on its event loop, the calls to the main process
awaited on an ``AsyncCoreClient``, so a request is never handed to a thread (the hand-over, the thread's
wake-up and the GIL passing between the pool's threads cost about as much as Flask did).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from common.appointment import Appointment
from common.errors import ErrorKind, RequestError, TeosError
from common.types import Dialect
from common.validation import parse_appointment, parse_signature
from teos.api.errors import error_body, http_status
from teos.api.ipc import AsyncCoreClient, RemoteCore
from teos.api.public import NOT_ENOUGH_SLOTS, PYTHON_ADD_PREFIX, RUST_BODY_LIMITS, guess_dialect
from teos.service import AcceptedAppointment, TowerService, caller_of, signer
from teos.storage.codec import UserRecord

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


@dataclass(frozen=True)
class _Request:
    """A well-formed add_appointment: what both fast paths act on."""

    guessed: Dialect
    appointment: Appointment
    signature: str
    message: bytes


def _parse(
    service: TowerService, raw: bytes, user_agent: str | None, content_type: str | None
) -> _Request | None:
    """The request, or None when anything about it is unusual (the Flask app then answers it)."""
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
    try:
        appointment = parse_appointment(
            body.get("appointment"),
            min_to_self_delay=service.min_to_self_delay,
            max_blob_size=service.max_blob_bytes,
        )
        signature = parse_signature(body.get("signature"))
    except RequestError:
        return None
    return _Request(guessed, appointment, signature, appointment.serialize())


def _accepted(accepted: AcceptedAppointment) -> Answer:
    record = accepted.record
    return _accepted_answer(record.locator.hex(), record.start_block, accepted.signature, accepted.user)


def _accepted_answer(locator_hex: str, start_block: int, signature: str, user: UserRecord) -> Answer:
    """``json_answer(200, {...})`` of an accepted appointment, formatted directly: the keys in sorted order,
    every value an integer or a hex or z-base-32 string (nothing to escape), so the bytes are the same
    (``tests/api/test_fastpath.py`` compares them with Flask's)."""
    body = (
        f'{{"available_slots":{int(user.available_slots)},"locator":"{locator_hex}",'
        f'"signature":"{signature}","start_block":{int(start_block)},'
        f'"subscription_expiry":{int(user.subscription_expiry)}}}\n'
    ).encode()
    return Answer(200, [("Content-Type", _JSON_HEADERS), ("Content-Length", str(len(body)))], body)


_NO_CALLER = TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS)


class FastAdd:
    """``add_appointment`` without Flask (see the module docstring), in a thread: the service's calls to
    the core block."""

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
        request = _parse(self.service, raw, user_agent, content_type)
        if request is None:
            return None
        try:
            caller = self.service.authenticate(request.message, request.signature)
        except TeosError as e:
            return _refusal(e, request.guessed)
        if caller is None:
            return _refusal(_NO_CALLER, request.guessed)
        try:
            return _accepted(self.service.add_appointment(caller, request.appointment))
        except TeosError as e:
            return _refusal(e, caller.dialect)


class AsyncFastAdd:
    """``add_appointment`` without Flask and without a thread, on an API worker's event loop: the same
    steps as ``FastAdd``, with the two calls to the main process (the signer's user record, unless
    remembered, and the add itself) awaited on ``channel`` while the loop serves other requests."""

    def __init__(
        self,
        service: TowerService,
        remote: RemoteCore,
        channel: AsyncCoreClient,
        observer: RequestObserver | None = None,
    ) -> None:
        self.service = service
        self.remote = remote
        self.channel = channel
        self.observer = observer

    async def __call__(self, body: bytes, user_agent: str | None, content_type: str | None) -> Answer | None:
        """The answer to a POST ``/add_appointment`` with this body and headers, or None: let Flask answer."""
        started = time.perf_counter()
        answer = await self._answer(body, user_agent, content_type)
        if answer is not None and self.observer is not None:
            self.observer.observe_request(PATH, answer.status, time.perf_counter() - started, method="POST")
        return answer

    async def _answer(self, raw: bytes, user_agent: str | None, content_type: str | None) -> Answer | None:
        request = _parse(self.service, raw, user_agent, content_type)
        if request is None:
            return None
        remote = self.remote
        user_id = signer(request.message, request.signature)
        user = None
        if user_id is not None:
            user = remote.cached_user(user_id)
            if user is None:
                try:
                    user = remote.user_answer(user_id, await self.channel.call("user", user_id.raw))
                except TeosError as e:
                    return _refusal(e, request.guessed)
        caller = caller_of(user, request.message, request.signature)
        if caller is None:
            return _refusal(_NO_CALLER, request.guessed)
        try:
            request_args = remote.add_request(caller.user_id, caller.signature, request.appointment)
            start_block, user = remote.added(await self.channel.call(*request_args))
        except TeosError as e:
            return _refusal(e, caller.dialect)
        signature = self.service.receipt_signature(caller.dialect, caller.signature, start_block)
        return _accepted_answer(request.appointment.locator.hex(), start_block, signature, user)


def _refusal(error: TeosError, dialect: Dialect) -> Answer:
    """``teos.api.errors.error_response`` with the app's python-teos prefix for add_appointment."""
    message = error.message
    if dialect is Dialect.PYTHON and not message.startswith(PYTHON_ADD_PREFIX):
        message = PYTHON_ADD_PREFIX + message
    return json_answer(http_status(error.kind, dialect), error_body(error.kind, message, dialect))
