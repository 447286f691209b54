"""The user side of a tower: a small client that builds, signs and sends each request in one dialect, and
checks every receipt the tower signs against its tower id.

Used by ``teos-client``, the demo, the benchmarks and the tests. A receipt is the user's proof that the
tower took the job, so it is checked before it is trusted: its signature must recover the tower id the
user expects, over the receipt bytes of the dialect in use (``common.receipts``), and it must answer the
request that was made. ``ReceiptError`` says why one is refused (``details`` carries what was seen).

The client identifies itself the way each family does unless told otherwise: python-teos clients send a
python-requests User-Agent, the rust-teos plugin (reqwest) sends none; the tower answers a caller it
cannot identify yet in the dialect that suggests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from common import crypto, messages, receipts
from common.appointment import Appointment
from common.dialects import locator_from_txid
from common.http import HttpError, JsonHttp
from common.types import Dialect, Locator, Txid, UserId

JsonObject = dict[str, Any]

PYTHON_TEOS_USER_AGENT = "python-requests/2.31.0"


class ReceiptError(ValueError):
    """The tower's answer cannot be trusted: wrong signer, invalid signature, or not what was asked."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def build_appointment(
    dispute_txid: Txid, penalty_rawtx: bytes, to_self_delay: int, dialect: Dialect
) -> Appointment:
    """The appointment for a penalty: locator and blob key derived from the dispute txid per ``dialect``."""
    return Appointment(
        locator=locator_from_txid(dispute_txid, dialect),
        encrypted_blob=crypto.encrypt(penalty_rawtx, dispute_txid, dialect),
        to_self_delay=to_self_delay,
    )


# -- receipts -------------------------------------------------------------------------------------------


def _field(response: Any, name: str, kind: type) -> Any:
    value = response.get(name) if isinstance(response, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ReceiptError(f"the tower's answer has no valid {name!r}", details=response)
    return value


def check_signed_by(message: bytes, signature: str, tower_id: UserId, what: str) -> None:
    """Raises ReceiptError unless ``signature`` over ``message`` recovers ``tower_id``."""
    try:
        signer = crypto.recover_public_key(message, signature)
    except crypto.InvalidSignature as e:
        raise ReceiptError(f"the tower's {what} signature is invalid ({e}); refusing this tower") from None
    if signer != tower_id:
        raise ReceiptError(
            f"the {what} is signed by {signer.hex()}, not by tower {tower_id.hex()}; refusing this tower",
            details={"expected_tower_id": tower_id.hex(), "recovered_key": signer.hex()},
        )


def check_registration(response: Any, dialect: Dialect, user_id: UserId, tower_id: UserId) -> JsonObject:
    """The registration receipt of ``response``, once checked (see the module docstring)."""
    if _field(response, "user_id", str) != user_id.hex():
        raise ReceiptError("the tower registered another user id", details=response)
    slots = _field(response, "available_slots", int)
    expiry = _field(response, "subscription_expiry", int)
    start = _field(response, "subscription_start", int) if dialect is Dialect.RUST else 0
    signature = _field(response, "subscription_signature", str)
    try:
        message = receipts.registration_receipt(dialect, user_id, slots, start, expiry)
    except ValueError as e:
        raise ReceiptError(f"the registration receipt cannot be built: {e}", details=response) from None
    check_signed_by(message, signature, tower_id, "registration receipt")
    receipt = {"user_id": user_id.hex(), "available_slots": slots, "subscription_expiry": expiry,
               "subscription_signature": signature}
    if dialect is Dialect.RUST:
        receipt["subscription_start"] = start
    return receipt


def check_appointment(
    response: Any, dialect: Dialect, appointment: Appointment, user_signature: str, tower_id: UserId
) -> JsonObject:
    """The appointment receipt of ``response``, once checked."""
    if _field(response, "locator", str) != appointment.locator.hex():
        raise ReceiptError("the tower answered for another locator", details=response)
    start_block = _field(response, "start_block", int)
    signature = _field(response, "signature", str)
    try:
        message = receipts.appointment_receipt(dialect, user_signature, start_block)
    except ValueError as e:
        raise ReceiptError(f"the appointment receipt cannot be built: {e}", details=response) from None
    check_signed_by(message, signature, tower_id, "appointment receipt")
    return {
        "tower_id": tower_id.hex(),
        "appointment": appointment.to_json(),
        "user_signature": user_signature,
        "start_block": start_block,
        "tower_signature": signature,
        "available_slots": response.get("available_slots"),
        "subscription_expiry": response.get("subscription_expiry"),
    }


# -- the client -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentAppointment:
    """An appointment the tower accepted: what was sent, the user's signature and the tower's answer."""

    appointment: Appointment
    signature: str  # the user's
    response: JsonObject

    @property
    def locator(self) -> Locator:
        return self.appointment.locator


class TowerClient:
    """One user (``secret_key``, a new one when left out) of the tower at ``host:port``, in one dialect,
    over one keep-alive connection. Calls that must succeed raise ``common.http.HttpError`` on an error
    status; ``get_appointment`` and ``request`` return the status with the answer."""

    def __init__(
        self,
        host: str,
        port: int | None,
        dialect: Dialect,
        secret_key: bytes | None = None,
        *,
        timeout: float = 30.0,
        user_agent: str | None = None,
        scheme: str = "http",
        path: str = "",
    ) -> None:
        self.dialect = dialect
        self.secret_key = secret_key or crypto.generate_secret_key()
        self.user_id: UserId = crypto.public_key(self.secret_key)
        if user_agent is None and dialect is Dialect.PYTHON:
            user_agent = PYTHON_TEOS_USER_AGENT
        netloc = f"[{host}]" if ":" in host else host
        url = f"{scheme}://{netloc}{f':{port}' if port is not None else ''}{path}"
        self.http = JsonHttp(url, timeout, {"User-Agent": user_agent} if user_agent else {})

    @classmethod
    def at(cls, url: str, dialect: Dialect, secret_key: bytes | None = None, **options: Any) -> TowerClient:
        """A client of the tower at ``url`` (``http://host:port`` or ``https://host/path``)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        return cls(parts.hostname, parts.port, dialect, secret_key, scheme=parts.scheme,
                   path=parts.path.rstrip("/"), **options)  # fmt: skip

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON or None for an empty body)."""
        return self.http.request(method, path, body)

    def _ok(self, path: str, body: JsonObject) -> JsonObject:
        status, answer = self.request("POST", path, body)
        if status != 200 or not isinstance(answer, dict):
            raise HttpError(status, answer)
        return answer

    def ping(self) -> int:
        return self.request("GET", "/ping")[0]

    def register(self) -> JsonObject:
        return self._ok("/register", messages.register_body(self.user_id, self.dialect))

    def send_appointment(self, appointment: Appointment) -> SentAppointment:
        """Signs ``appointment`` and sends it."""
        signature = crypto.sign(appointment.serialize(), self.secret_key)
        answer = self._ok("/add_appointment", messages.add_appointment_body(appointment, signature))
        return SentAppointment(appointment, signature, answer)

    def add_appointment(
        self, dispute_txid: Txid, penalty_raw: bytes, to_self_delay: int = 20
    ) -> SentAppointment:
        """Encrypts ``penalty_raw`` under ``dispute_txid`` the dialect's way, signs and sends it."""
        appointment = build_appointment(dispute_txid, penalty_raw, to_self_delay, self.dialect)
        return self.send_appointment(appointment)

    def get_appointment(self, locator: Locator) -> tuple[int, Any]:
        signature = crypto.sign(messages.get_appointment_message(locator), self.secret_key)
        return self.request("POST", "/get_appointment", messages.get_appointment_body(locator, signature))

    def get_subscription_info(self) -> JsonObject:
        signature = crypto.sign(messages.GET_SUBSCRIPTION_INFO_MESSAGE, self.secret_key)
        return self._ok("/get_subscription_info", messages.get_subscription_info_body(signature))

    def check_registration(self, response: Any, tower_id: UserId) -> JsonObject:
        """The registration receipt, once checked against ``tower_id`` (ReceiptError otherwise)."""
        return check_registration(response, self.dialect, self.user_id, tower_id)

    def check_appointment(self, sent: SentAppointment, tower_id: UserId) -> JsonObject:
        """The appointment receipt, once checked against ``tower_id`` (ReceiptError otherwise)."""
        return check_appointment(sent.response, self.dialect, sent.appointment, sent.signature, tower_id)
