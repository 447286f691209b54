"""The tower engine: follows the chain, responds to breaches, and survives crashes, restarts and reorgs.

Threads. ``ChainMonitor`` (one walker thread, plus a ZMQ listener when configured) walks bitcoind's best
chain and puts typed events on the engine's inbox; the *engine thread* handles every event, one at a time,
in order. ``appointment_added`` (called by HTTP threads) only queues an event on the same inbox.

Order in which the parts see a block (on the engine thread):
1. Watcher: adds the block to the locator cache, finds triggered appointments, checks their blobs;
2. Responder: updates its trackers (confirmations, rebroadcasts, completions) and turns the block's
   breaches into trackers;
3. one atomic write: the Watcher's deletions, the Responder's trackers, both components' "last processed
   block" pointers (``m|last_block:watcher`` and ``:responder``, always equal) and the record of recent
   blocks; through ``SlotLedger.release`` when slots go back (completed trackers, invalid blobs);
4. penalty broadcasts (after the write, so a crash never leaves a broadcast penalty untracked);
5. BlockListeners (the Gatekeeper's expiry), in the order given.
A disconnected block: Responder (penalties unconfirmed, disputes back under watch), Watcher (cache),
write, broadcasts, listeners.

Crashes. Every block's effects are one batch with the pointer, so after a crash the engine resumes from
the last block written: the blocks after it are replayed (breaches that happened while the tower was down
are responded to), and a pointer no longer on the best chain is walked back to the fork point using the
stored record of recent blocks. At start the locator cache is rebuilt from the last blocks processed,
their locators are looked up again, and every unconfirmed penalty is broadcast again.

Failures. A thread never dies: errors are logged and the step is retried with backoff; while bitcoind
does not answer, ``bitcoind_reachable`` is False and the engine catches up when it returns.
``start()`` raises ``BootstrapError`` when the tower cannot run against this bitcoind (another network,
pruned blocks still needed, or not reachable within the startup retry policy).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.appointment import slots_for
from common.tx import decode_transaction
from common.types import BlockHash, Txid, UserId, Uuid
from teos.chain.bitcoind import (
    TRANSIENT_ERRORS,
    BitcoindClient,
    BitcoindError,
    Cancelled,
    RetryPolicy,
    retry_call,
)
from teos.chain.carrier import Carrier
from teos.chain.monitor import BlockConnected, BlockDisconnected, BlockRef, ChainEvent, ChainMonitor, Stop
from teos.interfaces import BlockListener, SlotLedger
from teos.responder.responder import Responder, ResponderOutcome, released_slots
from teos.storage import keys
from teos.storage.codec import (
    AppointmentRecord,
    CodecError,
    TrackerRecord,
    decode_block_pointer,
    encode_block_pointer,
)
from teos.storage.store import Batch, Store
from teos.watcher.locator_cache import LocatorCache, block_locators
from teos.watcher.watcher import Watcher, WatcherOutcome

log = logging.getLogger(__name__)

WATCHER = "watcher"
RESPONDER = "responder"
ENGINE = "engine"  # owner of the recent-blocks record


class BootstrapError(Exception):
    """The engine cannot start against this bitcoind; ``message`` says why (the daemon prints it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class EngineConfig:
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
    recent_blocks: int = 288  # depth of the stored record of processed blocks (reorgs while down)
    max_pending_blocks: int = 8  # blocks the monitor may queue ahead of the engine thread


class EngineMetrics(Protocol):
    """Event counters the engine reports to (``teos.admin.Metrics`` satisfies it)."""

    def breach_seen(self, n: int = 1) -> None: ...

    def penalty_broadcast(self, n: int = 1) -> None: ...

    def penalty_confirmed(self, n: int = 1) -> None: ...

    def block_processed(self, n: int = 1) -> None: ...


class _NoMetrics:
    def breach_seen(self, n: int = 1) -> None:
        pass

    def penalty_broadcast(self, n: int = 1) -> None:
        pass

    def penalty_confirmed(self, n: int = 1) -> None:
        pass

    def block_processed(self, n: int = 1) -> None:
        pass


@dataclass
class _CatchUp:
    """Progress of a catch-up over many blocks (after downtime), logged and shown in ``status()``."""

    start_height: int
    start_time: float
    last_log: float

    def rate(self, height: int, now: float) -> float:
        elapsed = now - self.start_time
        return (height - self.start_height) / elapsed if elapsed > 0 else 0.0


CATCH_UP_THRESHOLD = 6  # blocks behind bitcoind's tip from which progress is logged
CATCH_UP_LOG_EVERY = 5.0  # seconds between progress lines


def decode_penalty(raw: bytes) -> Txid:
    """The txid of a raw penalty transaction; ValueError (TxDecodeError) when it is not one."""
    return decode_transaction(raw).txid


@dataclass(frozen=True)
class _AppointmentAdded:
    record: AppointmentRecord
    dispute_txid: Txid


_Event = ChainEvent | _AppointmentAdded


class _Inbox:
    """The engine thread's queue. Block events take a slot (back-pressure on the monitor)."""

    def __init__(self, capacity: int, stop: threading.Event) -> None:
        self.queue: queue.Queue[_Event] = queue.Queue()
        self._slots = threading.Semaphore(capacity)
        self._stop = stop

    def put(self, event: ChainEvent) -> None:
        if isinstance(event, BlockConnected | BlockDisconnected):
            while not self._slots.acquire(timeout=0.2):
                if self._stop.is_set():
                    return  # stopping: the block is replayed from the stored pointer next time
        self.queue.put(event)

    def put_appointment(self, event: _AppointmentAdded) -> None:
        self.queue.put(event)

    def block_done(self) -> None:
        self._slots.release()


class Engine:
    """Watcher + Responder + chain monitor, and the ``ChainView`` the user side reads."""

    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        bitcoind: BitcoindClient,
        ledger: SlotLedger,
        listeners: Sequence[BlockListener] = (),
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.config = config
        self._metrics: EngineMetrics = metrics if metrics is not None else _NoMetrics()
        self._catch_up: _CatchUp | None = None
        self._last_tip_check = 0.0
        self._store = store
        self._bitcoind = bitcoind
        self._ledger = ledger
        self._listeners = list(listeners)
        self._stop = threading.Event()
        self._inbox = _Inbox(config.max_pending_blocks, self._stop)
        self._cache = LocatorCache(config.locator_cache_size)
        self._watcher = Watcher(store, self._cache, decode_penalty)
        self._carrier = Carrier(bitcoind)
        self._responder = Responder(
            store, self._carrier, config.rebroadcast_after, config.irrevocable_confirmations
        )
        self._monitor = ChainMonitor(
            bitcoind,
            [self._inbox],
            config.poll_interval,
            config.zmq_url,
            on_reachability=self._set_reachable,
            retry_max_delay=config.retry_max_delay,
        )
        self._thread: threading.Thread | None = None
        self._pointer: BlockRef | None = None
        self._reachable = False
        self._retry_broadcast: dict[Uuid, TrackerRecord] = {}
        self._started = False

    # -- ChainView -------------------------------------------------------------------------------

    @property
    def bitcoind_reachable(self) -> bool:
        return self._reachable

    @property
    def tip_height(self) -> int:
        pointer = self._pointer
        return pointer.height if pointer is not None else 0

    def breach_in_cache(self, record: AppointmentRecord) -> Txid | None:
        cached = self._watcher.breach_in_cache(record)
        return cached.txid if cached is not None else None

    def appointment_added(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        self._inbox.put_appointment(_AppointmentAdded(record, dispute_txid))

    def status(self) -> dict[str, Any]:
        """A snapshot for the admin API: where each component is and whether bitcoind answers."""
        pointer = self._pointer
        seen = self._monitor.best_height_seen
        processed = pointer.height if pointer is not None else -1
        block = {"block_hash": pointer.hash.hex() if pointer else None, "height": processed}
        return {
            "bitcoind_reachable": self._reachable,
            "tip_height_seen": seen,
            "watcher": dict(block),
            "responder": dict(block),
            "n_trackers": self._store.count(keys.TRACKER),
            "catching_up": seen > processed,
            "blocks_behind": max(seen - processed, 0),
            "catch_up": self._catch_up_status(processed, seen),
            "seconds_since_tip_check": self._monitor.seconds_since_tip_check(),
        }

    def _catch_up_status(self, processed: int, seen: int) -> dict[str, Any] | None:
        c = self._catch_up
        if c is None:
            return None
        return {
            "from_height": c.start_height,
            "to_height": seen,
            "done": processed - c.start_height,
            "total": seen - c.start_height,
            "blocks_per_second": round(c.rate(processed, time.monotonic()), 2),
        }

    def _track_catch_up(self, height: int) -> None:
        """Logs progress (blocks done of total, rate) while far behind bitcoind's tip."""
        seen = self._monitor.best_height_seen
        now = time.monotonic()
        c = self._catch_up
        if c is None:
            if seen - height >= CATCH_UP_THRESHOLD:
                self._catch_up = _CatchUp(height - 1, now, now)
                log.info("catching up from height=%d to height=%d blocks=%d",
                         height - 1, seen, seen - height + 1)  # fmt: skip
            return
        if height >= seen:
            log.info("caught up height=%d blocks=%d rate=%.1f/s", height, height - c.start_height,
                     c.rate(height, now))  # fmt: skip
            self._catch_up = None
        elif now - c.last_log >= CATCH_UP_LOG_EVERY:
            c.last_log = now
            log.info("catching up done=%d total=%d height=%d rate=%.1f/s", height - c.start_height,
                     seen - c.start_height, height, c.rate(height, now))  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Checks bitcoind, resumes from the stored pointer, rebuilds the cache, starts the threads."""
        if self._started:
            return
        self._stop.clear()
        pointer, known = self._bootstrap()
        self._pointer = pointer
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()
        self._monitor.start(pointer, known)
        self._started = True
        log.info("engine started height=%d block=%s", pointer.height, pointer.hash)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the monitor and the engine thread (the block in hand is finished or not written)."""
        if not self._started:
            return
        self._stop.set()
        self._monitor.stop(timeout)
        self._inbox.queue.put(Stop())
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("engine thread did not stop in time")
        self._started = False
        self._bitcoind.close()

    def wake(self) -> None:
        """Looks at bitcoind's tip now instead of at the next poll."""
        self._monitor.wake()

    def _set_reachable(self, value: bool) -> None:
        if value != self._reachable:
            log.info("bitcoind reachable=%s", value)
        self._reachable = value

    # -- bootstrap -------------------------------------------------------------------------------

    def _rpc(self, fn: Callable[[], Any]) -> Any:
        def on_error(e: BaseException, delay: float) -> None:
            self._set_reachable(False)
            log.warning("bitcoind not ready, retrying in %.1fs error=%s", delay, e)

        try:
            result = retry_call(fn, self._stop, self.config.startup_retry, on_error=on_error)
        except TRANSIENT_ERRORS as e:
            raise BootstrapError(f"bitcoind did not answer: {e}") from e
        except Cancelled as e:
            raise BootstrapError("stopped while starting") from e
        self._set_reachable(True)
        return result

    def _bootstrap(self) -> tuple[BlockRef, list[BlockRef]]:
        info = self._rpc(self._bitcoind.get_blockchain_info)
        if info.chain != self.config.btc_network:
            raise BootstrapError(
                f"bitcoind is on network {info.chain!r} but the tower is configured for "
                f"{self.config.btc_network!r}"
            )
        stored_network = self._store.get(keys.META_NETWORK)
        if stored_network is not None and stored_network.decode("ascii") != info.chain:
            raise BootstrapError(
                f"the database at {self._store.path} belongs to network {stored_network.decode()!r}, "
                f"bitcoind is on {info.chain!r}"
            )
        pointer = self._read_pointer()
        if pointer is None:
            pointer = self._first_start()
        elif info.pruned and pointer.height + 1 < info.prune_height:
            raise BootstrapError(
                f"bitcoind has pruned blocks the tower still needs: last processed height {pointer.height}, "
                f"blocks kept from height {info.prune_height}; resync bitcoind or raise its prune target"
            )
        if stored_network is None:
            batch = Batch()
            batch.put(keys.META_NETWORK, info.chain.encode("ascii"))
            self._store.commit(batch)
        known = self._read_recent()
        self._rebuild_cache(pointer, known)
        return pointer, known

    def _first_start(self) -> BlockRef:
        best = self._rpc(self._bitcoind.get_best_block_hash)
        header = self._rpc(functools.partial(self._bitcoind.get_block_header, best))
        ref = BlockRef(header.hash, header.height, header.prev_hash)
        batch = Batch()
        self._write_pointer(batch, ref)
        self._store.commit(batch)
        log.info("first start: watching from the current tip height=%d block=%s", ref.height, ref.hash)
        return ref

    def _read_pointer(self) -> BlockRef | None:
        value = self._store.get(keys.meta_last_block(WATCHER))
        if value is None:
            return None
        block_hash, height = decode_block_pointer(value)
        stored = self._store.get(keys.meta_recent_block(ENGINE, height))
        prev = None
        if stored is not None and stored[:32] == block_hash.raw:
            prev = BlockHash(stored[32:64])
        else:
            prev = self._rpc(functools.partial(self._bitcoind.get_block_header, block_hash)).prev_hash
        return BlockRef(block_hash, height, prev)

    def _read_recent(self) -> list[BlockRef]:
        out = []
        for _, value in self._store.iterate(keys.meta_recent_blocks(ENGINE)):
            try:
                out.append(_decode_recent(value))
            except CodecError:
                log.error("bad recent-block record")
        return out

    def _rebuild_cache(self, pointer: BlockRef, known: Sequence[BlockRef]) -> None:
        by_hash = {r.hash: r for r in known}
        ref: BlockRef | None = pointer
        while ref is not None and len(self._cache) < self._cache.size:
            current = ref
            try:
                block = self._rpc(functools.partial(self._bitcoind.get_block, current.hash))
            except BitcoindError as e:  # e.g. pruned: the cache is then shorter
                log.warning("cannot rebuild locator cache beyond height=%d error=%s", current.height, e)
                break
            self._cache.add_old_block(block.hash, block.height, block_locators(block.txids))
            if block.prev_hash is None:
                break
            ref = by_hash.get(block.prev_hash) or BlockRef(block.prev_hash, block.height - 1, None)
        log.info("locator cache rebuilt blocks=%d", len(self._cache))

    # -- engine thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._with_retry("start-up checks", self._startup_work)
        while not self._stop.is_set():
            try:
                event = self._inbox.queue.get(timeout=0.5 if self._retry_broadcast else None)
            except queue.Empty:
                self._retry_pending_broadcasts()
                continue
            if isinstance(event, Stop):
                break
            try:
                self._with_retry(type(event).__name__, functools.partial(self._handle, event))
            finally:
                if isinstance(event, BlockConnected | BlockDisconnected):
                    self._inbox.block_done()
            if self._retry_broadcast:
                self._retry_pending_broadcasts()

    def _with_retry(self, what: str, step: Callable[[], None]) -> None:
        """Runs ``step`` until it succeeds or the engine stops; nothing is written by a failed step."""
        delay = 0.2
        while not self._stop.is_set():
            try:
                step()
                return
            except TRANSIENT_ERRORS as e:
                self._set_reachable(False)
                log.warning("%s: bitcoind unavailable, retrying in %.1fs error=%s", what, delay, e)
            except Exception:
                log.exception("%s failed, retrying in %.1fs", what, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.config.retry_max_delay)

    def _startup_work(self) -> None:
        batch = Batch()
        outcome = self._watcher.recheck_cached_blocks(batch)
        tip = self.tip_height
        responded = self._responder.handle_breaches(outcome.breaches, tip, frozenset(), batch)
        if len(batch):
            self._commit(batch, _invalid_released(outcome), ResponderOutcome())
        pending = {t.uuid: t for t in self._responder.unconfirmed()}
        for t in responded.to_broadcast:
            pending[t.uuid] = t
        if pending:
            log.info("broadcasting unconfirmed penalties again n=%d", len(pending))
        self._broadcast(list(pending.values()))
        pointer = self._pointer
        if pointer is not None:
            for listener in self._listeners:
                self._call_listener(listener.block_connected, pointer.hash, pointer.height)

    def _handle(self, event: _Event) -> None:
        if isinstance(event, BlockConnected):
            self._block_connected(event)
        elif isinstance(event, BlockDisconnected):
            self._block_disconnected(event)
        elif isinstance(event, _AppointmentAdded):
            self._appointment_added(event)

    def _block_connected(self, e: BlockConnected) -> None:
        pointer = self._pointer
        if pointer is not None and e.prev_hash != pointer.hash:
            # The monitor walks from our pointer, so this means a bug; refuse rather than corrupt.
            raise RuntimeError(f"block {e.hash} does not extend the processed tip {pointer.hash}")
        batch = Batch()
        txids = frozenset(e.txids)
        found = self._watcher.block_connected(e.hash, e.height, e.txids, batch)
        updated = self._responder.block_connected(e.hash, e.height, txids, batch)
        created = self._responder.handle_breaches(found.breaches, e.height, txids, batch)
        ref = BlockRef(e.hash, e.height, e.prev_hash)
        self._write_pointer(batch, ref)
        updated.to_broadcast.extend(created.to_broadcast)
        self._commit(batch, _invalid_released(found), updated)
        self._pointer = ref
        self._metrics.block_processed()
        if found.breaches:
            self._metrics.breach_seen(len(found.breaches))
        confirmed = len(updated.confirmed) + len(created.confirmed)
        if confirmed:
            self._metrics.penalty_confirmed(confirmed)
        self._track_catch_up(e.height)
        self._broadcast(updated.to_broadcast)
        for listener in self._listeners:
            self._call_listener(listener.block_connected, e.hash, e.height)

    def _block_disconnected(self, e: BlockDisconnected) -> None:
        pointer = self._pointer
        if pointer is None or e.hash != pointer.hash:
            raise RuntimeError(f"disconnected block {e.hash} is not the processed tip")
        parent = self._parent_of(pointer)
        batch = Batch()
        outcome = self._responder.block_disconnected(e.hash, e.height, batch)
        self._watcher.block_disconnected(e.hash)
        batch.delete(keys.meta_recent_block(ENGINE, e.height))
        self._write_pointer(batch, parent, record=False)
        self._commit(batch, {}, outcome)
        self._pointer = parent
        log.info("block disconnected height=%d block=%s", e.height, e.hash)
        self._broadcast(outcome.to_broadcast)
        for listener in self._listeners:
            self._call_listener(listener.block_disconnected, e.hash, e.height)

    def _appointment_added(self, e: _AppointmentAdded) -> None:
        batch = Batch()
        found = self._watcher.appointment_added(e.record, batch)
        if not len(batch):
            return
        created = self._responder.handle_breaches(found.breaches, self.tip_height, frozenset(), batch)
        self._commit(batch, _invalid_released(found), ResponderOutcome())
        if found.breaches:
            self._metrics.breach_seen(len(found.breaches))
        self._broadcast(created.to_broadcast)

    # -- steps -----------------------------------------------------------------------------------

    def _parent_of(self, ref: BlockRef) -> BlockRef:
        if ref.prev_hash is None:
            raise RuntimeError("cannot disconnect the genesis block")
        stored = self._store.get(keys.meta_recent_block(ENGINE, ref.height - 1))
        if stored is not None:
            parent = _decode_recent(stored)
            if parent.hash == ref.prev_hash:
                return parent
        header = self._bitcoind.get_block_header(ref.prev_hash)
        return BlockRef(header.hash, header.height, header.prev_hash)

    def _write_pointer(self, batch: Batch, ref: BlockRef, record: bool = True) -> None:
        pointer = encode_block_pointer(ref.hash, ref.height)
        batch.put(keys.meta_last_block(WATCHER), pointer)
        batch.put(keys.meta_last_block(RESPONDER), pointer)
        if record:
            batch.put(keys.meta_recent_block(ENGINE, ref.height), _encode_recent(ref))
            if ref.height >= self.config.recent_blocks:
                batch.delete(keys.meta_recent_block(ENGINE, ref.height - self.config.recent_blocks))

    def _commit(
        self, batch: Batch, invalid: Mapping[UserId, list[tuple[Uuid, int]]], outcome: ResponderOutcome
    ) -> None:
        released: dict[UserId, list[tuple[Uuid, int]]] = {u: list(v) for u, v in invalid.items()}
        for user, items in released_slots(outcome.released).items():
            released.setdefault(user, []).extend(items)
        if released:
            self._ledger.release(batch, released)
        else:
            self._store.commit(batch)

    def _broadcast(self, trackers: Sequence[TrackerRecord]) -> None:
        """Broadcasts; penalties bitcoind did not take because it was away are tried again soon."""
        retry, delivered = self._responder.broadcast(trackers)
        for t in retry:
            self._retry_broadcast[t.uuid] = t
        if delivered:
            self._metrics.penalty_broadcast(delivered)

    def _retry_pending_broadcasts(self) -> None:
        pending, self._retry_broadcast = self._retry_broadcast, {}
        live = [t for t in pending.values() if self._store.get(keys.tracker(t.uuid)) is not None]
        retry, delivered = self._responder.broadcast(live)
        for t in retry:
            self._retry_broadcast[t.uuid] = t
        if delivered:
            self._metrics.penalty_broadcast(delivered)
        if self._retry_broadcast:
            self._stop.wait(min(1.0, self.config.retry_max_delay))

    def _call_listener(
        self, fn: Callable[[BlockHash, int], None], block_hash: BlockHash, height: int
    ) -> None:
        try:
            fn(block_hash, height)
        except Exception:  # a listener's failure must not stop the tower from watching
            log.exception("block listener failed height=%d listener=%r", height, fn)

    def wait_processed(self, height: int, timeout: float) -> bool:
        """Waits until the engine has processed a block at ``height`` or above (tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.tip_height >= height:
                return True
            self._stop.wait(0.02)
        return self.tip_height >= height


def _invalid_released(outcome: WatcherOutcome) -> dict[UserId, list[tuple[Uuid, int]]]:
    out: dict[UserId, list[tuple[Uuid, int]]] = {}
    for record in outcome.invalid:
        out.setdefault(record.user_id, []).append((record.uuid, slots_for(len(record.encrypted_blob))))
    return out


def _encode_recent(ref: BlockRef) -> bytes:
    prev = ref.prev_hash.raw if ref.prev_hash is not None else bytes(32)
    return ref.hash.raw + prev + ref.height.to_bytes(4, "big")


def _decode_recent(value: bytes) -> BlockRef:
    if len(value) != 68:
        raise CodecError("bad recent-block record")
    prev = value[32:64]
    return BlockRef(
        BlockHash(value[:32]), int.from_bytes(value[64:], "big"), BlockHash(prev) if any(prev) else None
    )
