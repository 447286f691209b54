"""The engine: one thread that runs each block of the best chain through the Watcher and the Responder.

Threads. The monitor (``teos.chain.monitor``) walks bitcoind's best chain and puts typed events on the
engine's ``Inbox``; the *engine thread* handles every event, one at a time, in order.
``appointment_added`` (called by the service's threads) only queues an event on the same inbox.

Order in which the parts see a connected block (on the engine thread):
1. Watcher: adds the block to the locator cache, finds triggered appointments, checks their blobs;
2. Responder: updates its trackers (confirmations, rebroadcasts, completions) and turns the block's
   breaches into trackers;
3. one atomic write: the Watcher's deletions, the Responder's trackers, the pointer and the record of
   recent blocks (``teos.engine.pointer``); through ``SlotLedger.release`` when slots go back (completed
   trackers, invalid blobs); then the tip (``ChainTip``) moves to the block and progress is counted;
4. penalty broadcasts (after the write, so a crash never leaves a broadcast penalty untracked);
5. BlockListeners (the Gatekeeper's expiry), in the order given;
6. a paid tower's claims (``ClaimsStep``): spends of the channels' funding outputs, claims decided,
   followed, broadcast and fee-bumped (``teos.payments.runner``; its failures stay there).
A disconnected block: Responder (penalties unconfirmed, disputes back under watch), Watcher (cache),
write, broadcasts, listeners.

Crashes. Every block's effects are one batch with the pointer, so after a crash the tower resumes from
the last block written (``teos.engine.startup``): the blocks after it are replayed (breaches that
happened while the tower was down are responded to), and a pointer no longer on the best chain is walked
back to the fork point. When the thread starts it looks the cached blocks' locators up again (an
appointment committed just before a crash may match one) and broadcasts every unconfirmed penalty again.

Failures. No exception from any call the engine makes can end or wedge its thread:
- a step that fails before its write (bitcoind away or answering garbage, the store refusing the write,
  a codec, a bug) is logged with its context and retried with backoff; nothing of it is written, so
  running it again is safe, and while bitcoind does not answer the tip says so;
- a block's effects are committed exactly once: everything after the write (the tip, progress and
  metrics, the broadcasts, the listeners) runs as separate guarded steps whose failure is logged and
  never makes the block handler run again; a broadcast that fails goes to the Responder's retry queue,
  retried on its own every second (``retry_broadcasts``);
- the loop itself catches everything, logs it once, backs off and carries on; a block event for the block
  already processed is skipped.
What is left (a thread killed by something that is not an ``Exception``, a step that fails forever) is
the watchdog's (``teos.engine.watchdog``): ``stopped_threads`` and ``processed_height`` are what it reads.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.tx import decode_transaction
from common.types import BlockHash, Txid, Txids
from teos.chain.bitcoind import TRANSIENT_ERRORS, RetryPolicy
from teos.chain.monitor import BlockConnected, BlockDisconnected, ChainEvent, Stop
from teos.chain.recent import BlockRef
from teos.engine.startup import BootstrapError
from teos.interfaces import BlockListener, SlotLedger, SlotRefunds
from teos.responder.responder import Responder, ResponderOutcome
from teos.storage.codec import AppointmentRecord, TrackerRecord
from teos.storage.store import Batch
from teos.watcher.watcher import Watcher

log = logging.getLogger(__name__)

__all__ = ["BootstrapError", "ClaimsStep", "Engine", "EngineConfig", "Inbox", "decode_penalty"]

CLAIMS_RETRY_SECONDS = 5.0  # while idle, how often blocks the claims could not read are tried again
CALL_POLL_INTERVAL = 0.1  # seconds between checks, while Engine.call waits, that the engine is not stopping


@dataclass(frozen=True)
class EngineConfig:
    """The chain side's settings (``teos.daemon.build_chain_side`` hands each part its own)."""

    btc_network: str  # "main", "test", "testnet4", "signet" or "regtest", as getblockchaininfo says
    poll_interval: float = 60.0  # seconds between getbestblockhash polls (ZMQ wakes the walker sooner)
    zmq_url: str | None = None  # bitcoind's zmqpubhashblock endpoint
    locator_cache_size: int = 6
    rebroadcast_after: int = 6  # blocks without confirmation before a penalty is broadcast again
    irrevocable_confirmations: int = 100
    startup_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_delay=0.5, max_delay=10.0, max_wait=120.0)
    )
    retry_max_delay: float = 10.0  # cap of the backoff of the running loops
    recent_blocks: int = 288  # depth of the record of processed blocks (reorgs while down)
    max_pending_blocks: int = 8  # blocks the monitor may queue ahead of the engine thread


class EngineMetrics(Protocol):
    """Event counters the engine reports to (``teos.metrics.Metrics`` satisfies it)."""

    def breach_seen(self, n: int = 1) -> None: ...

    def penalty_broadcast(self, n: int = 1) -> None: ...

    def penalty_confirmed(self, n: int = 1) -> None: ...


class NoMetrics:
    """Counts nothing: for an engine without ``/metrics`` (tests, benchmarks)."""

    def breach_seen(self, n: int = 1) -> None:
        pass

    def penalty_broadcast(self, n: int = 1) -> None:
        pass

    def penalty_confirmed(self, n: int = 1) -> None:
        pass

    def block_processed(self, n: int = 1) -> None:
        pass


class BlockProgress(Protocol):
    """Where the engine reports its progress (``teos.engine.progress.Progress`` satisfies it)."""

    def block_processed(self, height: int) -> None: ...

    def status(self) -> dict[str, Any]: ...


class Committer(Protocol):
    def commit(self, batch: Batch, sync: bool = True) -> None: ...


class TipWriter(Protocol):
    """The shared tip as the engine moves it (``teos.chain.tip.ChainTip`` satisfies it)."""

    @property
    def block(self) -> BlockRef | None: ...

    @property
    def bitcoind_reachable(self) -> bool: ...

    def processed(self, block: BlockRef) -> None: ...

    def set_reachable(self, value: bool) -> None: ...


class PointerWriter(Protocol):
    """The stored pointer as the engine moves it (``teos.engine.pointer.PointerStore`` satisfies it)."""

    def advance(self, batch: Batch, ref: BlockRef) -> None: ...

    def rewind(self, batch: Batch, disconnected: BlockRef, parent: BlockRef) -> None: ...


class ParentLookup(Protocol):
    """The record of recent blocks (``teos.chain.recent.RecentBlocks`` satisfies it)."""

    def parent_of(self, ref: BlockRef) -> BlockRef: ...


def _describe(event: _Event) -> str:
    """An event for the log: its kind and what it is about."""
    if isinstance(event, BlockConnected | BlockDisconnected):
        return f"{type(event).__name__} height={event.height} block={event.hash}"
    if isinstance(event, _AppointmentAdded):
        return f"AppointmentAdded uuid={event.record.uuid}"
    return type(event).__name__


def decode_penalty(raw: bytes) -> Txid:
    """The txid of a raw penalty transaction; ValueError (TxDecodeError) when it is not one."""
    return decode_transaction(raw).txid


class ClaimsStep(Protocol):
    """A paid tower's claims (``teos.payments.runner.ClaimRunner`` satisfies it): the last step of every
    block, after the Watcher, the Responder, the write and the listeners. Its methods never raise; work it
    could not do yet (bitcoind did not give a block) is ``pending`` and done by ``retry_pending``."""

    @property
    def pending(self) -> bool: ...

    def resume(self, tip: int) -> None: ...

    def block_connected(self, block_hash: BlockHash, height: int, txids: Sequence[Txid]) -> None: ...

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None: ...

    def retry_pending(self) -> None: ...


@dataclass(frozen=True)
class _AppointmentAdded:
    record: AppointmentRecord
    dispute_txid: Txid


@dataclass
class _Call:
    """A function to run on the engine thread between two events (``Engine.call``)."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


_Event = ChainEvent | _AppointmentAdded | _Call


class Inbox:
    """The engine thread's queue; the monitor is its producer. Block events take one of ``capacity``
    slots, so the monitor waits (back-pressure) while the engine is that many blocks behind."""

    def __init__(self, capacity: int) -> None:
        self.queue: queue.Queue[_Event] = queue.Queue()
        self._slots = threading.Semaphore(capacity)
        self._closed = threading.Event()

    def put(self, event: ChainEvent) -> None:
        if isinstance(event, BlockConnected | BlockDisconnected):
            while not self._slots.acquire(timeout=0.2):
                if self._closed.is_set():
                    return  # stopping: the block is replayed from the stored pointer next time
        self.queue.put(event)

    def put_appointment(self, event: _AppointmentAdded) -> None:
        self.queue.put(event)

    def put_call(self, event: _Call) -> None:
        self.queue.put(event)

    def block_done(self) -> None:
        self._slots.release()

    def close(self) -> None:
        """Stops the back-pressure wait: a producer blocked in ``put`` returns."""
        self._closed.set()

    def reopen(self) -> None:
        self._closed.clear()


class _TxidSet:
    """A block's txids for the Responder's membership tests, made a set only at the first test: most
    blocks meet no tracker and no breach, and hashing 4000 txids costs more than the rest of that path."""

    __slots__ = ("_set", "_txids")

    def __init__(self, txids: Sequence[Txid]) -> None:
        self._txids = txids
        self._set: frozenset[bytes] | None = None

    def __contains__(self, txid: object) -> bool:
        if self._set is None:
            t = self._txids
            self._set = frozenset(t.raw_txids() if isinstance(t, Txids) else [x.raw for x in t])
        return isinstance(txid, Txid) and txid.raw in self._set


class Engine:
    """Runs the chain's events on one thread (see the module docstring).

    Besides ``start``/``stop`` it answers the user side's ``LateBreaches`` (``breach_in_cache``,
    ``appointment_added``) and, for tools and tests holding it, reads of the tip and the status. Its
    Watcher and Responder are its own components; everything else comes through the seams above.
    """

    def __init__(
        self,
        config: EngineConfig,
        inbox: Inbox,
        tip: TipWriter,
        watcher: Watcher,
        responder: Responder,
        pointer: PointerWriter,
        recent: ParentLookup,
        store: Committer,
        ledger: SlotLedger,
        listeners: Sequence[BlockListener],
        progress: BlockProgress,
        metrics: EngineMetrics,
        claims: ClaimsStep | None = None,
    ) -> None:
        self.config = config
        self.inbox = inbox
        self._tip = tip
        self._watcher = watcher
        self._responder = responder
        self._pointer = pointer
        self._recent = recent
        self._store = store
        self._ledger = ledger
        self._listeners = list(listeners)
        self._progress = progress
        self._metrics = metrics
        self._claims = claims
        self._claims_retry_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what others read ------------------------------------------------------------------------

    @property
    def bitcoind_reachable(self) -> bool:
        return self._tip.bitcoind_reachable

    @property
    def tip_height(self) -> int:
        block = self._tip.block
        return block.height if block is not None else 0

    @property
    def processed_height(self) -> int:
        """Height of the last block whose effects are committed (the watchdog's progress measure)."""
        return self.tip_height

    def stopped_threads(self) -> list[str]:
        """["engine"] when the engine thread was started, is not being stopped and is no longer alive."""
        thread = self._thread
        if thread is None or self._stop.is_set() or thread.is_alive():
            return []
        return [thread.name]

    def status(self) -> dict[str, Any]:
        """The progress snapshot (``teos.engine.progress``)."""
        return self._progress.status()

    def breach_in_cache(self, record: AppointmentRecord) -> Txid | None:
        cached = self._watcher.breach_in_cache(record)
        return cached.txid if cached is not None else None

    def appointment_added(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        self.inbox.put_appointment(_AppointmentAdded(record, dispute_txid))

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, tip: BlockRef) -> None:
        """Starts the engine thread from ``tip``, the last block processed (``Startup.run``'s)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.inbox.reopen()
        self._tip.processed(tip)
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()
        log.info("engine started height=%d block=%s", tip.height, tip.hash)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the engine thread (the block in hand is finished or not written). Stop the monitor
        first, so that no event arrives after ``Stop``."""
        if self._thread is None:
            return
        self._stop.set()
        self.inbox.close()
        self.inbox.queue.put(Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("engine thread did not stop in time")
        self._thread = None

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Runs ``fn`` on the engine thread, between two events, and returns its result (or raises its
        error). For work that must not race the blocks, such as an operator's claim. TimeoutError if the
        engine has not run it within ``timeout`` seconds (it may still run it later), or at once when the
        engine is being stopped (so that a caller never holds teosd's stop up)."""
        event = _Call(fn)
        self.inbox.put_call(event)
        deadline = time.monotonic() + timeout
        while not event.done.wait(min(CALL_POLL_INTERVAL, max(0.0, deadline - time.monotonic()))):
            if self._stop.is_set():
                raise TimeoutError("the engine is stopping")
            if time.monotonic() >= deadline:
                raise TimeoutError("the engine did not get to the request in time")
        if event.error is not None:
            raise event.error
        return event.result

    def wait_processed(self, height: int, timeout: float) -> bool:
        """Waits until the engine has processed a block at ``height`` or above (tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.tip_height >= height:
                return True
            self._stop.wait(0.02)
        return self.tip_height >= height

    # -- the engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self._with_retry("resume", self._resume)
        delay = 0.2
        while not self._stop.is_set():
            try:
                if self._next_event():
                    break
                delay = 0.2
            except Exception:  # each step guards itself; this is the last line of defence
                log.exception("engine loop failed, going on in %.1fs", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.config.retry_max_delay)

    def _next_event(self) -> bool:
        """Handles the next event (or retries pending broadcasts and claims while none comes); True at
        ``Stop``."""
        pending = self._responder.pending_broadcasts or self._claims_pending()
        try:
            event = self.inbox.queue.get(timeout=0.5 if pending else None)
        except queue.Empty:
            self._retry_broadcasts()
            self._retry_claims()
            return False
        if isinstance(event, Stop):
            return True
        if isinstance(event, _Call):
            self._run_call(event)
            return False
        try:
            self._with_retry(_describe(event), functools.partial(self._handle, event))
        finally:
            if isinstance(event, BlockConnected | BlockDisconnected):
                self.inbox.block_done()
        if self._responder.pending_broadcasts:
            self._retry_broadcasts()
        return False

    def _with_retry(self, what: str, step: Callable[[], None]) -> None:
        """Runs ``step`` until it succeeds or the engine stops; nothing is written by a failed step."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                step()
                return
            except TRANSIENT_ERRORS as e:
                self._tip.set_reachable(False)
                log.warning("%s: bitcoind unavailable, retrying in %.1fs error=%s", what, delay, e)
            except Exception:
                log.exception("%s failed, retrying in %.1fs", what, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.config.retry_max_delay)

    def _after_commit(self, what: str, step: Callable[..., object], *args: Any) -> None:
        """One step after a write: its failure is logged and dropped, never retried with the handler."""
        try:
            step(*args)
        except Exception:
            log.exception("%s failed after the write; the block stays processed", what)

    def _handle(self, event: _Event) -> None:
        if isinstance(event, BlockConnected):
            self._block_connected(event)
        elif isinstance(event, BlockDisconnected):
            self._block_disconnected(event)
        elif isinstance(event, _AppointmentAdded):
            self._appointment_added(event)

    def _resume(self) -> None:
        """Looks the cached blocks up again and broadcasts every unconfirmed penalty again."""
        batch = Batch()
        found = self._watcher.recheck_cached_blocks(batch)
        responded = self._responder.handle_breaches(found.breaches, self.tip_height, frozenset(), batch)
        if len(batch):
            self._commit(batch, found.refunds())
        pending = {t.uuid: t for t in self._responder.unconfirmed()}
        for t in responded.to_broadcast:
            pending[t.uuid] = t
        if pending:
            log.info("broadcasting unconfirmed penalties again n=%d", len(pending))
        self._after_commit("resume: broadcasts", self._broadcast, list(pending.values()))
        block = self._tip.block
        if block is not None:
            self._notify(True, block.hash, block.height)
            self._claims_step("resume", lambda c: c.resume(block.height))

    def _block_connected(self, e: BlockConnected) -> None:
        pointer = self._tip.block
        if pointer is not None and e.hash == pointer.hash:
            log.info("block already processed, skipped height=%d block=%s", e.height, e.hash)
            return
        if pointer is not None and e.prev_hash != pointer.hash:
            # The monitor walks from our pointer, so this means a bug; refuse rather than corrupt (the
            # watchdog ends a tower that stays stuck here, and a restart walks from the stored pointer).
            raise RuntimeError(f"block {e.hash} does not extend the processed tip {pointer.hash}")
        batch = Batch()
        txids = _TxidSet(e.txids)
        found = self._watcher.block_connected(e.hash, e.height, e.txids, batch)
        updated = self._responder.block_connected(e.hash, e.height, txids, batch)
        created = self._responder.handle_breaches(found.breaches, e.height, txids, batch)
        ref = BlockRef(e.hash, e.height, e.prev_hash)
        self._pointer.advance(batch, ref)
        self._commit(batch, found.refunds(), updated)
        # Committed: from here on nothing may raise into the retry loop (the block is processed).
        self._tip.processed(ref)
        where = f"block height={e.height} block={e.hash}:"
        self._after_commit(f"{where} progress", self._progress.block_processed, e.height)
        if found.breaches:
            self._after_commit(f"{where} metrics", self._metrics.breach_seen, len(found.breaches))
        confirmed = len(updated.confirmed) + len(created.confirmed)
        if confirmed:
            self._after_commit(f"{where} metrics", self._metrics.penalty_confirmed, confirmed)
        to_broadcast = [*updated.to_broadcast, *created.to_broadcast]
        self._after_commit(f"{where} broadcasts", self._broadcast, to_broadcast)
        self._notify(True, e.hash, e.height)
        self._claims_step("block", lambda c: c.block_connected(e.hash, e.height, e.txids))

    def _block_disconnected(self, e: BlockDisconnected) -> None:
        pointer = self._tip.block
        if pointer is None or e.hash != pointer.hash:
            raise RuntimeError(f"disconnected block {e.hash} is not the processed tip")
        parent = self._recent.parent_of(pointer)
        batch = Batch()
        outcome = self._responder.block_disconnected(e.hash, e.height, batch)
        self._watcher.block_disconnected(e.hash)
        self._pointer.rewind(batch, pointer, parent)
        self._commit(batch, {}, outcome)
        self._tip.processed(parent)
        log.info("block disconnected height=%d block=%s", e.height, e.hash)
        where = f"disconnected block height={e.height} block={e.hash}:"
        self._after_commit(f"{where} broadcasts", self._broadcast, outcome.to_broadcast)
        self._notify(False, e.hash, e.height)
        self._claims_step("reorg", lambda c: c.block_disconnected(e.hash, e.height))

    def _appointment_added(self, e: _AppointmentAdded) -> None:
        batch = Batch()
        found = self._watcher.appointment_added(e.record, batch)
        if not len(batch):
            return
        created = self._responder.handle_breaches(found.breaches, self.tip_height, frozenset(), batch)
        self._commit(batch, found.refunds())
        where = f"appointment uuid={e.record.uuid}:"
        if found.breaches:
            self._after_commit(f"{where} metrics", self._metrics.breach_seen, len(found.breaches))
        self._after_commit(f"{where} broadcasts", self._broadcast, created.to_broadcast)

    # -- steps -----------------------------------------------------------------------------------

    def _commit(self, batch: Batch, refunds: SlotRefunds, outcome: ResponderOutcome | None = None) -> None:
        """Commits ``batch``; when slots go back, through the ledger, which adds them to the same write."""
        released = {user: list(items) for user, items in refunds.items()}
        if outcome is not None:
            for user, items in outcome.refunds().items():
                released.setdefault(user, []).extend(items)
        if released:
            self._ledger.release(batch, released)
        else:
            self._store.commit(batch)

    def _broadcast(self, trackers: Iterable[TrackerRecord]) -> None:
        """Broadcasts (the Responder queues what bitcoind did not take for ``_retry_broadcasts``)."""
        delivered = self._responder.broadcast(trackers)
        if delivered:
            self._after_commit("metrics", self._metrics.penalty_broadcast, delivered)

    def _retry_broadcasts(self) -> None:
        """The broadcast retry queue's turn (about every second while it is not empty)."""
        try:
            delivered = self._responder.retry_broadcasts()
            if delivered:
                self._after_commit("metrics", self._metrics.penalty_broadcast, delivered)
        except Exception:
            log.exception("broadcast retry failed, again soon n=%d", self._responder.pending_broadcasts)
        if self._responder.pending_broadcasts:
            self._stop.wait(min(1.0, self.config.retry_max_delay))

    # -- a paid tower's claims (after everything else; never able to stop the thread) --------------

    def _claims_step(self, what: str, step: Callable[[ClaimsStep], None]) -> None:
        if self._claims is None:
            return
        try:
            step(self._claims)
        except Exception:  # the runner contains its own failures; this is the last line of defence
            log.exception("claims step failed step=%s", what)

    def _claims_pending(self) -> bool:
        return self._claims is not None and self._claims.pending

    def _retry_claims(self) -> None:
        """Blocks the claims could not read yet are tried again every few seconds while idle."""
        if not self._claims_pending() or time.monotonic() < self._claims_retry_at:
            return
        self._claims_retry_at = time.monotonic() + CLAIMS_RETRY_SECONDS
        self._claims_step("retry", lambda c: c.retry_pending())

    def _run_call(self, event: _Call) -> None:
        try:
            event.result = event.fn()
        except Exception as e:  # handed to the caller, never raised here
            event.error = e
        finally:
            event.done.set()

    def _notify(self, connected: bool, block_hash: BlockHash, height: int) -> None:
        for listener in self._listeners:
            try:
                if connected:
                    listener.block_connected(block_hash, height)
                else:
                    listener.block_disconnected(block_hash, height)
            except Exception:  # a listener's failure must not stop the tower from watching
                log.exception("block listener failed height=%d listener=%r", height, listener)
