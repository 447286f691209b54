"""Claims: the pure state machine (tables, and a property test against a simulated chain with reorgs),
the Claimer over a store, CPFP children and the operator's totals."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import channel, script, sighash
from common.channel import ChannelError
from common.channel_wire import PaymentError, Refusal, make_open_request, make_pay_request
from common.types import Dialect, Txid
from teos.payments.claims import (
    Action,
    ActionKind,
    BlockConnected,
    BlockDisconnected,
    BroadcastResult,
    Claimer,
    ClaimPolicy,
    advance,
    at_risk,
    begin,
    cpfp_child,
    summarize,
    totals,
)
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.state import ChannelStatus, ClaimRecord, ClaimStatus
from teos.payments.store import ChannelStore
from teos.payments.tower_key import TowerPaymentKey, derive_payment_secret
from teos.storage.atomic import MemoryAtomicStore
from tests.payments.support import USER_SECRET, FakeChain, FakeLedger, make_params, secret, user_id

POLICY = ClaimPolicy(
    fee_rate=2000, rebroadcast_blocks=3, bump_margin=10, max_bump_fee_rate=20_000, confirmations=6
)
CLAIM_TXID = Txid(hashlib.sha256(b"claim").digest())
REFUND_TXID = Txid(hashlib.sha256(b"refund").digest())


def record(deadline: int = 200, tip: int = 100) -> ClaimRecord:
    return ClaimRecord(make_params().channel_id, 5000, CLAIM_TXID, b"", deadline, started_at=tip, tip=tip)


def kinds(actions: list[Action]) -> list[ActionKind]:
    return [a.kind for a in actions]


# -- the machine, step by step --------------------------------------------------------------------------


def test_a_claim_confirms_and_completes() -> None:
    r = record()
    assert kinds(begin(r)) == [ActionKind.BROADCAST]
    r, todo = advance(r, BroadcastResult(100, accepted=True), POLICY)
    assert r.status is ClaimStatus.BROADCAST and r.last_broadcast == 100 and todo == []
    r, todo = advance(r, BlockConnected(101, None), POLICY)
    assert todo == []  # broadcast one block ago
    r, todo = advance(r, BlockConnected(102, None), POLICY)
    r, todo = advance(r, BlockConnected(103, None), POLICY)
    assert kinds(todo) == [ActionKind.BROADCAST]  # rebroadcast after 3 blocks
    r, _ = advance(r, BroadcastResult(103, accepted=True), POLICY)
    r, todo = advance(r, BlockConnected(104, CLAIM_TXID), POLICY)
    assert r.status is ClaimStatus.CONFIRMED and r.confirmed_height == 104 and todo == []
    for h in range(105, 109):
        r, _ = advance(r, BlockConnected(h, None), POLICY)
    assert r.status is ClaimStatus.CONFIRMED
    r, _ = advance(r, BlockConnected(109, None), POLICY)
    assert r.status is ClaimStatus.COMPLETE and r.terminal
    assert advance(r, BlockDisconnected(109), POLICY) == (r, [])  # terminal: nothing moves it


def test_a_reorged_claim_is_broadcast_again_and_confirms_again() -> None:
    r = replace(record(), status=ClaimStatus.BROADCAST, last_broadcast=100)
    r, _ = advance(r, BlockConnected(101, CLAIM_TXID), POLICY)
    r, _ = advance(r, BlockConnected(102, None), POLICY)
    r, todo = advance(r, BlockDisconnected(102), POLICY)
    assert r.status is ClaimStatus.CONFIRMED and todo == []  # a block above the claim went away
    r, todo = advance(r, BlockDisconnected(101), POLICY)
    assert r.status is ClaimStatus.BROADCAST and r.confirmed_height == 0
    assert kinds(todo) == [ActionKind.BROADCAST]
    r, _ = advance(r, BlockConnected(101, None), POLICY)
    r, _ = advance(r, BlockConnected(102, CLAIM_TXID), POLICY)
    assert r.status is ClaimStatus.CONFIRMED and r.confirmed_height == 102


def test_a_refund_conflicts_and_may_be_reorged_away() -> None:
    r = replace(record(deadline=100), status=ClaimStatus.BROADCAST, last_broadcast=100)
    r, _ = advance(r, BlockConnected(101, REFUND_TXID), POLICY)
    assert r.status is ClaimStatus.CONFLICTED and r.conflict_txid == REFUND_TXID
    assert at_risk(r, POLICY)
    r, todo = advance(r, BlockDisconnected(101), POLICY)
    assert r.status is ClaimStatus.BROADCAST and kinds(todo) == [ActionKind.BROADCAST]
    for h in range(101, 107):
        r, _ = advance(r, BlockConnected(h, REFUND_TXID if h == 101 else None), POLICY)
    assert r.status is ClaimStatus.LOST and r.terminal


def test_near_the_deadline_every_block_rebroadcasts_and_bumps() -> None:
    r = replace(record(deadline=120), status=ClaimStatus.BROADCAST, last_broadcast=100, tip=100)
    r, todo = advance(r, BlockConnected(109, None), POLICY)
    assert kinds(todo) == [ActionKind.BROADCAST]  # 11 blocks left: not urgent yet
    rates = []
    for h in range(110, 116):
        r, todo = advance(r, BlockConnected(h, None), POLICY)
        assert kinds(todo)[0] is ActionKind.BROADCAST
        rates += [a.fee_rate for a in todo if a.kind is ActionKind.BUMP]
    assert rates == [4000, 8000, 16000, 20000]  # doubling, capped, then no more bumps
    assert at_risk(r, POLICY)
    r, todo = advance(r, BlockConnected(125, None), POLICY)  # past the deadline: still trying
    assert kinds(todo) == [ActionKind.BROADCAST]


def test_a_refused_broadcast_is_retried_at_the_next_block() -> None:
    r = record()
    r, _ = advance(r, BroadcastResult(100, accepted=False), POLICY)
    assert r.status is ClaimStatus.PENDING
    r, todo = advance(r, BlockConnected(103, None), POLICY)
    assert kinds(todo) == [ActionKind.BROADCAST]


# -- the machine against a simulated chain ------------------------------------------------------------------

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("mine"), st.sampled_from([None, "claim", "refund"])),
        st.tuples(st.just("reorg"), st.integers(min_value=1, max_value=5)),
        st.tuples(st.just("broadcast"), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_the_machine_follows_the_best_chain(events: list[tuple[str, object]]) -> None:
    """Blocks are mined (holding the claim, a refund, or neither: at most one spend of the funding output
    in the chain) and reorged out (fewer blocks deep than ``confirmations``, so a terminal state is never
    contradicted). After every event the record must say what the chain says."""
    base = 100
    chain: list[str | None] = []  # chain[i] is what block base+1+i spends the funding output with
    r = record(deadline=base + 30, tip=base)
    for kind, arg in events:
        if kind == "mine":
            spend = arg if not any(chain) else None
            chain.append(spend)  # type: ignore[arg-type]
            txid = {None: None, "claim": CLAIM_TXID, "refund": REFUND_TXID}[spend]  # type: ignore[index]
            r, _ = advance(r, BlockConnected(base + len(chain), txid), POLICY)
        elif kind == "reorg":
            depth = min(int(arg), len(chain), POLICY.confirmations - 1)  # type: ignore[call-overload]
            spent_at = next((i for i, s in enumerate(chain) if s), None)
            if spent_at is not None and len(chain) - spent_at >= POLICY.confirmations:
                depth = 0  # never reorg an irrevocable spend
            for _ in range(depth):
                r, _ = advance(r, BlockDisconnected(base + len(chain)), POLICY)
                chain.pop()
        else:
            r, _ = advance(r, BroadcastResult(base + len(chain), accepted=bool(arg)), POLICY)
        spent = [(i, s) for i, s in enumerate(chain) if s]
        if not spent:
            assert r.status in (ClaimStatus.PENDING, ClaimStatus.BROADCAST), (chain, r)
            continue
        (i, s), depth_now = spent[0], len(chain) - spent[0][0]
        deep = depth_now >= POLICY.confirmations
        if s == "claim":
            assert r.status is (ClaimStatus.COMPLETE if deep else ClaimStatus.CONFIRMED), (chain, r)
            assert r.confirmed_height == base + 1 + i
        else:
            assert r.status is (ClaimStatus.LOST if deep else ClaimStatus.CONFLICTED), (chain, r)
            assert r.conflict_height == base + 1 + i


# -- the Claimer over a store -------------------------------------------------------------------------------

PRICE = 5_000
CONFIG = PaymentConfig(
    price=PRICE, min_funding_confirmations=1, min_blocks_before_expiry=20, claim_margin=10, bump_margin=5,
    rebroadcast_blocks=2, claim_confirmations=3,
)  # fmt: skip
TOWER = TowerPaymentKey.from_tower_secret(secret("tower identity"))


def setup_paid_channel(tip: int = 100, expiry: int = 150) -> tuple[PaymentHandler, Claimer, FakeChain]:
    params = make_params(value=100_000, expiry=expiry, tower_key=TOWER.public_key)
    store = ChannelStore(MemoryAtomicStore())
    chain = FakeChain(tip=tip)
    chain.fund(params)
    handler = PaymentHandler(
        CONFIG, store, chain, FakeLedger(tip=tip), FixedPrice(PRICE), TOWER.public_key, 10, 10
    )
    handler.open_channel(make_open_request(params, USER_SECRET))
    handler.pay(make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    handler.pay(make_pay_request(params, 2, 2 * PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    return handler, Claimer(CONFIG, store, TOWER), chain


def test_claims_are_due_within_the_margin_and_freeze_the_channel() -> None:
    handler, claimer, _ = setup_paid_channel()
    (snap,) = claimer.store.all()
    params = snap.state.params
    assert claimer.due(139) == []
    (due,) = claimer.due(140)
    rec = claimer.start_claim(due.channel_id, 140)
    assert rec.amount == 2 * PRICE and rec.deadline == params.expiry and rec.status is ClaimStatus.PENDING
    tx = claimer.claim_transaction(rec)
    assert tx.txid == rec.txid == channel.payment_tx(params, 2 * PRICE).txid
    assert tx.inputs[0].witness[0] == snap.state.user_signature
    assert claimer.start_claim(due.channel_id, 141) == rec  # idempotent
    with pytest.raises(PaymentError) as info:
        handler.pay(make_pay_request(params, 3, 3 * PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    assert info.value.reason is Refusal.CHANNEL_CLOSED
    assert claimer.due(145) == []


def test_recover_claims_at_once_after_downtime_and_rebuilds_lost_records() -> None:
    _, claimer, _ = setup_paid_channel()
    # Down until past the margin: the claim is decided on recovery.
    ((rec, todo),) = claimer.recover(147)
    assert rec.started_at == 147 and kinds(todo) == [ActionKind.BROADCAST]
    # A crash between the CAS to CLOSING and the claim record: recover writes the record.
    claimer.store.atomic.delete(b"k" + rec.channel_id.raw)
    ((again, _),) = claimer.recover(148)
    assert again.txid == rec.txid


def test_a_claim_confirmed_deep_closes_the_channel_as_claimed() -> None:
    _, claimer, _ = setup_paid_channel()
    (due,) = claimer.due(140)
    rec = claimer.start_claim(due.channel_id, 140)
    claimer.on_event(rec.channel_id, BroadcastResult(140, True))
    assert claimer.on_block_connected(141, {rec.channel_id: rec.txid}) == {}
    claimer.on_block_connected(142, {})
    snap = claimer.store.get(rec.channel_id)
    assert snap is not None and snap.state.status is ChannelStatus.CLOSING
    claimer.on_block_connected(143, {})
    snap = claimer.store.get(rec.channel_id)
    claim = claimer.store.get_claim(rec.channel_id)
    assert snap is not None and snap.state.status is ChannelStatus.CLAIMED
    assert claim is not None and claim.record.status is ClaimStatus.COMPLETE
    s = summarize(snap.state, claim.record, 143, CONFIG)
    assert (s.claimed, s.unclaimed, s.at_risk) == (2 * PRICE, 0, False)


def test_a_reorg_of_the_claim_asks_for_a_rebroadcast_through_the_claimer() -> None:
    _, claimer, _ = setup_paid_channel()
    rec = claimer.start_claim(claimer.due(140)[0].channel_id, 140)
    claimer.on_event(rec.channel_id, BroadcastResult(140, True))
    claimer.on_block_connected(141, {rec.channel_id: rec.txid})
    assert claimer.on_block_disconnected(141) == {rec.channel_id: [Action(ActionKind.BROADCAST)]}
    claim = claimer.store.get_claim(rec.channel_id)
    assert claim is not None and claim.record.status is ClaimStatus.BROADCAST


def test_a_refund_winning_closes_the_channel_as_refunded() -> None:
    _, claimer, _ = setup_paid_channel()
    rec = claimer.start_claim(claimer.due(140)[0].channel_id, 140)
    for h, spend in ((151, REFUND_TXID), (152, None), (153, None)):
        claimer.on_block_connected(h, {rec.channel_id: spend} if spend else {})
    snap = claimer.store.get(rec.channel_id)
    assert snap is not None and snap.state.status is ChannelStatus.REFUNDED
    claim = claimer.store.get_claim(rec.channel_id)
    assert claim is not None
    t = totals([summarize(snap.state, claim.record, 153, CONFIG)], {rec.channel_id: claim.record})
    assert (t.earned, t.claimed, t.lost, t.at_risk) == (2 * PRICE, 0, 2 * PRICE, 0)


def test_an_unpaid_channel_is_marked_at_expiry_and_never_claimed() -> None:
    params = make_params(value=100_000, expiry=150, tower_key=TOWER.public_key)
    store = ChannelStore(MemoryAtomicStore())
    chain = FakeChain(tip=100)
    chain.fund(params)
    handler = PaymentHandler(CONFIG, store, chain, FakeLedger(), FixedPrice(PRICE), TOWER.public_key, 10, 10)
    handler.open_channel(make_open_request(params, USER_SECRET))
    claimer = Claimer(CONFIG, store, TOWER)
    assert claimer.due(149) == []
    with pytest.raises(ChannelError):
        claimer.start_claim(params.channel_id, 149)
    claimer.on_block_connected(150, {})
    snap = store.get(params.channel_id)
    assert snap is not None and snap.state.status is ChannelStatus.UNPAID


def test_at_risk_totals_before_a_claim() -> None:
    _, claimer, _ = setup_paid_channel()
    (snap,) = claimer.store.all()
    assert not summarize(snap.state, None, 139, CONFIG).at_risk
    s = summarize(snap.state, None, 141, CONFIG)
    assert s.at_risk and s.unclaimed == 2 * PRICE and s.blocks_to_expiry == 9
    assert totals([s], {}).at_risk == 2 * PRICE


# -- CPFP ---------------------------------------------------------------------------------------------------


def test_cpfp_child_pays_for_the_package() -> None:
    params = make_params(value=100_000, expiry=150, tower_key=TOWER.public_key)
    claim = channel.claim_tx(params, 20_000, channel.sign_payment(params, 20_000, USER_SECRET), TOWER.secret)
    parent_fee = params.payment_fee(True)
    child = cpfp_child(claim, parent_fee, TOWER, 10_000)
    assert child.inputs[0].outpoint == (claim.txid, 0)
    child_fee = 20_000 - child.outputs[0].value
    package_rate = (parent_fee + child_fee) * 1000 / (claim.vsize + child.vsize)
    assert 10_000 <= package_rate < 10_200
    sig, key = child.inputs[0].witness
    code = b"\x76\xa9\x14" + params.tower_script[2:] + b"\x88\xac"
    assert key == TOWER.public_key
    assert sighash.verify(key, sig, sighash.bip143_sighash(channel.with_witness(child, ()), 0, code, 20_000))
    with pytest.raises(ChannelError):
        cpfp_child(claim, parent_fee, TOWER, 900_000)  # more than the output holds
    with pytest.raises(ChannelError):
        cpfp_child(claim, parent_fee, TowerPaymentKey(secret("not the tower")), 10_000)
    assert child.outputs[0].script_pubkey == script.p2wpkh(TOWER.public_key)


def test_the_payment_key_is_derived_from_the_tower_key() -> None:
    tower_secret = secret("tower identity")
    assert TOWER.secret == hashlib.sha256(b"teos/payment-key/v1" + tower_secret).digest()
    assert derive_payment_secret(tower_secret) == TOWER.secret
    assert TOWER.secret.hex() not in repr(TOWER)
    with pytest.raises(ValueError):
        derive_payment_secret(b"short")


def test_replayed_blocks_change_nothing() -> None:
    r = replace(record(deadline=120), status=ClaimStatus.BROADCAST, last_broadcast=100, tip=100)
    for h in (111, 112):
        r, _ = advance(r, BlockConnected(h, None), POLICY)
    assert r.bumps == 2
    for h in (105, 111, 112):  # the engine feeds these again after a restart
        assert advance(r, BlockConnected(h, CLAIM_TXID if h == 112 else None), POLICY) == (r, [])
