"""The payment handler with fakes at its seams: every refusal charges and grants nothing; grants are
applied exactly once, across crashes between the channel's CAS and the grant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from common import channel, crypto, sighash
from common.channel import ChannelParams
from common.channel_wire import (
    PaymentError,
    PayRequest,
    Refusal,
    make_get_channel_request,
    make_open_request,
    make_pay_request,
    pay_message,
)
from common.errors import ErrorKind, TeosError
from common.tx import Transaction, TxIn, TxOut
from common.types import Dialect, UserId
from teos.payments.chain import TxOutInfo
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler, channel_ack
from teos.payments.income import FixedPrice
from teos.payments.state import ChannelStatus
from teos.payments.store import ChannelStore
from teos.storage.atomic import MemoryAtomicStore
from tests.payments.support import (
    TOWER_KEY,
    USER_SECRET,
    FakeChain,
    FakeLedger,
    make_params,
    pubkey,
    secret,
    user_id,
)

PRICE = 5_000
SLOTS = 10_000
DURATION = 4_320
TIP = 100
CONFIG = PaymentConfig(
    price=PRICE, min_funding_confirmations=3, min_blocks_before_expiry=288, claim_margin=144
)


@dataclass
class World:
    handler: PaymentHandler
    store: ChannelStore
    chain: FakeChain
    ledger: FakeLedger
    params: ChannelParams

    def snapshot(self) -> bytes | None:
        snap = self.store.get(self.params.channel_id)
        return None if snap is None else snap.raw

    def pay(
        self, nonce: int, amount: int, uid: UserId | None = None, dialect: Dialect = Dialect.RUST
    ) -> PayRequest:
        return make_pay_request(self.params, nonce, amount, uid or user_id(1), dialect, USER_SECRET)


def make_world(params: ChannelParams | None = None, open_channel: bool = True) -> World:
    params = params or make_params(value=200_000, expiry=TIP + 1_000)
    store = ChannelStore(MemoryAtomicStore())
    chain = FakeChain(tip=TIP)
    chain.fund(params, confirmations=6)
    ledger = FakeLedger(tip=TIP)
    handler = PaymentHandler(CONFIG, store, chain, ledger, FixedPrice(PRICE), TOWER_KEY, SLOTS, DURATION)
    world = World(handler, store, chain, ledger, params)
    if open_channel:
        handler.open_channel(make_open_request(params, USER_SECRET))
    return world


def refused(reason: Refusal, call: Callable[[], object]) -> PaymentError:
    with pytest.raises(PaymentError) as info:
        call()
    assert info.value.reason is reason, info.value
    assert info.value.kind is reason.kind
    return info.value


# -- opening ------------------------------------------------------------------------------------------------


def test_open_stores_the_channel_once() -> None:
    w = make_world()
    snap = w.store.get(w.params.channel_id)
    assert snap is not None and snap.state.status is ChannelStatus.OPEN and snap.state.opened_at == TIP
    again = w.handler.open_channel(make_open_request(w.params, USER_SECRET))
    assert again == snap.state and w.snapshot() == snap.raw
    other = replace(w.params, expiry=w.params.expiry + 1)
    refused(Refusal.CHANNEL_EXISTS, lambda: w.handler.open_channel(make_open_request(other, USER_SECRET)))


def _open_refusal(reason: Refusal, setup: Callable[[World], ChannelParams]) -> None:
    w = make_world(open_channel=False)
    params = setup(w)
    calls = w.chain.calls
    refused(reason, lambda: w.handler.open_channel(make_open_request(params, USER_SECRET)))
    assert w.store.all() == []
    if reason in (Refusal.BAD_PARAMETERS, Refusal.TERMS_CHANGED, Refusal.BAD_REQUEST_SIGNATURE):
        assert w.chain.calls == calls  # refused before asking bitcoind


def test_open_refusals() -> None:
    def unconfirmed(w: World) -> ChannelParams:
        w.chain.fund(w.params, confirmations=2)
        return w.params

    def wrong_script(w: World) -> ChannelParams:
        key = (w.params.channel_id.txid, w.params.channel_id.vout)
        w.chain.outputs[key] = TxOutInfo(w.params.funding_value, b"\x00\x14" + bytes(20), 6)
        return w.params

    def wrong_value(w: World) -> ChannelParams:
        key = (w.params.channel_id.txid, w.params.channel_id.vout)
        w.chain.outputs[key] = TxOutInfo(w.params.funding_value + 1, w.params.script_pubkey, 6)
        return w.params

    def missing(w: World) -> ChannelParams:
        w.chain.outputs.clear()
        return w.params

    def near(w: World) -> ChannelParams:
        p = replace(w.params, expiry=TIP + 287)
        w.chain.fund(p)
        return p

    def far(w: World) -> ChannelParams:
        p = replace(w.params, expiry=TIP + 52_561)
        w.chain.fund(p)
        return p

    _open_refusal(Refusal.FUNDING_UNCONFIRMED, unconfirmed)
    _open_refusal(Refusal.FUNDING_WRONG_SCRIPT, wrong_script)
    _open_refusal(Refusal.FUNDING_WRONG_VALUE, wrong_value)
    _open_refusal(Refusal.FUNDING_NOT_FOUND, missing)
    _open_refusal(Refusal.EXPIRY_TOO_NEAR, near)
    _open_refusal(Refusal.EXPIRY_TOO_FAR, far)
    _open_refusal(Refusal.TERMS_CHANGED, lambda w: replace(w.params, fee_rate=3000))
    _open_refusal(Refusal.BAD_PARAMETERS, lambda w: replace(w.params, change_script=b"\x6a"))
    _open_refusal(Refusal.BAD_PARAMETERS, lambda w: replace(w.params, funding_value=PRICE))


def test_open_refuses_a_request_signed_by_someone_else_or_for_another_tower() -> None:
    w = make_world(open_channel=False)
    forged = replace(make_open_request(w.params, USER_SECRET), signature=crypto.sign(b"x", secret("mallory")))
    refused(Refusal.BAD_REQUEST_SIGNATURE, lambda: w.handler.open_channel(forged))
    other_tower = make_open_request(replace(w.params, tower_key=pubkey(secret("other tower"))), USER_SECRET)
    refused(Refusal.BAD_REQUEST_SIGNATURE, lambda: w.handler.open_channel(other_tower))
    assert w.store.all() == []


def test_open_when_bitcoind_is_down() -> None:
    w = make_world(open_channel=False)
    w.chain.down = True
    with pytest.raises(TeosError) as info:
        w.handler.open_channel(make_open_request(w.params, USER_SECRET))
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE
    assert w.store.all() == []


# -- paying -------------------------------------------------------------------------------------------------


def test_a_payment_grants_registrations_and_an_ack() -> None:
    w = make_world()
    result = w.handler.pay(w.pay(1, PRICE, dialect=Dialect.PYTHON))
    assert not result.replayed and result.grant.registrations == 1
    assert (result.outcome.available_slots, result.outcome.subscription_expiry) == (SLOTS, TIP + DURATION)
    assert result.outcome.dialect is Dialect.PYTHON
    assert result.ack_message == channel_ack(result.state)
    assert (result.state.nonce, result.state.amount) == (1, PRICE)
    two = w.handler.pay(w.pay(2, 3 * PRICE, dialect=Dialect.PYTHON))
    assert two.grant.registrations == 2 and two.grant.slots == 2 * SLOTS
    assert two.outcome.available_slots == 3 * SLOTS
    assert two.outcome.subscription_expiry == TIP + 3 * DURATION
    assert two.state.registrations == 3
    assert sorted(w.ledger.applied.values()) == [1, 1]


def test_a_repeated_request_is_answered_again_and_grants_nothing() -> None:
    w = make_world()
    request = w.pay(1, PRICE)
    first = w.handler.pay(request)
    again = w.handler.pay(request)
    assert again.replayed and again.state == first.state
    assert again.outcome.available_slots == SLOTS and not again.outcome.applied_now
    assert w.ledger.applied == {(w.params.channel_id, 1): 1}


def _signed(w: World, tx: Transaction, nonce: int, amount: int, signer: bytes = USER_SECRET) -> PayRequest:
    """A request whose payment transaction is ``tx``, properly signed (by ``signer``) as it is."""
    digest = sighash.bip143_sighash(tx, 0, w.params.witness_script, w.params.funding_value)
    message = pay_message(w.params.channel_id, nonce, amount, user_id(1), Dialect.RUST, tx)
    return PayRequest(
        w.params.channel_id,
        nonce,
        amount,
        tx,
        sighash.sign(signer, digest),
        user_id(1),
        Dialect.RUST,
        crypto.sign(message, USER_SECRET),
    )


def _mutated(w: World, amount: int, change: Callable[[Transaction], Transaction]) -> Transaction:
    return change(channel.payment_tx(w.params, amount))


def _refusal_cases() -> list[tuple[str, Refusal, Callable[[World], PayRequest]]]:
    def extra_output(w: World) -> PayRequest:
        tx = _mutated(
            w, 2 * PRICE, lambda t: replace(t, outputs=(*t.outputs, TxOut(1000, b"\x00\x14" + bytes(20))))
        )
        return _signed(w, tx, 2, 2 * PRICE)

    def wrong_fee(w: World) -> PayRequest:
        def lower_change(t: Transaction) -> Transaction:
            tower, change = t.outputs
            return replace(t, outputs=(tower, TxOut(change.value - 50, change.script_pubkey)))

        return _signed(w, _mutated(w, 2 * PRICE, lower_change), 2, 2 * PRICE)

    def lock_time(w: World) -> PayRequest:
        return _signed(w, _mutated(w, 2 * PRICE, lambda t: replace(t, locktime=TIP + 500)), 2, 2 * PRICE)

    def sequence(w: World) -> PayRequest:
        def seq(t: Transaction) -> Transaction:
            (i,) = t.inputs
            return replace(t, inputs=(TxIn(i.prev_txid, i.prev_vout, b"", 0xFFFFFFFF),))

        return _signed(w, _mutated(w, 2 * PRICE, seq), 2, 2 * PRICE)

    def other_tower_output(w: World) -> PayRequest:
        def steal(t: Transaction) -> Transaction:
            tower, change = t.outputs
            return replace(t, outputs=(tower, TxOut(change.value, b"\x00\x14" + bytes(20))))

        return _signed(w, _mutated(w, 2 * PRICE, steal), 2, 2 * PRICE)

    def forged_payment(w: World) -> PayRequest:
        return _signed(w, channel.payment_tx(w.params, 2 * PRICE), 2, 2 * PRICE, signer=secret("mallory"))

    def stale_signature(w: World) -> PayRequest:
        request = w.pay(2, 2 * PRICE)
        return replace(request, payment_signature=channel.sign_payment(w.params, PRICE, USER_SECRET))

    def forged_request(w: World) -> PayRequest:
        return replace(w.pay(2, 2 * PRICE), signature=crypto.sign(b"whatever", secret("mallory")))

    def other_channel_signature(w: World) -> PayRequest:
        other = replace(w.params, expiry=w.params.expiry + 1)
        request = w.pay(2, 2 * PRICE)
        return replace(request, payment_signature=channel.sign_payment(other, 2 * PRICE, USER_SECRET))

    def funding_reorged(w: World) -> PayRequest:
        w.chain.fund(w.params, confirmations=1)
        return w.pay(2, 2 * PRICE)

    def funding_spent(w: World) -> PayRequest:
        w.chain.outputs.clear()
        return w.pay(2, 2 * PRICE)

    def expiry_near(w: World) -> PayRequest:
        w.chain.tip = w.params.expiry - 287
        return w.pay(2, 2 * PRICE)

    def wrong_dialect(w: World) -> PayRequest:
        return make_pay_request(w.params, 2, 2 * PRICE, user_id(1), Dialect.PYTHON, USER_SECRET)

    def closed(w: World) -> PayRequest:
        snap = w.store.get(w.params.channel_id)
        assert snap is not None
        assert w.store.swap(snap, replace(snap.state, status=ChannelStatus.CLOSING))
        return w.pay(2, 2 * PRICE)

    def unknown(w: World) -> PayRequest:
        return make_pay_request(make_params(vout=9), 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET)

    return [
        ("forged request signature", Refusal.BAD_REQUEST_SIGNATURE, forged_request),
        ("forged payment signature", Refusal.BAD_PAYMENT_SIGNATURE, forged_payment),
        ("stale payment signature", Refusal.BAD_PAYMENT_SIGNATURE, stale_signature),
        ("signature of another channel", Refusal.BAD_PAYMENT_SIGNATURE, other_channel_signature),
        ("stale nonce", Refusal.STALE_NONCE, lambda w: w.pay(1, 2 * PRICE)),
        ("nonce gap", Refusal.NONCE_GAP, lambda w: w.pay(3, 2 * PRICE)),
        ("amount not rising", Refusal.AMOUNT_TOO_LOW, lambda w: w.pay(2, PRICE)),
        ("amount rising by less than the price", Refusal.AMOUNT_TOO_LOW, lambda w: w.pay(2, 2 * PRICE - 1)),
        ("amount above the channel", Refusal.AMOUNT_NOT_ALLOWED, lambda w: _above_max(w)),
        ("expiry too near", Refusal.EXPIRY_TOO_NEAR, expiry_near),
        ("funding reorged to 1 confirmation", Refusal.FUNDING_UNCONFIRMED, funding_reorged),
        ("funding spent", Refusal.FUNDING_SPENT, funding_spent),
        ("another output", Refusal.EXTRA_OUTPUTS, extra_output),
        ("wrong fee", Refusal.WRONG_FEE, wrong_fee),
        ("a lock time", Refusal.LOCK_TIME, lock_time),
        ("a final sequence", Refusal.WRONG_TRANSACTION, sequence),
        ("change to another script", Refusal.WRONG_TRANSACTION, other_tower_output),
        ("user registered in the other dialect", Refusal.WRONG_DIALECT, wrong_dialect),
        ("channel closing", Refusal.CHANNEL_CLOSED, closed),
        ("unknown channel", Refusal.CHANNEL_NOT_FOUND, unknown),
    ]


def _above_max(w: World) -> PayRequest:
    amount = w.params.max_amount + PRICE
    tx = channel.payment_tx(w.params, w.params.max_amount)
    return _signed(w, tx, 2, amount)


@pytest.mark.parametrize(("name", "reason", "build"), _refusal_cases(), ids=[c[0] for c in _refusal_cases()])
def test_every_bad_payment_is_refused_and_changes_nothing(
    name: str, reason: Refusal, build: Callable[[World], PayRequest]
) -> None:
    w = make_world()
    w.handler.pay(w.pay(1, PRICE))
    request = build(w)
    before = w.snapshot()
    applied = dict(w.ledger.applied)
    users = dict(w.ledger.users)
    refused(reason, lambda: w.handler.pay(request))
    assert w.snapshot() == before
    assert w.ledger.applied == applied and w.ledger.users == users


def test_forged_requests_cost_no_bitcoind_call() -> None:
    w = make_world()
    w.handler.pay(w.pay(1, PRICE))
    calls = w.chain.calls
    for _, reason, build in _refusal_cases():
        if reason in (Refusal.BAD_REQUEST_SIGNATURE, Refusal.BAD_PAYMENT_SIGNATURE, Refusal.STALE_NONCE):
            with pytest.raises(PaymentError):
                w.handler.pay(build(w))
    assert w.chain.calls == calls


def test_bitcoind_down_during_a_payment() -> None:
    w = make_world()
    w.chain.down = True
    before = w.snapshot()
    with pytest.raises(TeosError) as info:
        w.handler.pay(w.pay(1, PRICE))
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE
    assert w.snapshot() == before and w.ledger.applied == {}


def test_the_final_payment_takes_everything() -> None:
    params = make_params(value=3 * PRICE + 400, expiry=TIP + 1_000)
    w = make_world(params)
    top = params.max_amount
    assert params.max_amount_with_change < 3 * PRICE < top  # 3 prices would leave dust change
    w.handler.pay(w.pay(1, PRICE))
    with pytest.raises(channel.ChannelError):  # an honest client cannot even build it
        w.pay(2, 3 * PRICE)
    gap = _signed(w, channel.payment_tx(params, top), 2, 3 * PRICE)
    refused(Refusal.AMOUNT_NOT_ALLOWED, lambda: w.handler.pay(gap))
    result = w.handler.pay(w.pay(2, top))
    assert result.grant.registrations == (top - PRICE) // PRICE
    assert len(channel.payment_tx(params, top).outputs) == 1


# -- grants across failures --------------------------------------------------------------------------------


def test_a_grant_lost_after_the_cas_is_applied_by_reconcile_once() -> None:
    w = make_world()
    w.ledger.fail_next_apply = True
    with pytest.raises(OSError):
        w.handler.pay(w.pay(1, PRICE))
    snap = w.store.get(w.params.channel_id)
    assert snap is not None and snap.state.nonce == 1  # the payment was accepted (the commit point)
    assert w.ledger.applied == {}
    assert w.handler.reconcile() == 1
    assert w.handler.reconcile() == 0
    assert w.ledger.applied == {(w.params.channel_id, 1): 1}


def test_a_grant_lost_after_the_cas_is_applied_by_the_retried_request() -> None:
    w = make_world()
    request = w.pay(1, PRICE)
    w.ledger.fail_next_apply = True
    with pytest.raises(OSError):
        w.handler.pay(request)
    result = w.handler.pay(request)
    assert result.replayed and result.outcome.applied_now and result.outcome.available_slots == SLOTS
    assert w.ledger.applied == {(w.params.channel_id, 1): 1}


def test_a_grant_lost_after_the_cas_is_applied_before_the_next_payment_replaces_it() -> None:
    w = make_world()
    w.ledger.fail_next_apply = True
    with pytest.raises(OSError):
        w.handler.pay(w.pay(1, PRICE, uid=user_id(1)))
    w.handler.pay(w.pay(2, 2 * PRICE, uid=user_id(2)))
    assert w.ledger.applied == {(w.params.channel_id, 1): 1, (w.params.channel_id, 2): 1}
    assert w.ledger.users[user_id(1)].slots == SLOTS and w.ledger.users[user_id(2)].slots == SLOTS


# -- reading ----------------------------------------------------------------------------------------------


def test_get_channel_needs_the_channel_key() -> None:
    w = make_world()
    w.handler.pay(w.pay(1, PRICE))
    state = w.handler.get_channel(make_get_channel_request(w.params.channel_id, USER_SECRET))
    assert (state.nonce, state.amount) == (1, PRICE)
    refused(
        Refusal.BAD_REQUEST_SIGNATURE,
        lambda: w.handler.get_channel(make_get_channel_request(w.params.channel_id, secret("mallory"))),
    )
    refused(
        Refusal.CHANNEL_NOT_FOUND,
        lambda: w.handler.get_channel(make_get_channel_request(make_params(vout=5).channel_id, USER_SECRET)),
    )


def test_a_repeat_is_answered_even_after_the_claim_froze_the_channel() -> None:
    w = make_world()
    request = w.pay(1, PRICE)
    w.handler.pay(request)
    snap = w.store.get(w.params.channel_id)
    assert snap is not None and w.store.swap(snap, replace(snap.state, status=ChannelStatus.CLOSING))
    again = w.handler.pay(request)
    assert again.replayed and again.outcome.available_slots == SLOTS
    assert w.ledger.applied == {(w.params.channel_id, 1): 1}


def test_a_new_user_on_a_full_tower_is_refused_before_anything_is_charged() -> None:
    """The Gatekeeper refuses a new user when the tower is at ``maxusers`` or in its reserve
    (RESOURCE_EXHAUSTED): the payment is refused as ``tower_full``, and the channel does not move."""
    w = make_world()

    def full(grant: object) -> None:
        raise TeosError(ErrorKind.RESOURCE_EXHAUSTED, "not accepting new users (user limit reached)")

    w.ledger.check = full  # type: ignore[method-assign]
    before = w.snapshot()
    error = refused(Refusal.TOWER_FULL, lambda: w.handler.pay(w.pay(1, PRICE)))
    assert "user limit" in error.message
    assert w.snapshot() == before and w.ledger.applied == {}
