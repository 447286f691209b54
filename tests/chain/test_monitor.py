"""The chain walker against a fake chain: ordered events, reorgs found by hash, no block lost."""

from __future__ import annotations

import threading

import pytest

from teos.chain.bitcoind import BitcoindUnreadable, Block
from teos.chain.monitor import BlockConnected, BlockDisconnected, ChainEvent, ChainMonitor, Stop
from teos.chain.recent import BlockRef
from tests.support.fakes import FakeChain
from tests.support.wait import wait_until


class ListConsumer:
    def __init__(self) -> None:
        self.events: list[ChainEvent] = []
        self.lock = threading.Lock()

    def put(self, event: ChainEvent) -> None:
        with self.lock:
            self.events.append(event)

    def take(self) -> list[BlockConnected | BlockDisconnected]:
        """The block events received since the last call (a ``Stop`` among them is a failure)."""
        with self.lock:
            out, self.events = self.events, []
        blocks = [e for e in out if not isinstance(e, Stop)]
        assert len(blocks) == len(out), "the monitor stopped"
        return blocks


def ref(block: Block) -> BlockRef:
    return BlockRef(block.hash, block.height, block.prev_hash)


Setup = tuple[FakeChain, "ListConsumer", ChainMonitor]


@pytest.fixture
def setup() -> Setup:
    chain = FakeChain(length=5)
    consumer = ListConsumer()
    monitor = ChainMonitor(chain, [consumer], poll_interval=0.05)
    monitor.reset(ref(chain.tip))
    return chain, consumer, monitor


def test_connects_new_blocks_in_order(setup: Setup) -> None:
    chain, consumer, monitor = setup
    new = chain.mine(n=3)
    monitor.sync_once()
    events = consumer.take()
    assert [type(e) for e in events] == [BlockConnected] * 3
    assert [e.hash for e in events] == new
    assert [e.height for e in events] == [5, 6, 7]
    monitor.sync_once()
    assert consumer.take() == []


def test_reorg_disconnects_tip_first_then_connects_the_new_branch(setup: Setup) -> None:
    chain, consumer, monitor = setup
    chain.mine(n=3)
    monitor.sync_once()
    consumer.take()
    old = chain.reorg(2)
    new = chain.mine(n=3)
    monitor.sync_once()
    events = consumer.take()
    assert events[:2] == [BlockDisconnected(old[1].hash, 7), BlockDisconnected(old[0].hash, 6)]
    assert [e.hash for e in events[2:]] == new
    assert monitor.tip is not None
    assert monitor.tip.hash == chain.tip.hash


def test_reorg_to_a_shorter_chain(setup: Setup) -> None:
    chain, consumer, monitor = setup
    chain.mine(n=3)
    monitor.sync_once()
    consumer.take()
    old = chain.reorg(3)
    new = chain.mine(n=1)
    monitor.sync_once()
    events = consumer.take()
    assert [e.hash for e in events] == [b.hash for b in reversed(old)] + new


def test_walks_back_beyond_its_record_with_headers(setup: Setup) -> None:
    chain, consumer, monitor = setup
    chain.mine(n=10)
    monitor.reset(ref(chain.tip))  # knows only its tip: parents come from getblockheader
    old = chain.reorg(8)
    chain.mine(n=9)
    monitor.sync_once()
    events = consumer.take()
    assert [e.hash for e in events[:8]] == [b.hash for b in reversed(old)]
    assert all(isinstance(e, BlockConnected) for e in events[8:]) and len(events) == 17


def test_thread_polls_and_stops_with_a_stop_event(setup: Setup) -> None:
    chain, consumer, monitor = setup
    reach: list[bool] = []
    monitor._on_reachability = reach.append
    monitor.start(ref(chain.tip))
    try:
        chain.mine(n=2)
        wait_until(lambda: len(consumer.events) == 2, 5)
        chain.down = True
        wait_until(lambda: reach and reach[-1] is False, 5)
        chain.mine(n=1)
        chain.down = False
        wait_until(lambda: len(consumer.events) == 3, 5)
    finally:
        monitor.stop()
    assert isinstance(consumer.events[-1], Stop)


def test_zmq_wakes_the_walker_and_a_dead_endpoint_is_harmless() -> None:
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    chain = FakeChain(length=3)
    consumer = ListConsumer()
    monitor = ChainMonitor(chain, [consumer], poll_interval=3600, zmq_url=f"tcp://127.0.0.1:{port}")
    monitor.start(ref(chain.tip))
    try:
        chain.mine(n=1)

        def delivered() -> bool:
            pub.send_multipart([b"hashblock", chain.tip.hash.raw[::-1], b"\x00\x00\x00\x00"])
            return len(consumer.events) == 1

        wait_until(delivered, 10, interval=0.1)
    finally:
        monitor.stop()
        pub.close(0)


def test_a_block_at_the_wrong_height_is_unreadable_and_not_emitted(setup: Setup) -> None:
    chain, consumer, monitor = setup
    new = chain.mine()[0]
    true_block = chain.blocks[new]
    chain.blocks[new] = Block(true_block.hash, true_block.height + 1, true_block.prev_hash, true_block.txids)
    with pytest.raises(BitcoindUnreadable, match="height 6 for the block after 4"):
        monitor.sync_once()
    assert consumer.take() == []
    chain.blocks[new] = true_block  # bitcoind answers sense again: the same block follows
    monitor.sync_once()
    assert [e.hash for e in consumer.take()] == [new]
