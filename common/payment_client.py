"""The user side of paid subscriptions (docs/PAYMENTS.md): what a client keeps per channel, and the
requests it makes, each answer checked against the tower id before it is trusted.

``ChannelRecord`` is everything a user needs to use, resume and refund a channel: the channel key (its
secret), the channel's parameters, the tower's terms, the last payment (nonce, amount, the user's
signature of it) and the tower's last acknowledgement of it (``channel_signature``, its proof of what it
was paid). ``ChannelBook`` keeps one JSON file per channel in ``<datadir>/channels/`` (mode 0600, written
atomically): ``<txid>-<vout>.json`` once funded, ``pending-<funding script hash>.json`` between choosing
the parameters and knowing the funding outpoint.

``PaymentClient`` speaks to one tower through a ``common.client.TowerClient`` (its dialect, its user key):
``terms``, ``open_channel``, ``pay`` and ``get_channel``; every signature the tower returns is checked
(``ReceiptError`` otherwise), and so is that the tower acknowledged exactly what was asked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common import crypto
from common.channel import ChannelId, ChannelParams
from common.channel_wire import (
    ChannelView,
    PaymentTerms,
    make_get_channel_request,
    make_open_request,
    make_pay_request,
)
from common.client import ReceiptError, TowerClient, check_registration, check_signed_by
from common.errors import RequestError
from common.fsutil import write_private_file
from common.http import HttpError
from common.tx import sha256
from common.types import UserId

JsonObject = dict[str, Any]
RECORD_VERSION = 1


# -- what a client keeps --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelRecord:
    """One channel as its user keeps it (see the module docstring)."""

    tower_id: UserId
    netaddr: str  # where the tower is ("host:port" or a URL)
    terms: PaymentTerms
    user_secret: bytes  # the channel key: signs requests, payments and the refund
    params: ChannelParams  # for a pending record, the channel id is a placeholder (funded = False)
    funded: bool = False
    status: str = "pending"  # "pending", then the tower's status of the channel
    nonce: int = 0
    amount: int = 0
    payment_signature: bytes = b""  # the user's signature of the payment of ``amount``
    channel_signature: str = ""  # the tower's last acknowledgement (of nonce, amount, expiry)
    registrations: int = 0

    @property
    def user_key(self) -> bytes:
        return crypto.public_key(self.user_secret).raw

    @property
    def channel_id(self) -> ChannelId:
        return self.params.channel_id

    def file_name(self) -> str:
        if not self.funded:
            return f"pending-{sha256(self.params.script_pubkey).hex()[:32]}.json"
        return f"{self.channel_id.txid.hex()}-{self.channel_id.vout}.json"

    def to_json(self) -> JsonObject:
        p = self.params
        return {
            "version": RECORD_VERSION,
            "tower_id": self.tower_id.hex(),
            "netaddr": self.netaddr,
            "terms": self.terms.to_json(),
            "user_secret": self.user_secret.hex(),
            "channel_id": str(p.channel_id) if self.funded else None,
            "funding_value": p.funding_value,
            "user_key": p.user_key.hex(),
            "tower_key": p.tower_key.hex(),
            "expiry": p.expiry,
            "change_script": p.change_script.hex(),
            "fee_rate": p.fee_rate,
            "funding_address": p.address(self.terms.network),
            "witness_script": p.witness_script.hex(),
            "status": self.status,
            "nonce": self.nonce,
            "amount": self.amount,
            "payment_signature": self.payment_signature.hex(),
            "channel_signature": self.channel_signature,
            "registrations": self.registrations,
        }

    @classmethod
    def from_json(cls, data: Any) -> ChannelRecord:
        try:
            if data["version"] != RECORD_VERSION:
                raise ValueError(f"unknown channel record version {data['version']}")
            funded = data["channel_id"] is not None
            channel_id = ChannelId.parse(data["channel_id"]) if funded else PLACEHOLDER_ID
            params = ChannelParams(
                channel_id,
                int(data["funding_value"]),
                bytes.fromhex(data["user_key"]),
                bytes.fromhex(data["tower_key"]),
                int(data["expiry"]),
                bytes.fromhex(data["change_script"]),
                int(data["fee_rate"]),
            )
            record = cls(
                tower_id=UserId.from_hex(data["tower_id"]),
                netaddr=str(data["netaddr"]),
                terms=PaymentTerms.from_json(data["terms"]),
                user_secret=bytes.fromhex(data["user_secret"]),
                params=params,
                funded=funded,
                status=str(data["status"]),
                nonce=int(data["nonce"]),
                amount=int(data["amount"]),
                payment_signature=bytes.fromhex(data["payment_signature"]),
                channel_signature=str(data["channel_signature"]),
                registrations=int(data["registrations"]),
            )
        except (KeyError, TypeError, ValueError, RequestError) as e:
            raise ValueError(f"not a channel record: {e}") from None
        if record.user_key != params.user_key:
            raise ValueError("the record's user key is not its secret's")
        return record

    def with_view(self, view: ChannelView, channel_signature: str) -> ChannelRecord:
        """The record after a checked answer of the tower (``PaymentClient`` checked it). The user's own
        payment signature is kept only while it signs the amount the tower holds."""
        return replace(
            self,
            payment_signature=self.payment_signature if view.amount == self.amount else b"",
            status=view.status,
            nonce=view.nonce,
            amount=view.amount,
            registrations=view.registrations,
            channel_signature=channel_signature,
        )


PLACEHOLDER_ID = ChannelId.from_raw(bytes(36))


class ChannelBook:
    """The channel records in ``<datadir>/channels`` (see the module docstring)."""

    def __init__(self, datadir: Path) -> None:
        self.root = datadir / "channels"

    def save(self, record: ChannelRecord) -> Path:
        path = self.root / record.file_name()
        write_private_file(path, (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode())
        if record.funded:  # the pending file of the same channel is superseded
            pending = self.root / replace(record, funded=False).file_name()
            pending.unlink(missing_ok=True)
        return path

    def load(self, path: Path) -> ChannelRecord:
        try:
            return ChannelRecord.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the channel file {path}: {e}") from None

    def get(self, channel_id: ChannelId) -> ChannelRecord | None:
        path = self.root / f"{channel_id.txid.hex()}-{channel_id.vout}.json"
        return self.load(path) if path.exists() else None

    def records(self) -> list[ChannelRecord]:
        if not self.root.is_dir():
            return []
        return [self.load(p) for p in sorted(self.root.glob("*.json"))]

    def pending(self) -> list[ChannelRecord]:
        return [r for r in self.records() if not r.funded]


# -- the requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaidRegistration:
    """A payment the tower accepted: the checked registration receipt and the channel after it."""

    receipt: JsonObject
    registrations: int
    record: ChannelRecord


class PaymentClient:
    """Paid-subscription requests to the tower ``tower_id`` through ``tower`` (see the module docstring)."""

    def __init__(self, tower: TowerClient, tower_id: UserId) -> None:
        self.tower = tower
        self.tower_id = tower_id

    def _post(self, path: str, body: JsonObject) -> JsonObject:
        status, answer = self.tower.request("POST", path, body)
        if status != 200 or not isinstance(answer, dict):
            raise HttpError(status, answer)
        return answer

    def terms(self) -> tuple[PaymentTerms, int | None]:
        """The tower's terms, once their signature recovers the tower id, and the tower's tip height if it
        said (unsigned: only a help to choose an expiry)."""
        status, answer = self.tower.request("GET", "/payment_terms")
        if status != 200 or not isinstance(answer, dict):
            raise HttpError(status, answer)
        tip = answer.get("tip_height")
        return self.check_terms(answer), tip if isinstance(tip, int) and not isinstance(tip, bool) else None

    def check_terms(self, answer: Any) -> PaymentTerms:
        """The terms of ``answer`` (``/payment_terms``, or a 402 to ``/register``), checked."""
        if not isinstance(answer, dict) or answer.get("tower_id") != self.tower_id.hex():
            raise ReceiptError("the terms are not this tower's", details=answer)
        try:
            terms = PaymentTerms.from_json(answer.get("terms"))
        except RequestError as e:
            raise ReceiptError(f"the terms cannot be read: {e.message}", details=answer) from None
        signature = answer.get("signature")
        if not isinstance(signature, str):
            raise ReceiptError("the terms are not signed", details=answer)
        check_signed_by(terms.message(), signature, self.tower_id, "terms")
        return terms

    def _check_view(self, answer: JsonObject, params: ChannelParams) -> tuple[ChannelView, str]:
        try:
            view = ChannelView.from_json(answer.get("channel"))
        except RequestError as e:
            raise ReceiptError(f"the channel state cannot be read: {e.message}", details=answer) from None
        signature = answer.get("channel_signature")
        if not isinstance(signature, str):
            raise ReceiptError("the channel state is not signed", details=answer)
        check_signed_by(view.ack_message(), signature, self.tower_id, "channel acknowledgement")
        if view.params != params:
            raise ReceiptError("the tower answered for a channel with other parameters", details=answer)
        return view, signature

    def open_channel(self, record: ChannelRecord) -> ChannelRecord:
        request = make_open_request(record.params, record.user_secret)
        view, signature = self._check_view(self._post("/open_channel", request.to_json()), record.params)
        return record.with_view(view, signature)

    def get_channel(self, record: ChannelRecord) -> ChannelRecord:
        """The channel as the tower has it now (a client that lost its state resumes from it)."""
        request = make_get_channel_request(record.channel_id, record.user_secret)
        view, signature = self._check_view(self._post("/get_channel", request.to_json()), record.params)
        return record.with_view(view, signature)

    def pay(self, record: ChannelRecord, registrations: int = 1) -> PaidRegistration:
        """Pays ``registrations`` times the price for this client's user id (at the record's next nonce)."""
        params = record.params
        amount = record.amount + registrations * record.terms.price
        if amount > params.max_amount:
            raise ValueError(f"the channel can pay at most {params.max_amount} sat; {amount} would be needed")
        if amount > params.max_amount_with_change:
            amount = params.max_amount  # its change would be dust: the last payment takes everything
        nonce = record.nonce + 1
        request = make_pay_request(
            record.params, nonce, amount, self.tower.user_id, self.tower.dialect, record.user_secret
        )
        answer = self._post("/pay", request.to_json())
        receipt = check_registration(answer, self.tower.dialect, self.tower.user_id, self.tower_id)
        view, signature = self._check_view(answer, record.params)
        if (view.nonce, view.amount) != (nonce, amount):
            raise ReceiptError("the tower acknowledged another payment than the one made", details=answer)
        bought = answer.get("registrations")
        if not isinstance(bought, int) or isinstance(bought, bool):
            raise ReceiptError("the answer does not say what the payment bought", details=answer)
        paid = replace(record.with_view(view, signature), payment_signature=request.payment_signature)
        return PaidRegistration(receipt, bought, paid)

    def pay_retrying(
        self, record: ChannelRecord, registrations: int = 1, attempts: int = 3
    ) -> PaidRegistration:
        """``pay``; when another payment on the channel won the race (``stale_nonce``), reads the channel
        (``get_channel``) and pays again at the next nonce, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            try:
                return self.pay(record, registrations)
            except HttpError as e:
                stale = isinstance(e.body, dict) and e.body.get("reason") == "stale_nonce"
                if not stale or attempt == attempts:
                    raise
                record = self.get_channel(record)
        raise AssertionError("unreachable")  # pragma: no cover
