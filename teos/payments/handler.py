"""The payment handler: opens channels, validates payments, and grants what they buy exactly once.

No HTTP here: the API parses requests with ``common.channel_wire`` and the use cases
(``teos.payments.service``) call these; every refusal is a ``PaymentError`` whose reason names the check,
and a refused request has changed nothing (no state written, no grant applied). The checks that need
neither the store nor bitcoind are ``PaymentRules``: the API workers run them (the signatures are the
CPU work of a request), and the ``PaymentHandler`` in the main process runs them again against the state
it swaps from, without the signatures (``verified=True``).

A payment is accepted in this order, cheapest checks first so that a forged request costs the tower no
bitcoind call: the channel exists; the request is signed by the channel's key; it is OPEN; the nonce is
the next one; the amount rises by at least the price (the income validator says by how many
registrations); the expiry is far enough; the payment transaction is exactly the one the channel's
parameters give for that amount (one input, the two outputs, the fixed fee, no lock time); the user's
signature signs it; the grant can be applied to that user (its dialect; a new user only while the tower
takes new users); the funding output is still unspent and confirmed enough (``gettxout``). Then the state
moves by compare-and-swap from the snapshot all of that was checked against, so of two concurrent
payments on one channel at most one is accepted.

Grants and atomicity. The accepted state carries the grant it pays for (``last_grant``): the CAS is the
commit point of the payment, and the grant is applied after it through ``GrantLedger.apply``, which is
idempotent per (channel, nonce) (the Gatekeeper writes the marker ``g|channel|nonce`` in the same batch as
the user record: ``Gatekeeper.apply_grant``, through ``teos.payments.ledger``). Three rules make "slots
are never granted twice, and never lost":

1. before a payment replaces ``last_grant`` (its CAS), the handler applies the grant it replaces;
2. after its CAS it applies its own grant, and answers only once that is done;
3. at start, ``reconcile`` applies every channel's ``last_grant`` (a crash between 2's CAS and apply).

A request that repeats the last accepted payment exactly (a client that lost the answer) is answered again
from the stored state, and grants nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from common import channel
from common.channel import ChannelError, ChannelId
from common.channel_wire import (
    ChannelView,
    GetChannelRequest,
    OpenChannelRequest,
    PaymentError,
    PayRequest,
    Refusal,
    ack_message,
    get_channel_message,
)
from common.crypto import verify
from common.errors import ErrorKind, TeosError
from common.types import Dialect, Txid, UserId
from teos.payments.chain import ChainUnavailable, FundingChain, TxOutInfo
from teos.payments.config import PaymentConfig
from teos.payments.income import IncomeValidator
from teos.payments.state import ChannelState, ChannelStatus, Grant
from teos.payments.store import ChannelStore, Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrantOutcome:
    """The user's subscription after a grant (what the registration receipt is made of)."""

    user_id: UserId
    dialect: Dialect
    available_slots: int
    subscription_start: int
    subscription_expiry: int
    applied_now: bool  # False: this grant had been applied before (an idempotent repeat)


class GrantLedger(Protocol):
    """What the handler needs from the Gatekeeper (``teos.payments.ledger.GatekeeperLedger`` over it)."""

    def check(self, grant: Grant) -> None:
        """Raises a TeosError if ``grant`` would be refused now (the user is registered in the other
        dialect: REGISTRATION_WRONG_FIELD_FORMAT). Called before the payment is accepted."""
        ...

    def apply(self, grant: Grant) -> GrantOutcome:
        """Adds ``grant.slots`` to the user (creating it at the tip if new) and extends its expiry by
        ``grant.duration`` from max(expiry, tip), unless the grant (channel, nonce) was applied before;
        durable on return, and total: it never refuses (it caps at 2^32-1 and keeps the user's dialect)."""
        ...


@dataclass(frozen=True)
class PaymentResult:
    state: ChannelState
    grant: Grant
    outcome: GrantOutcome
    replayed: bool  # the request repeated the last accepted payment

    @property
    def ack_message(self) -> bytes:
        """What the tower signs (with its tower key) to acknowledge the channel's new amount."""
        return channel_ack(self.state)


def channel_ack(state: ChannelState) -> bytes:
    return ack_message(state.channel_id, state.nonce, state.amount, state.params.expiry)


def channel_view(state: ChannelState, claim_txid: Txid | None = None) -> ChannelView:
    """What the user is shown of its channel (the API signs ``view.ack_message()`` with the tower key)."""
    return ChannelView(
        state.params,
        state.opened_at,
        state.status.name.lower(),
        state.nonce,
        state.amount,
        state.registrations,
        claim_txid,
    )


def _refuse(reason: Refusal, message: str) -> PaymentError:
    return PaymentError(reason, message)


class PaymentRules:
    """The checks that need neither the channel store nor bitcoind: the parameters of a channel, who signed
    a request, whether a payment is the next one, raises the amount enough and is exactly the transaction
    the channel's parameters give. The API workers run them (the CPU work of a request: ECDSA), and the
    main process runs them again against the state it swaps from, skipping only the two signature checks
    its worker already made (``verify_signatures=False``)."""

    def __init__(
        self,
        config: PaymentConfig,
        income: IncomeValidator,
        tower_key: bytes,
        subscription_slots: int,
        subscription_duration: int,
    ) -> None:
        self.config = config
        self.income = income
        self.tower_key = tower_key
        self.subscription_slots = subscription_slots
        self.subscription_duration = subscription_duration

    # -- open ------------------------------------------------------------------------------------------

    def check_open(self, request: OpenChannelRequest, verify_signature: bool = True) -> channel.ChannelParams:
        """The channel's parameters, once they can make a channel on this tower and (unless the caller
        checked it already) the request is signed by ``user_key``."""
        cfg = self.config
        params = request.params(self.tower_key)
        try:
            params.validate()
        except ChannelError as exc:
            raise _refuse(Refusal.BAD_PARAMETERS, str(exc)) from None
        if params.fee_rate != cfg.fee_rate:
            raise _refuse(
                Refusal.TERMS_CHANGED, f"payments on this tower use a fee rate of {cfg.fee_rate} sat/kvB"
            )
        if params.max_amount < self.income.price:
            raise _refuse(Refusal.BAD_PARAMETERS, "the channel cannot pay for a single registration")
        if verify_signature and not request.signed_by_user(self.tower_key):
            raise _refuse(Refusal.BAD_REQUEST_SIGNATURE, "the request is not signed by user_key")
        return params

    def check_window(self, params: channel.ChannelParams, tip: int) -> None:
        """A new channel's expiry must leave room for payments and not lock the tower in for too long."""
        cfg = self.config
        if params.expiry - tip < cfg.min_blocks_before_expiry:
            raise _refuse(
                Refusal.EXPIRY_TOO_NEAR,
                f"expiry must be at least {cfg.min_blocks_before_expiry} blocks above the tip ({tip})",
            )
        if params.expiry - tip > cfg.max_channel_blocks:
            raise _refuse(
                Refusal.EXPIRY_TOO_FAR,
                f"expiry must be at most {cfg.max_channel_blocks} blocks above the tip ({tip})",
            )

    # -- read ------------------------------------------------------------------------------------------

    @staticmethod
    def check_get_channel(state: ChannelState, request: GetChannelRequest) -> None:
        if not verify(
            get_channel_message(request.channel_id), request.signature, UserId(state.params.user_key)
        ):
            raise _refuse(
                Refusal.BAD_REQUEST_SIGNATURE, "the request is not signed by the channel's user key"
            )

    # -- pay -------------------------------------------------------------------------------------------

    def check_pay(
        self,
        state: ChannelState,
        request: PayRequest,
        tip: Callable[[], int],
        verify_signatures: bool = True,
    ) -> Grant | None:
        """Steps 2 to 6 of docs/PAYMENTS.md §6 against ``state``, in that order: the grant the payment
        buys, or None when the request repeats the last accepted payment exactly. ``tip`` is asked only
        once the cheap checks passed (it may need bitcoind)."""
        params = state.params
        if verify_signatures and not verify(request.message(), request.signature, UserId(params.user_key)):
            raise _refuse(
                Refusal.BAD_REQUEST_SIGNATURE, "the request is not signed by the channel's user key"
            )
        if is_repeat(state, request):  # answered again even once the channel is closing
            return None
        if state.status is not ChannelStatus.OPEN:
            raise _refuse(Refusal.CHANNEL_CLOSED, f"the channel is {state.status.name.lower()}")
        if request.nonce <= state.nonce:
            raise _refuse(
                Refusal.STALE_NONCE, f"nonce {request.nonce} is used; the channel is at {state.nonce}"
            )
        if request.nonce != state.nonce + 1:
            raise _refuse(Refusal.NONCE_GAP, f"the next nonce is {state.nonce + 1}")
        registrations = self.income.registrations_for(state.amount, request.amount)
        if registrations < 1:
            raise _refuse(
                Refusal.AMOUNT_TOO_LOW,
                f"amount must rise by at least the price ({self.income.price} sat) above {state.amount}",
            )
        if params.expiry - tip() < self.config.min_blocks_before_expiry:
            raise _refuse(
                Refusal.EXPIRY_TOO_NEAR,
                f"the channel expires at {params.expiry}; payments stop "
                f"{self.config.min_blocks_before_expiry} blocks before",
            )
        check_transaction(params, request)
        if verify_signatures and not channel.verify_payment_signature(
            params, request.amount, request.payment_signature
        ):
            raise _refuse(Refusal.BAD_PAYMENT_SIGNATURE, "payment_signature does not sign this payment")
        return Grant(
            params.channel_id,
            request.nonce,
            request.user_id,
            request.dialect,
            registrations,
            registrations * self.subscription_slots,
            registrations * self.subscription_duration,
        )


def is_repeat(state: ChannelState, request: PayRequest) -> bool:
    """``request`` repeats the channel's last accepted payment exactly (a client that lost the answer)."""
    g = state.last_grant
    return (
        g is not None
        and request.nonce == state.nonce
        and request.amount == state.amount
        and request.payment_signature == state.user_signature
        and request.user_id == g.user_id
        and request.dialect is g.dialect
    )


def check_transaction(params: channel.ChannelParams, request: PayRequest) -> None:
    """The request's transaction must be exactly the payment of ``request.amount``; each way it can
    differ gets its own reason."""
    try:
        expected = channel.payment_tx(params, request.amount)
    except ChannelError as exc:
        raise _refuse(Refusal.AMOUNT_NOT_ALLOWED, str(exc)) from None
    tx = request.payment_tx
    if tx.locktime != expected.locktime:
        raise _refuse(Refusal.LOCK_TIME, f"the payment must have nLockTime 0, not {tx.locktime}")
    if len(tx.outputs) > len(expected.outputs):
        raise _refuse(
            Refusal.EXTRA_OUTPUTS,
            f"the payment has {len(tx.outputs)} outputs; it pays the tower and the change only",
        )
    if [o.script_pubkey for o in tx.outputs] == [o.script_pubkey for o in expected.outputs]:
        paid_fee = params.funding_value - sum(o.value for o in tx.outputs)
        if tx.outputs[0].value == request.amount and paid_fee != params.funding_value - sum(
            o.value for o in expected.outputs
        ):
            raise _refuse(
                Refusal.WRONG_FEE,
                f"the payment's fee must be {params.payment_fee(len(expected.outputs) == 2)} sat "
                f"({params.fee_rate} sat/kvB), not {paid_fee}",
            )
    if tx.stripped != expected.stripped or tx.has_witness:
        raise _refuse(
            Refusal.WRONG_TRANSACTION,
            f"payment_tx is not the unsigned payment of {request.amount} sat "
            f"(expected {expected.stripped.hex()})",
        )


class PaymentHandler:
    """Opening channels and taking payments (see the module docstring).

    ``verified=True`` (``open_channel``, ``pay``) says that the caller, an API worker, already checked
    the request's signatures with ``PaymentRules``; everything else is checked again here, against the
    state the compare-and-swap starts from."""

    def __init__(
        self,
        config: PaymentConfig,
        store: ChannelStore,
        chain: FundingChain,
        ledger: GrantLedger,
        income: IncomeValidator,
        tower_key: bytes,
        subscription_slots: int,
        subscription_duration: int,
    ) -> None:
        self.config = config
        self.store = store
        self.chain = chain
        self.ledger = ledger
        self.income = income
        self.tower_key = tower_key
        self.rules = PaymentRules(config, income, tower_key, subscription_slots, subscription_duration)

    # -- start -----------------------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Applies every channel's last grant (idempotent); returns how many were applied only now."""
        applied = 0
        for snap in self.store.all():
            grant = snap.state.last_grant
            if grant is not None and self.ledger.apply(grant).applied_now:
                applied += 1
                log.warning(
                    "payment grant applied at start channel=%s nonce=%d user_id=%s",
                    grant.channel_id,
                    grant.nonce,
                    grant.user_id,
                )
        return applied

    # -- chain -----------------------------------------------------------------------------------------

    def tip(self) -> int:
        try:
            return self.chain.tip_height()
        except ChainUnavailable as exc:
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable") from exc

    def _funding(self, channel_id: ChannelId) -> TxOutInfo | None:
        try:
            return self.chain.get_tx_out(channel_id.txid, channel_id.vout)
        except ChainUnavailable as exc:
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable") from exc

    def _check_funding(
        self, state_params: channel.ChannelParams, out: TxOutInfo | None, opening: bool
    ) -> None:
        cid = state_params.channel_id
        if out is None:
            if opening:
                raise _refuse(Refusal.FUNDING_NOT_FOUND, f"funding output {cid} does not exist or is spent")
            raise _refuse(Refusal.FUNDING_SPENT, f"funding output {cid} is spent")
        if out.script_pubkey != state_params.script_pubkey:
            raise _refuse(
                Refusal.FUNDING_WRONG_SCRIPT,
                f"funding output {cid} does not pay to the channel's script",
            )
        if out.value != state_params.funding_value:
            raise _refuse(
                Refusal.FUNDING_WRONG_VALUE,
                f"funding output {cid} holds {out.value} sat, not {state_params.funding_value}",
            )
        if out.confirmations < self.config.min_funding_confirmations:
            raise _refuse(
                Refusal.FUNDING_UNCONFIRMED,
                f"funding output {cid} has {out.confirmations} confirmations; "
                f"{self.config.min_funding_confirmations} are required",
            )

    # -- open ------------------------------------------------------------------------------------------

    def open_channel(self, request: OpenChannelRequest, verified: bool = False) -> ChannelState:
        """Checks the parameters and the funding output, and stores the channel (idempotent: opening the
        same channel again returns its current state)."""
        params = self.rules.check_open(request, verify_signature=not verified)
        existing = self.store.get(params.channel_id)
        if existing is not None:
            return self._existing(existing, params)
        tip = self.tip()
        self.rules.check_window(params, tip)
        self._check_funding(params, self._funding(params.channel_id), opening=True)
        state = ChannelState(params, opened_at=tip)
        if not self.store.create(state):
            raced = self.store.get(params.channel_id)
            if raced is None:  # created and forgotten in between: cannot happen to a live channel
                raise _refuse(Refusal.CHANNEL_EXISTS, f"{params.channel_id} was closed")
            return self._existing(raced, params)
        log.info(
            "channel opened channel=%s value=%d expiry=%d tip=%d",
            params.channel_id,
            params.funding_value,
            params.expiry,
            tip,
        )
        return state

    def _existing(self, snap: Snapshot, params: channel.ChannelParams) -> ChannelState:
        if snap.state.params != params:
            raise _refuse(Refusal.CHANNEL_EXISTS, f"{params.channel_id} is a channel with other parameters")
        return snap.state

    # -- read ------------------------------------------------------------------------------------------

    def get_channel(self, request: GetChannelRequest) -> ChannelState:
        snap = self.snapshot(request.channel_id)
        self.rules.check_get_channel(snap.state, request)
        return snap.state

    def snapshot(self, channel_id: ChannelId) -> Snapshot:
        snap = self.store.get(channel_id)
        if snap is None:
            raise _refuse(Refusal.CHANNEL_NOT_FOUND, f"no channel {channel_id}")
        return snap

    # -- pay -------------------------------------------------------------------------------------------

    def pay(self, request: PayRequest, verified: bool = False) -> PaymentResult:
        """Accepts ``request`` or raises (see the module docstring for the checks and their order)."""
        snap = self.snapshot(request.channel_id)
        state = snap.state
        grant = self.rules.check_pay(state, request, self.tip, verify_signatures=not verified)
        if grant is None:
            assert state.last_grant is not None
            return PaymentResult(state, state.last_grant, self.ledger.apply(state.last_grant), replayed=True)
        try:
            self.ledger.check(grant)
        except TeosError as exc:
            if exc.kind is ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT and not isinstance(exc, PaymentError):
                raise _refuse(Refusal.WRONG_DIALECT, exc.message) from None
            if exc.kind is ErrorKind.RESOURCE_EXHAUSTED and not isinstance(exc, PaymentError):
                raise _refuse(Refusal.TOWER_FULL, exc.message) from None
            raise
        params = state.params
        self._check_funding(params, self._funding(params.channel_id), opening=False)
        if state.last_grant is not None:
            self.ledger.apply(state.last_grant)  # rule 1: never overwrite a grant that was not applied
        new_state = state.with_payment(request.nonce, request.amount, request.payment_signature, grant)
        if not self.store.swap(snap, new_state):
            raise _refuse(Refusal.STALE_NONCE, "another payment on this channel was accepted first")
        outcome = self.ledger.apply(grant)  # rule 2
        log.info(
            "payment accepted channel=%s nonce=%d amount=%d registrations=%d user_id=%s",
            params.channel_id,
            request.nonce,
            request.amount,
            grant.registrations,
            request.user_id,
        )
        return PaymentResult(new_state, grant, outcome, replayed=False)
