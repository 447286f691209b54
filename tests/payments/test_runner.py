"""The ClaimRunner on a fake chain of real serialized blocks: claims decided at the margin, confirmed,
reorged and confirmed again, lost to a refund found by reading the block; a block bitcoind will not give
held back and processed in order later; failures of one claim contained; restarts catching claims up."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import pytest

from common import channel, script
from common.channel import ChannelId, ChannelParams
from common.channel_wire import make_open_request, make_pay_request
from common.tx import Block, BlockHeader, Transaction, TxIn, TxOut, decode_block, merkle_root
from common.types import BlockHash, Dialect, Txid
from teos.payments.claims import Claimer
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.runner import MAX_READ_ATTEMPTS, RETENTION_BLOCKS, ClaimRunner
from teos.payments.spends import spends_in_block
from teos.payments.state import ChannelStatus, ClaimStatus
from teos.payments.store import ChannelStore
from teos.payments.tower_key import TowerPaymentKey
from teos.storage.atomic import MemoryAtomicStore
from tests.payments.support import USER_KEY, USER_SECRET, FakeChain, FakeLedger, secret, user_id

PRICE = 5_000
CONFIG = PaymentConfig(
    price=PRICE,
    min_funding_confirmations=1,
    min_blocks_before_expiry=20,
    max_channel_blocks=1_000,
    claim_margin=10,
    rebroadcast_blocks=3,
    bump_margin=4,
    claim_confirmations=3,
)
TOWER = TowerPaymentKey.from_tower_secret(secret("runner tower"))
CHANGE = script.p2wpkh(TOWER.public_key[:1] + bytes(32))  # any valid P2WPKH shape


def coinbase(height: int) -> Transaction:
    txin = TxIn(Txid(bytes(32)), 0xFFFFFFFF, struct.pack("<I", height) + b"\x51", 0xFFFFFFFF)
    return Transaction(2, (txin,), (TxOut(50, script.p2wpkh(bytes(33))),), 0)


@dataclass
class FakeChainBlocks:
    """A best chain of real blocks (serialized as bitcoind would give them), by height."""

    blocks: dict[int, Block] = field(default_factory=dict)
    fail_reads: int = 0  # raw reads that fail before one succeeds
    reads: int = 0

    def add(self, height: int, txs: list[Transaction]) -> Block:
        transactions = (coinbase(height), *txs)
        prev = self.blocks[height - 1].hash if height - 1 in self.blocks else BlockHash(bytes(32))
        root = merkle_root([t.txid.raw for t in transactions])
        block = Block(
            BlockHeader(0x20000000, prev, root, 1_700_000_000 + height, 0x207FFFFF, 0), transactions
        )
        self.blocks[height] = block
        return block

    def block_hash(self, height: int) -> BlockHash:
        return self.blocks[height].hash

    def _by_hash(self, block_hash: BlockHash) -> Block:
        return next(b for b in self.blocks.values() if b.hash == block_hash)

    def block_txids(self, block_hash: BlockHash) -> tuple[Txid, ...]:
        return tuple(t.txid for t in self._by_hash(block_hash).transactions)

    def raw_block(self, block_hash: BlockHash) -> bytes:
        self.reads += 1
        if self.fail_reads:
            self.fail_reads -= 1
            raise ConnectionError("bitcoind went away")
        return self._by_hash(block_hash).raw


@dataclass
class Sent:
    txid: Txid
    raw: bytes


@dataclass
class _Status:
    delivered: bool


@dataclass
class _Result:
    status: _Status
    message: str = ""


class FakeCarrier:
    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.fail_for: set[Txid] = set()
        self.raise_for: set[Txid] = set()

    def send(self, raw_tx: bytes, txid: Txid) -> _Result:
        if txid in self.raise_for:
            raise RuntimeError("carrier exploded")
        self.sent.append(Sent(txid, raw_tx))
        return _Result(_Status(txid not in self.fail_for), "" if txid not in self.fail_for else "rejected")


class Counting:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.broadcasts = 0
        self.bumps = 0

    def claim_broadcast(self, delivered: bool) -> None:
        self.broadcasts += 1

    def claim_bumped(self) -> None:
        self.bumps += 1

    def claim_failure(self, step: str) -> None:
        self.failures.append(step)


class Grants:
    def __init__(self) -> None:
        self.forgotten: list[ChannelId] = []

    def forget_grants(self, channel_id: ChannelId) -> None:
        self.forgotten.append(channel_id)


@dataclass
class World:
    store: ChannelStore
    handler: PaymentHandler
    funding: FakeChain
    chain: FakeChainBlocks
    carrier: FakeCarrier
    events: Counting
    grants: Grants
    runner: ClaimRunner
    height: int = 100

    def open(self, n: int, expiry: int, paid: int = 1) -> ChannelParams:
        params = ChannelParams(
            ChannelId(Txid(hashlib.sha256(f"funding {n}".encode()).digest()), n % 3),
            200_000,
            USER_KEY,
            TOWER.public_key,
            expiry,
            CHANGE,
            CONFIG.fee_rate,
        )
        self.funding.fund(params, confirmations=6)
        self.funding.tip = self.height
        self.handler.open_channel(make_open_request(params, USER_SECRET))
        for k in range(1, paid + 1):
            self.handler.pay(make_pay_request(params, k, k * PRICE, user_id(n), Dialect.RUST, USER_SECRET))
        return params

    def mine(self, txs: list[Transaction] | None = None) -> Block:
        self.height += 1
        block = self.chain.add(self.height, txs or [])
        self.runner.block_connected(block.hash, self.height, [t.txid for t in block.transactions])
        return block

    def disconnect(self) -> None:
        block = self.chain.blocks.pop(self.height)
        self.runner.block_disconnected(block.hash, self.height)
        self.height -= 1

    def status(self, params: ChannelParams) -> ChannelStatus:
        snap = self.store.get(params.channel_id)
        assert snap is not None
        return snap.state.status

    def claim_status(self, params: ChannelParams) -> ClaimStatus | None:
        snap = self.store.get_claim(params.channel_id)
        return snap.record.status if snap is not None else None

    def claim_tx(self, params: ChannelParams) -> Transaction:
        snap = self.store.get_claim(params.channel_id)
        assert snap is not None
        return self.runner.claimer.claim_transaction(snap.record)


def make_world() -> World:
    store = ChannelStore(MemoryAtomicStore())
    chain = FakeChain(tip=100)
    handler = PaymentHandler(CONFIG, store, chain, FakeLedger(), FixedPrice(PRICE), TOWER.public_key, 10, 20)
    blocks = FakeChainBlocks()
    blocks.add(100, [])
    carrier, events, grants = FakeCarrier(), Counting(), Grants()
    runner = ClaimRunner(Claimer(CONFIG, store, TOWER), carrier, blocks, grants, events)
    return World(store, handler, chain, blocks, carrier, events, grants, runner)


def test_a_claim_is_decided_at_the_margin_broadcast_and_completed() -> None:
    w = make_world()
    params = w.open(1, expiry=130, paid=2)
    while w.height < 130 - CONFIG.claim_margin - 1:
        w.mine()
    assert w.status(params) is ChannelStatus.OPEN and w.carrier.sent == []
    w.mine()  # expiry - tip == claim_margin
    assert w.status(params) is ChannelStatus.CLOSING
    claim = w.claim_tx(params)
    assert [s.txid for s in w.carrier.sent] == [claim.txid]
    assert w.claim_status(params) is ClaimStatus.BROADCAST
    w.mine([claim])
    assert w.claim_status(params) is ClaimStatus.CONFIRMED
    w.mine()
    w.mine()
    assert w.claim_status(params) is ClaimStatus.COMPLETE
    assert w.status(params) is ChannelStatus.CLAIMED
    assert w.chain.reads == 0  # nothing above an expiry: no block was read in full
    assert w.events.failures == []


def test_a_reorged_claim_is_broadcast_again_and_confirms_again() -> None:
    w = make_world()
    params = w.open(1, expiry=125, paid=1)
    while w.status(params) is ChannelStatus.OPEN:
        w.mine()
    claim = w.claim_tx(params)
    w.mine([claim])
    assert w.claim_status(params) is ClaimStatus.CONFIRMED
    sent = len(w.carrier.sent)
    w.disconnect()
    assert w.claim_status(params) is ClaimStatus.BROADCAST
    assert len(w.carrier.sent) == sent + 1 and w.carrier.sent[-1].txid == claim.txid
    w.mine()
    w.mine([claim])
    w.mine()
    w.mine()
    assert w.claim_status(params) is ClaimStatus.COMPLETE


def test_a_refund_after_expiry_is_found_by_reading_the_block_and_the_claim_is_lost() -> None:
    w = make_world()
    params = w.open(1, expiry=125, paid=1)
    w.carrier.fail_for.add(channel.claim_tx(params, PRICE, _last_signature(w, params), TOWER.secret).txid)
    while w.height < params.expiry:
        w.mine()
    assert w.claim_status(params) is ClaimStatus.PENDING  # never accepted
    refund = channel.refund_tx(params, CHANGE, 1_000, USER_SECRET)
    w.mine([refund])
    assert w.chain.reads >= 1
    assert w.claim_status(params) is ClaimStatus.CONFLICTED
    w.mine()
    w.mine()
    assert w.claim_status(params) is ClaimStatus.LOST
    assert w.status(params) is ChannelStatus.REFUNDED


def _last_signature(w: World, params: ChannelParams) -> bytes:
    snap = w.store.get(params.channel_id)
    assert snap is not None
    return snap.state.user_signature


def test_a_block_bitcoind_will_not_give_waits_and_nothing_is_missed() -> None:
    w = make_world()
    params = w.open(1, expiry=121, paid=1)
    w.carrier.fail_for.add(channel.claim_tx(params, PRICE, _last_signature(w, params), TOWER.secret).txid)
    while w.height < params.expiry:
        w.mine()
    w.chain.fail_reads = 3
    refund = channel.refund_tx(params, CHANGE, 1_000, USER_SECRET)
    w.mine([refund])  # read fails
    assert w.runner.pending and w.claim_status(params) is ClaimStatus.PENDING
    w.mine()  # still failing: both blocks wait, in order
    w.runner.retry_pending()
    assert w.runner.pending
    w.runner.retry_pending()  # the fourth read works: both blocks go through, in order
    assert not w.runner.pending
    assert w.claim_status(params) is ClaimStatus.CONFLICTED
    assert w.events.failures.count("read_block") == 3


def test_a_block_that_can_never_be_read_stops_holding_claims_back() -> None:
    w = make_world()
    params = w.open(1, expiry=121, paid=1)
    while w.height < params.expiry:
        w.mine()
    w.chain.fail_reads = 10_000
    w.mine()
    for _ in range(MAX_READ_ATTEMPTS):
        w.runner.retry_pending()
    assert not w.runner.pending
    record = w.store.get_claim(params.channel_id)
    assert record is not None and record.record.tip == w.height


def test_one_claim_failing_leaves_the_others_alone() -> None:
    w = make_world()
    a = w.open(1, expiry=125, paid=1)
    b = w.open(2, expiry=125, paid=1)
    bad = channel.claim_tx(a, PRICE, _last_signature(w, a), TOWER.secret).txid
    w.carrier.raise_for.add(bad)
    while w.status(b) is ChannelStatus.OPEN:
        w.mine()  # never raises
    assert "broadcast" in w.events.failures
    assert w.claim_status(b) is ClaimStatus.BROADCAST
    assert w.claim_status(a) is ClaimStatus.PENDING
    w.carrier.raise_for.clear()
    for _ in range(CONFIG.rebroadcast_blocks):
        w.mine()
    assert w.claim_status(a) is ClaimStatus.BROADCAST  # tried again on schedule


def test_resume_catches_a_claim_up_and_claims_what_became_due_while_down() -> None:
    w = make_world()
    a = w.open(1, expiry=121, paid=1)
    b = w.open(2, expiry=140, paid=1)
    while w.status(a) is ChannelStatus.OPEN:
        w.mine()
    claim_a = w.claim_tx(a)
    # The engine processed these blocks, but the runner never saw them (killed in between).
    for txs in ([claim_a], [], []):
        w.height += 1
        w.chain.add(w.height, txs)
    w.height += 30  # and teosd was down while 30 more were mined
    for h in range(w.height - 29, w.height + 1):
        w.chain.add(h, [])
    restarted = ClaimRunner(Claimer(CONFIG, w.store, TOWER), w.carrier, w.chain, w.grants, w.events)
    sent = len(w.carrier.sent)
    restarted.resume(w.height)
    assert w.claim_status(a) is ClaimStatus.COMPLETE
    assert w.status(b) is ChannelStatus.CLOSING  # due at once
    assert w.carrier.sent[sent:][-1].txid == w.claim_tx(b).txid


def test_operators_claim_one_or_all() -> None:
    w = make_world()
    a = w.open(1, expiry=400, paid=1)
    b = w.open(2, expiry=400, paid=2)
    unpaid = w.open(3, expiry=400, paid=0)
    outcome = w.runner.claim(a.channel_id, w.height)
    assert outcome.record is not None and outcome.record.status is ClaimStatus.BROADCAST
    assert w.runner.claim(unpaid.channel_id, w.height).error
    outcomes = w.runner.claim_all(w.height)
    assert [o.channel_id for o in outcomes] == [b.channel_id]
    assert w.status(b) is ChannelStatus.CLOSING


def test_unpaid_channels_expire_and_closed_channels_are_forgotten() -> None:
    w = make_world()
    unpaid = w.open(3, expiry=121, paid=0)
    while w.height < 121:
        w.mine()
    assert w.status(unpaid) is ChannelStatus.UNPAID
    w.height = 121 + RETENTION_BLOCKS - 1
    w.chain.add(w.height, [])
    w.mine()
    assert w.store.get(unpaid.channel_id) is None
    assert w.grants.forgotten == [unpaid.channel_id]


# -- reading blocks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("segwit", [True, False])
def test_spends_in_block_agrees_with_the_full_decoder(segwit: bool) -> None:
    chain = FakeChainBlocks()
    outpoints = [(Txid(hashlib.sha256(bytes([i])).digest()), i) for i in range(6)]
    txs = []
    for i, (txid, vout) in enumerate(outpoints):
        witness = (b"\x01" * 72, b"") if segwit and i % 2 == 0 else ()
        inputs = (TxIn(txid, vout, b"" if witness else b"\x00" * (i + 1), 0xFFFFFFFD, witness),)
        txs.append(Transaction(2, inputs, (TxOut(1000 + i, script.p2wpkh(bytes(33))),), i))
    block = chain.add(1, txs)
    wanted = {outpoints[1]: "one", outpoints[4]: "four", (Txid(bytes(32)), 7): "absent"}
    found = spends_in_block(block.raw, wanted)
    decoded = decode_block(block.raw)
    expected = {
        wanted[(i.prev_txid, i.prev_vout)]: t.txid
        for t in decoded.transactions
        for i in t.inputs
        if (i.prev_txid, i.prev_vout) in wanted
    }
    assert found == expected == {"one": txs[1].txid, "four": txs[4].txid}
