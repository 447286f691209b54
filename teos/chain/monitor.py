"""Following bitcoind's best chain and turning it into an ordered stream of typed block events.

Two things wake the walker: a ZMQ ``hashblock`` message (fast path; optional) and a timer every
``poll_interval`` seconds (safety net). A wake-up carries no data: the walker always asks bitcoind for its
best block and walks from the last block it emitted to that tip, one block at a time, so a lost ZMQ
message, a dead socket or a burst of blocks never loses a block: the next wake-up (at the latest the next
poll) finds them.

Reorganisations are detected by hash, not by height: the walker connects the best chain's block above our
tip only if its ``previousblockhash`` is our tip (which proves our tip is still on the best chain). When
it is not, or there is no block above our tip, the walker checks that our tip is still the best-chain block
at its height (``getblockhash``); if not, it emits ``BlockDisconnected`` for our tip, steps back to its
parent and checks again, until it reaches the fork point; then it emits ``BlockConnected`` for each block
of the new branch.
Parents come from the record of recent blocks the monitor shares with the engine (``teos.chain.recent``).

The monitor puts each event on the queue of each consumer, in order (in the daemon its one consumer is
the engine's inbox; ``teos.engine.engine`` says what happens to a block there). It never waits for its
consumers except for back-pressure: ``Consumer.put`` may block while the consumer is too far behind, so
catching up after a long downtime holds only a few blocks in memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.types import BlockHash, Txid
from teos.chain.bitcoind import (
    RPC_INVALID_PARAMETER,
    TRANSIENT_ERRORS,
    BitcoindUnreadable,
    Block,
    BlockHeader,
    RPCError,
)
from teos.chain.recent import BlockRef, RecentBlocks

log = logging.getLogger(__name__)


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockConnected:
    """A block joined the best chain, on top of ``prev_hash``."""

    hash: BlockHash
    height: int
    prev_hash: BlockHash | None
    txids: Sequence[Txid]

    @classmethod
    def of(cls, block: Block) -> BlockConnected:
        return cls(block.hash, block.height, block.prev_hash, block.txids)


@dataclass(frozen=True)
class BlockDisconnected:
    """A block left the best chain (emitted tip-first during a reorganisation)."""

    hash: BlockHash
    height: int


@dataclass(frozen=True)
class Stop:
    """The monitor stopped: no more events follow."""


ChainEvent = BlockConnected | BlockDisconnected | Stop


# -- seams ---------------------------------------------------------------------------------------


class ChainSource(Protocol):
    """The calls the walker makes (BitcoindClient satisfies it; tests pass a fake chain)."""

    def get_best_block_hash(self) -> BlockHash: ...

    def get_block_hash(self, height: int) -> BlockHash: ...

    def get_block(self, block_hash: BlockHash) -> Block: ...

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader: ...


class Consumer(Protocol):
    def put(self, event: ChainEvent) -> None:
        """Takes the next event; may block for back-pressure."""
        ...


# -- the monitor ---------------------------------------------------------------------------------


class ChainMonitor:
    """Walks bitcoind's best chain from a starting block and feeds block events to its consumers.

    ``start(tip, known)`` starts the walker thread (and a ZMQ listener when ``zmq_url`` is set) from
    ``tip``, the last block the consumers processed; ``known`` are recent blocks of their chain (for
    finding parents during a reorganisation). ``sync_once()`` is the walker's one step, callable
    directly in tests. ``on_reachability(bool)`` is told whether bitcoind answered the last attempt.
    ``recent`` is the record of recent blocks shared with the engine (a private one when left out).
    """

    def __init__(
        self,
        chain: ChainSource,
        consumers: Sequence[Consumer],
        poll_interval: float,
        zmq_url: str | None = None,
        on_reachability: Callable[[bool], None] | None = None,
        retry_max_delay: float = 10.0,
        recent: RecentBlocks | None = None,
    ) -> None:
        self._chain = chain
        self._consumers = list(consumers)
        self._poll_interval = poll_interval
        self._zmq_url = zmq_url
        self._on_reachability = on_reachability
        self._retry_max_delay = retry_max_delay
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tip: BlockRef | None = None
        self._recent = recent if recent is not None else RecentBlocks(chain)
        self._best_height_seen = -1
        self._last_tip_check: float | None = None  # monotonic time bitcoind's tip was last read
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, tip: BlockRef, known: Sequence[BlockRef] = ()) -> None:
        self.reset(tip, known)
        self._stop.clear()
        walker = threading.Thread(target=self._run_walker, name="chain-monitor", daemon=True)
        self._threads = [walker]
        if self._zmq_url:
            self._threads.append(threading.Thread(target=self._run_zmq, name="chain-zmq", daemon=True))
        for t in self._threads:
            t.start()

    def reset(self, tip: BlockRef, known: Sequence[BlockRef] = ()) -> None:
        """Sets the block to walk from (used by ``start`` and by tests calling ``sync_once``)."""
        with self._lock:
            self._tip = tip
            self._recent.seed([*known, tip])

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the threads and puts ``Stop`` on every consumer's queue."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                log.error("thread did not stop in time thread=%s", t.name)
        self._threads = []
        for consumer in self._consumers:
            consumer.put(Stop())

    def wake(self) -> None:
        """Asks the walker to look at bitcoind's tip now (ZMQ, tests, the engine)."""
        self._wake.set()

    def stopped_threads(self) -> list[str]:
        """Names of the monitor's threads that were started, are not being stopped and are no longer
        alive (the watchdog reads it; the loops catch everything, so only a bug can end one)."""
        if self._stop.is_set():
            return []
        return [t.name for t in self._threads if not t.is_alive()]

    @property
    def tip(self) -> BlockRef | None:
        """The last block emitted."""
        return self._tip

    @property
    def best_height_seen(self) -> int:
        """Height of bitcoind's best block at the last look (-1 before the first)."""
        return self._best_height_seen

    def seconds_since_tip_check(self) -> float | None:
        """Seconds since bitcoind's tip was last read (None before the first read): a walker that
        silently stopped polling shows here even though it looks caught up."""
        last = self._last_tip_check
        return None if last is None else round(time.monotonic() - last, 3)

    def _read_best(self) -> BlockHash:
        """bitcoind's best block hash; also records its height, so a catch-up knows how far it has to go."""
        best = self._chain.get_best_block_hash()
        header = self._chain.get_block_header(best)
        self._best_height_seen = header.height
        self._last_tip_check = time.monotonic()
        return best

    # -- walker ----------------------------------------------------------------------------------

    def _run_walker(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            try:
                self.sync_once()
                self._reachable(True)
                delay = 0.2
                self._wake.wait(self._poll_interval)
            except TRANSIENT_ERRORS as e:
                self._reachable(False)
                log.warning("bitcoind unavailable, retrying in %.1fs error=%s", delay, e)
                self._stop.wait(delay)
                delay = min(delay * 2, self._retry_max_delay)
            except Exception:  # never let the walker die: log, back off, try again
                self._reachable(True)
                log.exception("chain walk failed, retrying in %.1fs", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self._retry_max_delay)
            self._wake.clear()

    def _reachable(self, value: bool) -> None:
        if self._on_reachability is not None:
            self._on_reachability(value)

    def sync_once(self) -> None:
        """Walks from the last emitted block to bitcoind's current tip, emitting events."""
        if self._tip is None:
            raise RuntimeError("monitor has no starting block")
        best = self._read_best()
        while not self._stop.is_set():
            tip = self._tip
            if tip.hash == best:
                return
            # The best chain's next block, if its parent is our tip, proves our tip is still on the best
            # chain: one call fewer per block while catching up. Otherwise our tip is checked by hash.
            block = self._next_block(tip)
            if block is None:
                if not self._on_best_chain(tip):
                    self._disconnect_tip(tip)
                    continue
                best = self._read_best()  # our tip is bitcoind's tip at the moment, or the chain moved
                if best == tip.hash:
                    return
                continue
            self._best_height_seen = max(self._best_height_seen, block.height)
            self._emit(BlockConnected.of(block))
            ref = BlockRef(block.hash, block.height, block.prev_hash)
            self._recent.add(ref)
            with self._lock:
                self._tip = ref

    def _on_best_chain(self, ref: BlockRef) -> bool:
        try:
            return self._chain.get_block_hash(ref.height) == ref.hash
        except RPCError as e:
            if e.code == RPC_INVALID_PARAMETER:  # the best chain is now shorter than our tip
                return False
            raise

    def _next_block(self, tip: BlockRef) -> Block | None:
        try:
            next_hash = self._chain.get_block_hash(tip.height + 1)
        except RPCError as e:
            if e.code == RPC_INVALID_PARAMETER:
                return None
            raise
        block = self._chain.get_block(next_hash)
        if block.prev_hash != tip.hash:  # the chain moved, or our tip left it: the caller checks which
            return None
        if block.height != tip.height + 1:
            raise BitcoindUnreadable("getblock", f"height {block.height} for the block after {tip.height}")
        return block

    def _disconnect_tip(self, tip: BlockRef) -> None:
        parent = self._recent.parent_of(tip)
        log.info("block disconnected hash=%s height=%d", tip.hash, tip.height)
        self._emit(BlockDisconnected(tip.hash, tip.height))
        with self._lock:
            self._tip = parent

    def _emit(self, event: ChainEvent) -> None:
        for consumer in self._consumers:
            consumer.put(event)

    # -- ZMQ -------------------------------------------------------------------------------------

    def _run_zmq(self) -> None:
        import zmq  # imported here so that a tower without ZMQ never needs the library loaded

        delay = 0.5
        while not self._stop.is_set():
            sock: zmq.Socket[bytes] | None = None
            try:
                ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
                sock = ctx.socket(zmq.SUB)
                sock.setsockopt(zmq.RCVTIMEO, 500)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SUBSCRIBE, b"hashblock")
                sock.connect(str(self._zmq_url))
                log.info("listening to zmq url=%s", self._zmq_url)
                while not self._stop.is_set():
                    try:
                        parts = sock.recv_multipart()
                    except zmq.Again:
                        continue
                    if parts and parts[0] == b"hashblock":
                        self._wake.set()
                    delay = 0.5
            except Exception:  # a broken socket is replaced; polling covers the gap
                log.exception("zmq listener failed, reconnecting in %.1fs", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if sock is not None:
                    sock.close(0)
