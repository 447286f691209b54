"""The payment use cases, split like the rest of the tower's (``teos.service``) across the worker channel.

- ``PaymentCore`` runs in teosd's main process, which alone writes the database: it reads a channel, and
  opens channels and takes payments through the ``PaymentHandler`` (compare-and-swap, grant, gettxout).
- ``PaymentGateway`` runs in the API workers: it does the CPU work of a request (the signature checks of
  ``PaymentRules``, in the documented order) and signs the answers with the tower key (the terms, the
  channel acknowledgements, the registration receipts), and asks a ``PaymentBackend`` for the rest.
- ``PaymentOps`` and ``RemotePayments`` carry the backend's three calls over the worker channel
  (``teos.api.ipc``): requests travel as their canonical JSON and are parsed again on the other side by
  the same parsers; answers as the storage encodings.

A forged request costs the main process one read (the channel's state) and nothing else: the gateway
refuses it before asking for any change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from common import crypto, receipts
from common.channel import ChannelId
from common.channel_wire import (
    GetChannelRequest,
    OpenChannelRequest,
    PaymentError,
    PaymentTerms,
    PayRequest,
    Refusal,
    channel_response,
    parse_open_request,
    parse_pay_request,
    pay_response,
    payment_required_body,
    terms_response,
)
from common.errors import ErrorKind, TeosError
from common.types import Dialect, Txid, UserId
from teos.interfaces import Watching
from teos.payments.handler import GrantOutcome, PaymentHandler, PaymentRules, channel_view
from teos.payments.state import ChannelState, ChannelStatus

JsonObject = dict[str, Any]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelLookup:
    """A channel as the main process has it now (None: no such channel), with the tip it was read at."""

    state: ChannelState | None
    claim_txid: Txid | None
    tip: int


@dataclass(frozen=True)
class Paid:
    """An accepted (or repeated) payment: the channel after it, and the user's subscription after its
    grant."""

    state: ChannelState
    claim_txid: Txid | None
    registrations: int
    outcome: GrantOutcome
    replayed: bool


class PaymentBackend(Protocol):
    """What the gateway asks of the main process (``LocalPayments`` or ``RemotePayments``). The requests
    given to ``open_channel`` and ``pay`` have had their signatures checked by the gateway."""

    def lookup(self, channel_id: ChannelId) -> ChannelLookup: ...

    def open_channel(self, request: OpenChannelRequest) -> ChannelState: ...

    def pay(self, request: PayRequest) -> Paid: ...

    def tip(self) -> int: ...


# -- the main process -----------------------------------------------------------------------------------


class PaymentCore:
    """The state side (see the module docstring). It refuses a new channel while the tower holds
    ``max_unpaid_channels`` OPEN channels that have not paid yet (``PaymentConfig``)."""

    def __init__(self, handler: PaymentHandler, watching: Watching | None = None) -> None:
        self.handler = handler
        self.store = handler.store
        self.watching = watching

    def _require_watching(self) -> None:
        """No channel is opened and no receipt signed by a tower that has stopped watching the chain."""
        reason = self.watching.stopped_watching() if self.watching is not None else None
        if reason is not None:
            log.warning("payment refused: the tower is not watching the chain reason=%s", reason)
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable")

    def lookup(self, channel_id: ChannelId) -> ChannelLookup:
        snap = self.store.get(channel_id)
        claim = self.store.get_claim(channel_id) if snap is not None else None
        return ChannelLookup(
            snap.state if snap is not None else None,
            claim.record.txid if claim is not None else None,
            self.handler.tip(),
        )

    def open_channel(self, request: OpenChannelRequest, verified: bool = False) -> ChannelState:
        self._require_watching()
        if self.store.get(request.channel_id) is None:
            unpaid = sum(
                1 for s in self.store.all() if s.state.status is ChannelStatus.OPEN and s.state.amount == 0
            )
            if unpaid >= self.handler.config.max_unpaid_channels:
                raise PaymentError(
                    Refusal.TOWER_FULL,
                    f"the tower holds {unpaid} channels that have not paid yet; try again later",
                )
        return self.handler.open_channel(request, verified=verified)

    def pay(self, request: PayRequest, verified: bool = False) -> Paid:
        self._require_watching()
        result = self.handler.pay(request, verified=verified)
        claim = self.store.get_claim(request.channel_id)
        return Paid(
            result.state,
            claim.record.txid if claim is not None else None,
            result.grant.registrations,
            result.outcome,
            result.replayed,
        )


class LocalPayments:
    """``PaymentBackend`` over a ``PaymentCore`` in this process (tests, tools)."""

    def __init__(self, core: PaymentCore) -> None:
        self.core = core

    def lookup(self, channel_id: ChannelId) -> ChannelLookup:
        return self.core.lookup(channel_id)

    def open_channel(self, request: OpenChannelRequest) -> ChannelState:
        return self.core.open_channel(request, verified=True)

    def pay(self, request: PayRequest) -> Paid:
        return self.core.pay(request, verified=True)

    def tip(self) -> int:
        return self.core.handler.tip()


# -- over the worker channel ----------------------------------------------------------------------------

LookupWire = tuple[bytes | None, bytes | None, int]
PaidWire = tuple[bytes, bytes | None, int, tuple[bytes, int, int, int, int, bool], bool]


def _encode_lookup(lookup: ChannelLookup) -> LookupWire:
    return (
        lookup.state.encode() if lookup.state is not None else None,
        lookup.claim_txid.raw if lookup.claim_txid is not None else None,
        lookup.tip,
    )


def _decode_lookup(wire: LookupWire) -> ChannelLookup:
    state, claim, tip = wire
    return ChannelLookup(
        ChannelState.decode(state) if state is not None else None,
        Txid(claim) if claim is not None else None,
        int(tip),
    )


def _encode_paid(paid: Paid) -> PaidWire:
    o = paid.outcome
    outcome = (o.user_id.raw, o.dialect.code, o.available_slots, o.subscription_start,
               o.subscription_expiry, o.applied_now)  # fmt: skip
    claim = paid.claim_txid.raw if paid.claim_txid is not None else None
    return (paid.state.encode(), claim, paid.registrations, outcome, paid.replayed)


def _decode_paid(wire: PaidWire) -> Paid:
    state, claim, registrations, (user, dialect, slots, start, expiry, now), replayed = wire
    outcome = GrantOutcome(UserId(user), Dialect.from_code(dialect), slots, start, expiry, bool(now))
    return Paid(
        ChannelState.decode(state), Txid(claim) if claim is not None else None, registrations, outcome,
        bool(replayed),
    )  # fmt: skip


class PaymentOps:
    """The main process's side of the worker channel: each op takes and returns what ``marshal`` carries.
    The requests come from this tower's own workers, which checked their signatures."""

    OPS = ("pay_lookup", "pay_open", "pay_pay", "pay_tip")

    def __init__(self, core: PaymentCore) -> None:
        self.core = core

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "pay_lookup": self.lookup,
            "pay_open": self.open_channel,
            "pay_pay": self.pay,
            "pay_tip": self.core.handler.tip,
        }

    def lookup(self, channel_id: bytes) -> LookupWire:
        return _encode_lookup(self.core.lookup(ChannelId.from_raw(channel_id)))

    def open_channel(self, request_json: str) -> bytes:
        request = parse_open_request(json.loads(request_json))
        return self.core.open_channel(request, verified=True).encode()

    def pay(self, request_json: str) -> PaidWire:
        return _encode_paid(self.core.pay(parse_pay_request(json.loads(request_json)), verified=True))


class RemotePayments:
    """``PaymentBackend`` over the worker channel (``call`` is ``teos.api.ipc.CoreClient.call``)."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call

    def lookup(self, channel_id: ChannelId) -> ChannelLookup:
        return _decode_lookup(self.call("pay_lookup", channel_id.raw))

    def open_channel(self, request: OpenChannelRequest) -> ChannelState:
        return ChannelState.decode(self.call("pay_open", json.dumps(request.to_json())))

    def pay(self, request: PayRequest) -> Paid:
        return _decode_paid(self.call("pay_pay", json.dumps(request.to_json())))

    def tip(self) -> int:
        return int(self.call("pay_tip"))


# -- the workers ----------------------------------------------------------------------------------------


class PaymentGateway:
    """The request side (see the module docstring): checks, asks the backend, signs the answers."""

    def __init__(
        self,
        rules: PaymentRules,
        backend: PaymentBackend,
        terms: PaymentTerms,
        tower_secret_key: bytes,
    ) -> None:
        self.rules = rules
        self.backend = backend
        self.terms = terms
        self._secret = tower_secret_key
        self.tower_id = crypto.public_key(tower_secret_key)
        self._terms_signature = crypto.sign(terms.message(), tower_secret_key)

    # -- answers that need no state ---------------------------------------------------------------------

    def terms_body(self) -> JsonObject:
        """The signed terms, and the tower's tip height (not signed: it helps a client choose an expiry)."""
        return {
            **terms_response(self.tower_id, self.terms, self._terms_signature),
            "tip_height": self.backend.tip(),
        }

    def payment_required_body(self, dialect: Dialect) -> JsonObject:
        """The 402 answer to an unpaid ``/register``."""
        return payment_required_body(dialect, self.tower_id, self.terms, self._terms_signature)

    # -- use cases --------------------------------------------------------------------------------------

    def open_channel(self, request: OpenChannelRequest) -> JsonObject:
        self.rules.check_open(request)
        state = self.backend.open_channel(request)
        return self._channel_body(state, None)

    def get_channel(self, request: GetChannelRequest) -> JsonObject:
        lookup = self._lookup(request.channel_id)
        assert lookup.state is not None
        self.rules.check_get_channel(lookup.state, request)
        return self._channel_body(lookup.state, lookup.claim_txid)

    def pay(self, request: PayRequest) -> JsonObject:
        lookup = self._lookup(request.channel_id)
        assert lookup.state is not None
        self.rules.check_pay(lookup.state, request, lambda: lookup.tip)
        paid = self.backend.pay(request)
        o = paid.outcome
        receipt = receipts.registration_receipt(
            o.dialect, o.user_id, o.available_slots, o.subscription_start, o.subscription_expiry
        )
        view = channel_view(paid.state, paid.claim_txid)
        return pay_response(
            o.dialect,
            o.user_id,
            o.available_slots,
            o.subscription_start,
            o.subscription_expiry,
            crypto.sign(receipt, self._secret),
            paid.registrations,
            view,
            crypto.sign(view.ack_message(), self._secret),
        )

    def _lookup(self, channel_id: ChannelId) -> ChannelLookup:
        lookup = self.backend.lookup(channel_id)
        if lookup.state is None:
            raise PaymentError(Refusal.CHANNEL_NOT_FOUND, f"no channel {channel_id}")
        return lookup

    def _channel_body(self, state: ChannelState, claim_txid: Txid | None) -> JsonObject:
        view = channel_view(state, claim_txid)
        return channel_response(view, crypto.sign(view.ack_message(), self._secret))
