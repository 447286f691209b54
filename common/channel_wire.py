"""The paid-subscription protocol on the wire: the tower's terms, the requests a user signs, the
acknowledgements the tower signs, their JSON shapes and the refusals (docs/PAYMENTS.md).

Every signature here is a Lightning ``signmessage`` signature (``common.crypto``), as in the rest of the
protocol: users sign with their channel key (``user_key``), the tower with its tower key (the key of
``tower_id``). Each signed message starts with an ASCII tag naming it and its version, so no message can
be mistaken for another or for a receipt (receipts start with a public key or a z-base-32 signature,
neither of which contains ``-``). Integers are big-endian; the channel id is its 36 raw bytes (txid in
internal order, vout u32); ``dialect`` is one byte (0 python, 1 rust).

========================  ================================================================================
message                   bytes
========================  ================================================================================
terms (tower)             ``"teos-terms-v1" | tower_key(33) | price(u64) | subscription_slots(u32) |
                          subscription_duration(u32) | min_funding_confirmations(u32) |
                          min_blocks_before_expiry(u32) | max_channel_blocks(u32) | fee_rate(u32) |
                          claim_margin(u32) | len(network)(u8) | network(ascii)``
open channel (user)       ``"teos-open-channel-v1" | channel_id(36) | funding_value(u64) | user_key(33) |
                          tower_key(33) | expiry(u32) | fee_rate(u32) | len(change_script)(u16) |
                          change_script``
pay (user)                ``"teos-pay-v1" | channel_id(36) | nonce(u32) | amount(u64) | user_id(33) |
                          dialect(u8) | payment txid(32, internal order)``
get channel (user)        ``"teos-get-channel-v1" | channel_id(36)``
channel ack (tower)       ``"teos-channel-ack-v1" | channel_id(36) | nonce(u32) | amount(u64) |
                          expiry(u32)``
========================  ================================================================================

The JSON parsers take whatever ``json.loads`` produced and return typed requests or raise
``RequestError`` (a malformed request) with the usual kinds; nothing else escapes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

from common import crypto
from common.channel import ChannelError, ChannelId, ChannelParams
from common.errors import ErrorKind, RequestError, TeosError
from common.tx import Transaction, TxDecodeError, decode_transaction
from common.types import Dialect, Txid, UserId

TERMS_TAG = b"teos-terms-v1"
OPEN_TAG = b"teos-open-channel-v1"
PAY_TAG = b"teos-pay-v1"
GET_CHANNEL_TAG = b"teos-get-channel-v1"
ACK_TAG = b"teos-channel-ack-v1"

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
MAX_CHANGE_SCRIPT = 34  # the longest allowed change script (P2WSH, P2TR)
MAX_PAYMENT_TX = 400  # bytes: an unsigned payment is about 125; anything larger is refused unread
_LOWER_HEX = re.compile(r"[0-9a-f]*")


class Refusal(Enum):
    """Why a payment-protocol request was refused: a stable name for clients, and the kind (hence the code
    in each dialect) it is reported with."""

    BAD_REQUEST_SIGNATURE = ("bad_request_signature", ErrorKind.INVALID_PAYMENT)
    BAD_PAYMENT_SIGNATURE = ("bad_payment_signature", ErrorKind.INVALID_PAYMENT)
    STALE_NONCE = ("stale_nonce", ErrorKind.PAYMENT_CONFLICT)
    NONCE_GAP = ("nonce_gap", ErrorKind.INVALID_PAYMENT)
    AMOUNT_TOO_LOW = ("amount_too_low", ErrorKind.INVALID_PAYMENT)
    AMOUNT_NOT_ALLOWED = ("amount_not_allowed", ErrorKind.INVALID_PAYMENT)
    WRONG_TRANSACTION = ("wrong_transaction", ErrorKind.INVALID_PAYMENT)
    EXTRA_OUTPUTS = ("extra_outputs", ErrorKind.INVALID_PAYMENT)
    WRONG_FEE = ("wrong_fee", ErrorKind.INVALID_PAYMENT)
    LOCK_TIME = ("lock_time", ErrorKind.INVALID_PAYMENT)
    WRONG_DIALECT = ("wrong_dialect", ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT)
    CHANNEL_NOT_FOUND = ("channel_not_found", ErrorKind.CHANNEL_NOT_FOUND)
    CHANNEL_CLOSED = ("channel_closed", ErrorKind.CHANNEL_UNAVAILABLE)
    EXPIRY_TOO_NEAR = ("expiry_too_near", ErrorKind.CHANNEL_UNAVAILABLE)
    EXPIRY_TOO_FAR = ("expiry_too_far", ErrorKind.INVALID_FUNDING)
    BAD_PARAMETERS = ("bad_parameters", ErrorKind.INVALID_FUNDING)
    TERMS_CHANGED = ("terms_changed", ErrorKind.INVALID_FUNDING)
    FUNDING_NOT_FOUND = ("funding_not_found", ErrorKind.INVALID_FUNDING)
    FUNDING_UNCONFIRMED = ("funding_unconfirmed", ErrorKind.INVALID_FUNDING)
    FUNDING_WRONG_SCRIPT = ("funding_wrong_script", ErrorKind.INVALID_FUNDING)
    FUNDING_WRONG_VALUE = ("funding_wrong_value", ErrorKind.INVALID_FUNDING)
    FUNDING_SPENT = ("funding_spent", ErrorKind.INVALID_FUNDING)
    CHANNEL_EXISTS = ("channel_exists", ErrorKind.INVALID_FUNDING)
    TOWER_FULL = ("tower_full", ErrorKind.RESOURCE_EXHAUSTED)
    RATE_LIMITED = ("rate_limited", ErrorKind.RESOURCE_EXHAUSTED)

    def __init__(self, text: str, kind: ErrorKind) -> None:
        self.text = text
        self.kind = kind


class PaymentError(TeosError):
    """A refused payment-protocol request: the kind fixes the code, ``reason`` says precisely why.

    Whatever raised it charged nothing and granted nothing."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(reason.kind, message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"PaymentError({self.reason.name}, {self.message!r})"


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


# -- terms --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentTerms:
    """What a paid tower charges and requires, as it publishes them (signed by its tower key)."""

    tower_key: bytes  # the tower's payment public key (33 bytes)
    price: int  # satoshis per registration (subscription_slots for subscription_duration blocks)
    subscription_slots: int
    subscription_duration: int
    min_funding_confirmations: int
    min_blocks_before_expiry: int  # payments are refused once expiry - tip is below this
    max_channel_blocks: int  # a channel's expiry is at most this many blocks above the tip at opening
    fee_rate: int  # sat per 1000 vbytes of every payment transaction
    claim_margin: int  # the tower claims once expiry - tip is at most this
    network: str

    def message(self) -> bytes:
        net = self.network.encode("ascii")
        return b"".join(
            [
                TERMS_TAG,
                self.tower_key,
                _u64(self.price),
                _u32(self.subscription_slots),
                _u32(self.subscription_duration),
                _u32(self.min_funding_confirmations),
                _u32(self.min_blocks_before_expiry),
                _u32(self.max_channel_blocks),
                _u32(self.fee_rate),
                _u32(self.claim_margin),
                bytes([len(net)]),
                net,
            ]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tower_payment_key": self.tower_key.hex(),
            "price": self.price,
            "subscription_slots": self.subscription_slots,
            "subscription_duration": self.subscription_duration,
            "min_funding_confirmations": self.min_funding_confirmations,
            "min_blocks_before_expiry": self.min_blocks_before_expiry,
            "max_channel_blocks": self.max_channel_blocks,
            "fee_rate": self.fee_rate,
            "claim_margin": self.claim_margin,
            "network": self.network,
        }

    @classmethod
    def from_json(cls, data: object) -> PaymentTerms:
        """The terms in a tower's answer (a client reads them; checks their shape, not their signature)."""
        body = _object(data)
        network = body.get("network")
        if not isinstance(network, str) or not network.isascii() or not 0 < len(network) < 32:
            raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, "wrong network")
        return cls(
            tower_key=_key(body, "tower_payment_key"),
            price=_int(body, "price", U64_MAX),
            subscription_slots=_int(body, "subscription_slots", U32_MAX),
            subscription_duration=_int(body, "subscription_duration", U32_MAX),
            min_funding_confirmations=_int(body, "min_funding_confirmations", U32_MAX),
            min_blocks_before_expiry=_int(body, "min_blocks_before_expiry", U32_MAX),
            max_channel_blocks=_int(body, "max_channel_blocks", U32_MAX),
            fee_rate=_int(body, "fee_rate", U32_MAX),
            claim_margin=_int(body, "claim_margin", U32_MAX),
            network=network,
        )


# -- requests -----------------------------------------------------------------------------------------------


def open_message(params: ChannelParams) -> bytes:
    return b"".join(
        [
            OPEN_TAG,
            params.channel_id.raw,
            _u64(params.funding_value),
            params.user_key,
            params.tower_key,
            _u32(params.expiry),
            _u32(params.fee_rate),
            struct.pack(">H", len(params.change_script)),
            params.change_script,
        ]
    )


def pay_message(
    channel_id: ChannelId, nonce: int, amount: int, user_id: UserId, dialect: Dialect, payment: Transaction
) -> bytes:
    return b"".join(
        [
            PAY_TAG,
            channel_id.raw,
            _u32(nonce),
            _u64(amount),
            user_id.raw,
            bytes([dialect.code]),
            payment.txid.raw,
        ]
    )


def get_channel_message(channel_id: ChannelId) -> bytes:
    return GET_CHANNEL_TAG + channel_id.raw


def ack_message(channel_id: ChannelId, nonce: int, amount: int, expiry: int) -> bytes:
    return ACK_TAG + channel_id.raw + _u32(nonce) + _u64(amount) + _u32(expiry)


@dataclass(frozen=True)
class OpenChannelRequest:
    """``POST /open_channel``: the channel's parameters, signed by ``user_key`` (tower_key is the tower's
    own payment key, not sent: the tower fills it in before checking the signature)."""

    channel_id: ChannelId
    funding_value: int
    user_key: bytes
    expiry: int
    change_script: bytes
    fee_rate: int
    signature: str

    def params(self, tower_key: bytes) -> ChannelParams:
        return ChannelParams(
            self.channel_id,
            self.funding_value,
            self.user_key,
            tower_key,
            self.expiry,
            self.change_script,
            self.fee_rate,
        )

    def signed_by_user(self, tower_key: bytes) -> bool:
        return crypto.verify(open_message(self.params(tower_key)), self.signature, UserId(self.user_key))

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_id": str(self.channel_id),
            "funding_value": self.funding_value,
            "user_key": self.user_key.hex(),
            "expiry": self.expiry,
            "change_script": self.change_script.hex(),
            "fee_rate": self.fee_rate,
            "signature": self.signature,
        }


def make_open_request(params: ChannelParams, user_secret: bytes) -> OpenChannelRequest:
    return OpenChannelRequest(
        params.channel_id,
        params.funding_value,
        params.user_key,
        params.expiry,
        params.change_script,
        params.fee_rate,
        crypto.sign(open_message(params), user_secret),
    )


def parse_open_request(data: object) -> OpenChannelRequest:
    body = _object(data)
    return OpenChannelRequest(
        channel_id=_channel_id(body),
        funding_value=_int(body, "funding_value", U64_MAX, minimum=1),
        user_key=_key(body, "user_key"),
        expiry=_int(body, "expiry", U32_MAX, minimum=1),
        change_script=_hex(body, "change_script", MAX_CHANGE_SCRIPT),
        fee_rate=_int(body, "fee_rate", U32_MAX, minimum=1),
        signature=_signature(body),
    )


@dataclass(frozen=True)
class PayRequest:
    """``POST /pay``: a payment of ``amount`` at ``nonce`` that registers (or tops up) ``user_id``."""

    channel_id: ChannelId
    nonce: int
    amount: int
    payment_tx: Transaction  # unsigned
    payment_signature: bytes  # the user's DER signature plus SIGHASH_ALL
    user_id: UserId
    dialect: Dialect
    signature: str  # signmessage by the channel's user_key over pay_message

    def message(self) -> bytes:
        return pay_message(
            self.channel_id, self.nonce, self.amount, self.user_id, self.dialect, self.payment_tx
        )

    def to_json(self) -> dict[str, Any]:
        user_field = "public_key" if self.dialect is Dialect.PYTHON else "user_id"
        return {
            "channel_id": str(self.channel_id),
            "nonce": self.nonce,
            "amount": self.amount,
            "payment_tx": self.payment_tx.raw.hex(),
            "payment_signature": self.payment_signature.hex(),
            user_field: self.user_id.hex(),
            "signature": self.signature,
        }


def make_pay_request(
    params: ChannelParams,
    nonce: int,
    amount: int,
    user_id: UserId,
    dialect: Dialect,
    user_secret: bytes,
) -> PayRequest:
    """A client's payment: builds and signs the payment transaction and the request."""
    from common.channel import payment_tx, sign_payment

    tx = payment_tx(params, amount)
    signature = sign_payment(params, amount, user_secret)
    message = pay_message(params.channel_id, nonce, amount, user_id, dialect, tx)
    return PayRequest(
        params.channel_id, nonce, amount, tx, signature, user_id, dialect, crypto.sign(message, user_secret)
    )


def parse_pay_request(data: object) -> PayRequest:
    """The dialect is the field naming the user, as in ``/register``: ``public_key`` (python) or
    ``user_id`` (rust); exactly one must be present."""
    body = _object(data)
    has_python = "public_key" in body
    has_rust = "user_id" in body
    if has_python == has_rust:
        raise RequestError(
            ErrorKind.REGISTRATION_MISSING_FIELD, "exactly one of `public_key` or `user_id` must be given"
        )
    dialect = Dialect.PYTHON if has_python else Dialect.RUST
    user_hex = body["public_key" if has_python else "user_id"]
    try:
        user_id = UserId.from_hex(user_hex) if _is_lower_hex(user_hex) else None
    except ValueError:
        user_id = None
    if user_id is None:
        raise RequestError(
            ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT, "wrong user id (33-byte compressed key)"
        )
    raw_tx = _hex(body, "payment_tx", MAX_PAYMENT_TX)
    try:
        tx = decode_transaction(raw_tx)
    except TxDecodeError as exc:
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, f"payment_tx is not a transaction: {exc}") from None
    return PayRequest(
        channel_id=_channel_id(body),
        nonce=_int(body, "nonce", U32_MAX, minimum=1),
        amount=_int(body, "amount", U64_MAX, minimum=1),
        payment_tx=tx,
        payment_signature=_hex(body, "payment_signature", 73),
        user_id=user_id,
        dialect=dialect,
        signature=_signature(body),
    )


@dataclass(frozen=True)
class GetChannelRequest:
    """``POST /get_channel``: the channel's state, for a client that lost its own."""

    channel_id: ChannelId
    signature: str

    def to_json(self) -> dict[str, Any]:
        return {"channel_id": str(self.channel_id), "signature": self.signature}


def make_get_channel_request(channel_id: ChannelId, user_secret: bytes) -> GetChannelRequest:
    return GetChannelRequest(channel_id, crypto.sign(get_channel_message(channel_id), user_secret))


def parse_get_channel_request(data: object) -> GetChannelRequest:
    body = _object(data)
    return GetChannelRequest(_channel_id(body), _signature(body))


# -- responses ----------------------------------------------------------------------------------------------

CHANNEL_STATUSES = ("open", "closing", "claimed", "refunded", "unpaid")


@dataclass(frozen=True)
class ChannelView:
    """A channel as the tower shows it to its user (``/open_channel``, ``/pay``, ``/get_channel``), with the
    tower's signature over ``ack_message`` next to it in each answer."""

    params: ChannelParams
    opened_at: int
    status: str  # one of CHANNEL_STATUSES
    nonce: int
    amount: int
    registrations: int
    claim_txid: Txid | None = None

    def ack_message(self) -> bytes:
        return ack_message(self.params.channel_id, self.nonce, self.amount, self.params.expiry)

    def to_json(self) -> dict[str, Any]:
        p = self.params
        return {
            "channel_id": str(p.channel_id),
            "funding_value": p.funding_value,
            "user_key": p.user_key.hex(),
            "tower_key": p.tower_key.hex(),
            "expiry": p.expiry,
            "change_script": p.change_script.hex(),
            "fee_rate": p.fee_rate,
            "opened_at": self.opened_at,
            "status": self.status,
            "nonce": self.nonce,
            "amount": self.amount,
            "max_amount": p.max_amount,
            "registrations": self.registrations,
            "claim_txid": self.claim_txid.hex() if self.claim_txid is not None else None,
        }

    @classmethod
    def from_json(cls, data: object) -> ChannelView:
        """A client's reading of the tower's answer (shape only; the caller checks the signature)."""
        body = _object(data)
        status = body.get("status")
        if status not in CHANNEL_STATUSES:
            raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, "unknown channel status")
        claim = body.get("claim_txid")
        try:
            claim_txid = None if claim is None else Txid.from_hex(claim)
        except ValueError:
            raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, "wrong claim_txid") from None
        params = ChannelParams(
            _channel_id(body),
            _int(body, "funding_value", U64_MAX, minimum=1),
            _key(body, "user_key"),
            _key(body, "tower_key"),
            _int(body, "expiry", U32_MAX, minimum=1),
            _hex(body, "change_script", MAX_CHANGE_SCRIPT),
            _int(body, "fee_rate", U32_MAX, minimum=1),
        )
        return cls(
            params,
            _int(body, "opened_at", U32_MAX),
            status,
            _int(body, "nonce", U32_MAX),
            _int(body, "amount", U64_MAX),
            _int(body, "registrations", U32_MAX),
            claim_txid,
        )


def channel_response(view: ChannelView, channel_signature: str) -> dict[str, Any]:
    """The body of ``/open_channel`` and ``/get_channel``."""
    return {"channel": view.to_json(), "channel_signature": channel_signature}


def pay_response(
    dialect: Dialect,
    user_id: UserId,
    available_slots: int,
    subscription_start: int,
    subscription_expiry: int,
    subscription_signature: str,
    registrations: int,
    view: ChannelView,
    channel_signature: str,
) -> dict[str, Any]:
    """The body of ``/pay``: the caller's dialect's ``/register`` answer, plus what the payment bought and
    the tower-signed channel state."""
    body: dict[str, Any] = {
        "user_id": user_id.hex(),
        "available_slots": available_slots,
        "subscription_expiry": subscription_expiry,
        "subscription_signature": subscription_signature,
    }
    if dialect is Dialect.PYTHON:
        body["public_key"] = user_id.hex()
    else:
        body["subscription_start"] = subscription_start
    body["registrations"] = registrations
    body.update(channel_response(view, channel_signature))
    return body


def error_body(error: TeosError, dialect: Dialect) -> dict[str, Any]:
    """A refusal: the usual ``{error, error_code}``, plus ``reason`` for payment refusals."""
    body: dict[str, Any] = {"error": error.message, "error_code": error.code(dialect)}
    if isinstance(error, PaymentError):
        body["reason"] = error.reason.text
    return body


def payment_required_body(
    dialect: Dialect, tower_id: UserId, terms: PaymentTerms, signature: str
) -> dict[str, Any]:
    """The 402 answer of a paid tower to an unpaid ``/register``."""
    return {
        "error": "Payment required: this tower charges for registrations (see terms)",
        "error_code": TeosError(ErrorKind.PAYMENT_REQUIRED, "").code(dialect),
        "tower_id": tower_id.hex(),
        "terms": terms.to_json(),
        "signature": signature,
    }


def terms_response(tower_id: UserId, terms: PaymentTerms, signature: str) -> dict[str, Any]:
    """The body of ``GET /payment_terms``."""
    return {"tower_id": tower_id.hex(), "terms": terms.to_json(), "signature": signature}


# -- field parsers ------------------------------------------------------------------------------------------


def _object(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RequestError(ErrorKind.INVALID_REQUEST_FORMAT, "request body must be a JSON object")
    return data


def _field(body: dict[str, Any], name: str) -> object:
    if name not in body:
        raise RequestError(ErrorKind.MISSING_FIELD, f"missing field `{name}`")
    value = body[name]
    if value is None:
        raise RequestError(ErrorKind.EMPTY_FIELD, f"empty field `{name}`")
    return value


def _int(body: dict[str, Any], name: str, maximum: int, minimum: int = 0) -> int:
    value = _field(body, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(ErrorKind.WRONG_FIELD_TYPE, f"`{name}` must be an integer")
    if value < minimum:
        raise RequestError(ErrorKind.FIELD_TOO_SMALL, f"`{name}` must be at least {minimum}")
    if value > maximum:
        raise RequestError(ErrorKind.FIELD_TOO_BIG, f"`{name}` must be at most {maximum}")
    return value


def _is_lower_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) % 2 == 0 and bool(_LOWER_HEX.fullmatch(value))


def _hex(body: dict[str, Any], name: str, max_bytes: int) -> bytes:
    value = _field(body, name)
    if not isinstance(value, str):
        raise RequestError(ErrorKind.WRONG_FIELD_TYPE, f"`{name}` must be a hex string")
    if len(value) > 2 * max_bytes:
        raise RequestError(ErrorKind.FIELD_TOO_BIG, f"`{name}` is longer than {max_bytes} bytes")
    if not _is_lower_hex(value):
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, f"`{name}` must be lower-case hex")
    return bytes.fromhex(value)


def _key(body: dict[str, Any], name: str) -> bytes:
    raw = _hex(body, name, 33)
    if len(raw) != 33 or raw[0] not in (2, 3):
        raise RequestError(ErrorKind.WRONG_FIELD_SIZE, f"`{name}` must be a 33-byte compressed public key")
    return raw


def _channel_id(body: dict[str, Any]) -> ChannelId:
    value = _field(body, "channel_id")
    if not isinstance(value, str):
        raise RequestError(ErrorKind.WRONG_FIELD_TYPE, "`channel_id` must be a string <txid>:<vout>")
    try:
        return ChannelId.parse(value)
    except ChannelError as exc:
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, str(exc)) from None


def _signature(body: dict[str, Any]) -> str:
    value = _field(body, "signature")
    if not isinstance(value, str):
        raise RequestError(ErrorKind.WRONG_FIELD_TYPE, "`signature` must be a z-base-32 string")
    if len(value) > 120:  # a 65-byte signature is 104 characters; longer input is refused unread
        raise RequestError(ErrorKind.FIELD_TOO_BIG, "`signature` is too long")
    return value
