"""The tower's claims, run on the engine thread: each block of the best chain moves them, and what they ask
for (a broadcast, a fee bump) is done through the Carrier.

Order for a connected block at height ``h`` (after the Watcher, the Responder and the Gatekeeper):

1. which live channel's funding output the block spends (``teos.payments.spends``: the claim by its txid,
   anything else only in blocks above the channel's expiry, by reading the raw block);
2. every OPEN channel now due (paid, ``expiry - h <= claim_margin``) is frozen and its claim recorded, as
   if decided at ``h - 1``, so that step 3 treats ``h`` as its first block;
3. the block is fed to every live claim (``Claimer.on_event``): confirmations, conflicts, rebroadcast and
   fee-bump schedule;
4. channels reaching their expiry without a payment become UNPAID;
5. the actions: BROADCAST sends the claim again, BUMP sends a child paying from the tower's output (CPFP);
   each result is fed back to the claim;
6. channels closed long ago (``RETENTION_BLOCKS`` past their expiry) are forgotten.

A disconnected block is fed to every live claim (a claim reorged out is broadcast again).

Failure containment: nothing here may stop the engine thread or make it wait. Only step 1 can fail as a
whole (bitcoind did not give the raw block); the block then stays in a backlog and is tried again, in
order, before the next block (``retry_pending``; the engine also calls it while idle), so no block is
missed and none is seen twice. A failure of one claim in steps 2 to 6 is logged with the channel and the
step, counted, and leaves the others alone; the claim is looked at again at the next block.

Restarts: ``resume(tip)`` feeds every live claim the blocks it missed (it was written before the engine's
pointer moved on, e.g. killed between the two), decides the claims due at ``tip`` (a tower that was down
near expiry claims at once) and broadcasts every live claim again.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common.channel import ChannelError, ChannelId
from common.types import BlockHash, Txid
from teos.payments import claims
from teos.payments.claims import Action, ActionKind, Claimer
from teos.payments.spends import spends_in_block
from teos.payments.state import ChannelStatus, ClaimRecord
from teos.payments.store import Snapshot

log = logging.getLogger(__name__)

RETENTION_BLOCKS = 4_320  # a closed channel's state is kept this long after its expiry (clients can read it)
MAX_CATCH_UP = 4_032  # blocks a claim is brought forward by at start, at most (two weeks)
MAX_READ_ATTEMPTS = 20  # tries at reading one block before going on without it
MAX_BACKLOG = 10_000  # blocks waiting for step 1 (each a few dozen bytes); older ones are dropped, logged


# -- seams ----------------------------------------------------------------------------------------------


class BlockRPC(Protocol):
    """The bitcoind calls block reading needs (``teos.chain.bitcoind.BitcoindClient`` satisfies it)."""

    def call(self, method: str, *params: Any) -> Any: ...


class BlockSource(Protocol):
    def block_hash(self, height: int) -> BlockHash: ...

    def block_txids(self, block_hash: BlockHash) -> Sequence[Txid]: ...

    def raw_block(self, block_hash: BlockHash) -> bytes: ...


class RpcBlocks:
    """``BlockSource`` over bitcoind's JSON-RPC. Any failure (transport, RPC error, an answer of the wrong
    shape) raises: the runner keeps the block and tries again."""

    def __init__(self, rpc: BlockRPC) -> None:
        self.rpc = rpc

    def block_hash(self, height: int) -> BlockHash:
        return BlockHash.from_hex(self.rpc.call("getblockhash", height))

    def block_txids(self, block_hash: BlockHash) -> Sequence[Txid]:
        data = self.rpc.call("getblock", block_hash.hex(), 1)
        return tuple(Txid.from_hex(t) for t in data["tx"])

    def raw_block(self, block_hash: BlockHash) -> bytes:
        data = self.rpc.call("getblock", block_hash.hex(), 0)
        if not isinstance(data, str):
            raise ValueError(f"getblock verbosity 0 answered {type(data).__name__}, not hex")
        return bytes.fromhex(data)


class _Status(Protocol):
    @property
    def delivered(self) -> bool: ...


class SendOutcome(Protocol):
    """What ``Broadcaster.send`` returns (``teos.chain.carrier``'s result satisfies it)."""

    @property
    def status(self) -> _Status: ...

    @property
    def message(self) -> str: ...


class Broadcaster(Protocol):
    """Hands a transaction to bitcoind (``teos.chain.carrier.Carrier`` satisfies it)."""

    def send(self, raw_tx: bytes, txid: Txid) -> Any: ...


class ClaimEvents(Protocol):
    """Counters for /metrics (``teos.metrics.Metrics`` satisfies it)."""

    def claim_broadcast(self, delivered: bool) -> None: ...

    def claim_bumped(self) -> None: ...

    def claim_failure(self, step: str) -> None: ...


class NoClaimEvents:
    def claim_broadcast(self, delivered: bool) -> None:
        pass

    def claim_bumped(self) -> None:
        pass

    def claim_failure(self, step: str) -> None:
        pass


class GrantForgetter(Protocol):
    """Deletes a forgotten channel's grant markers (the Gatekeeper owns them)."""

    def forget_grants(self, channel_id: ChannelId) -> None: ...


# -- the runner -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Connected:
    hash: BlockHash
    height: int
    txids: tuple[Txid, ...]


@dataclass(frozen=True)
class _Disconnected:
    hash: BlockHash
    height: int


@dataclass(frozen=True)
class ClaimOutcome:
    """What an operator's ``claim`` did: the claim, or why there is none."""

    channel_id: ChannelId
    record: ClaimRecord | None
    error: str | None = None


class ClaimRunner:
    """Drives the ``Claimer`` from the engine thread (see the module docstring). Not thread-safe: every
    call comes from the engine thread, operators' claims included."""

    def __init__(
        self,
        claimer: Claimer,
        carrier: Broadcaster,
        blocks: BlockSource,
        grants: GrantForgetter | None = None,
        events: ClaimEvents | None = None,
    ) -> None:
        self.claimer = claimer
        self.store = claimer.store
        self.carrier = carrier
        self.blocks = blocks
        self.grants = grants
        self.events: ClaimEvents = events if events is not None else NoClaimEvents()
        self._backlog: deque[_Connected | _Disconnected] = deque()
        self._attempts = 0  # failed reads of the block at the head of the backlog

    # -- what the engine calls ------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Blocks wait for bitcoind (``retry_pending`` should be called again soon)."""
        return bool(self._backlog)

    def resume(self, tip: int) -> None:
        """At start, from the engine's last processed block ``tip`` (see the module docstring)."""
        self._guard("catch-up", None, lambda: self._catch_up(tip))
        for state in self._guarded_list("due", lambda: self.claimer.due(tip)):
            self._start(state.channel_id, tip)
        for cid in self._guarded_list("closing", self._closing):  # decided, perhaps not yet recorded
            self._start(cid, tip)
        live = [s.record for s in self.store.claims() if not s.record.terminal]
        if live:
            log.info("claims resumed n=%d tip=%d", len(live), tip)
        for record in live:
            self._act(record.channel_id, claims.begin(record), tip)

    def block_connected(self, block_hash: BlockHash, height: int, txids: Sequence[Txid]) -> None:
        self._enqueue(_Connected(block_hash, height, tuple(txids)))

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None:
        self._enqueue(_Disconnected(block_hash, height))

    def retry_pending(self) -> None:
        """Processes the blocks waiting, in order, until one cannot be read yet. A block that still cannot
        be read after ``MAX_READ_ATTEMPTS`` tries is processed without reading it (claims are still
        found by txid; only a refund in that block goes unseen), so a block bitcoind will never serve
        cannot hold the claims back for good."""
        while self._backlog:
            event = self._backlog[0]
            try:
                if isinstance(event, _Connected):
                    self._connected(event, read=self._attempts < MAX_READ_ATTEMPTS)
                else:
                    self._disconnected(event)
            except Exception as e:  # step 1 only: bitcoind could not give the block; try again later
                self._attempts += 1
                log.warning(
                    "claims: block not processed yet, will retry height=%d block=%s attempt=%d waiting=%d "
                    "error=%r",
                    event.height,
                    event.hash,
                    self._attempts,
                    len(self._backlog),
                    e,
                )
                self.events.claim_failure("read_block")
                return
            self._attempts = 0
            self._backlog.popleft()

    # -- operators --------------------------------------------------------------------------------------

    def claim(self, channel_id: ChannelId, tip: int) -> ClaimOutcome:
        """Claims ``channel_id`` now (the operator asked); broadcasts it. Idempotent for a closing channel."""
        try:
            record = self.claimer.start_claim(channel_id, tip)
        except ChannelError as e:
            return ClaimOutcome(channel_id, None, str(e))
        log.info("claim requested by the operator channel=%s amount=%d", channel_id, record.amount)
        self._act(channel_id, claims.begin(record), tip)
        snap = self.store.get_claim(channel_id)
        return ClaimOutcome(channel_id, snap.record if snap is not None else record)

    def claim_all(self, tip: int) -> list[ClaimOutcome]:
        """Claims every OPEN channel with a payment."""
        paid = [
            s.state.channel_id
            for s in self.store.all()
            if s.state.status is ChannelStatus.OPEN and s.state.amount > 0
        ]
        return [self.claim(cid, tip) for cid in paid]

    # -- steps ----------------------------------------------------------------------------------------

    def _enqueue(self, event: _Connected | _Disconnected) -> None:
        if len(self._backlog) >= MAX_BACKLOG:
            dropped = self._backlog.popleft()
            log.error("claims: backlog full, dropped block height=%d block=%s", dropped.height, dropped.hash)
        self._backlog.append(event)
        self.retry_pending()

    def _connected(self, e: _Connected, read: bool = True) -> None:
        h = e.height
        channels = self.store.all()  # one read of every channel per block, shared by the steps
        spends = self._spends(e.hash, h, e.txids, channels, read)  # may raise: nothing changed yet
        for state in self._guarded_list("due", lambda: self.claimer.due(h, channels)):
            self._start(state.channel_id, h - 1)
        todo: dict[ChannelId, list[Action]] = {}
        for snap in self._guarded_list("claims", self.store.claims):
            if snap.record.terminal:
                continue
            cid = snap.record.channel_id
            event = claims.BlockConnected(h, spends.get(cid))
            result = self._guard("block", cid, functools.partial(self.claimer.on_event, cid, event))
            if result is not None and result[1]:
                todo[cid] = result[1]
        self._guard("unpaid", None, lambda: self.claimer.expire_unpaid(h, channels))
        for cid, actions in todo.items():
            self._act(cid, actions, h)
        self._forget_old(h, channels)

    def _disconnected(self, e: _Disconnected) -> None:
        todo: dict[ChannelId, list[Action]] = {}
        for snap in self._guarded_list("claims", self.store.claims):
            if snap.record.terminal:
                continue
            cid = snap.record.channel_id
            event = claims.BlockDisconnected(e.height)
            result = self._guard("reorg", cid, functools.partial(self.claimer.on_event, cid, event))
            if result is not None and result[1]:
                todo[cid] = result[1]
        for cid, actions in todo.items():
            self._act(cid, actions, e.height - 1)

    def _spends(
        self,
        block_hash: BlockHash,
        height: int,
        txids: Sequence[Txid],
        channels: list[Snapshot],
        read: bool = True,
    ) -> dict[ChannelId, Txid]:
        """Step 1: the live channels whose funding output this block spends, and by which transaction."""
        live = [s.state for s in channels if s.state.status in (ChannelStatus.OPEN, ChannelStatus.CLOSING)]
        if not live:
            return {}
        in_block = set(txids)
        claim_txids = {s.record.channel_id: s.record.txid for s in self.store.claims()}
        found: dict[ChannelId, Txid] = {}
        scan: dict[tuple[Txid, int], ChannelId] = {}
        for state in live:
            cid = state.channel_id
            claim_txid = claim_txids.get(cid)
            if claim_txid is not None and claim_txid in in_block:
                found[cid] = claim_txid
            elif height > state.params.expiry:  # the refund branch is open: anything may spend it
                scan[(cid.txid, cid.vout)] = cid
        if scan and read:
            found.update(spends_in_block(self.blocks.raw_block(block_hash), scan))
        elif scan:
            log.error("claims: block never read, a refund in it would go unseen height=%d block=%s",
                      height, block_hash)  # fmt: skip
        return found

    def _catch_up(self, tip: int) -> None:
        """Feeds each live claim the blocks between its own tip and the engine's (read from bitcoind)."""
        live = [s.record for s in self.store.claims() if not s.record.terminal and s.record.tip < tip]
        if not live:
            return
        start = max(min(r.tip for r in live) + 1, tip - MAX_CATCH_UP + 1)
        log.info("claims catching up from height=%d to height=%d n=%d", start, tip, len(live))
        for h in range(start, tip + 1):
            block_hash = self.blocks.block_hash(h)
            spends = self._spends(block_hash, h, self.blocks.block_txids(block_hash), self.store.all())
            for record in live:
                cid = record.channel_id
                event = claims.BlockConnected(h, spends.get(cid))
                self._guard("catch-up", cid, functools.partial(self.claimer.on_event, cid, event))

    def _start(self, cid: ChannelId, tip: int) -> None:
        self._guard("start", cid, lambda: self.claimer.start_claim(cid, tip))

    def _closing(self) -> list[ChannelId]:
        return [s.state.channel_id for s in self.store.all() if s.state.status is ChannelStatus.CLOSING]

    def _act(self, cid: ChannelId, actions: list[Action], tip: int) -> None:
        for action in actions:
            if action.kind is ActionKind.BROADCAST:
                self._guard("broadcast", cid, lambda: self._broadcast(cid, tip))
            elif action.kind is ActionKind.BUMP:
                self._guard("bump", cid, functools.partial(self._bump, cid, action.fee_rate))

    def _broadcast(self, cid: ChannelId, tip: int) -> None:
        snap = self.store.get_claim(cid)
        if snap is None or snap.record.terminal:
            return
        record = snap.record
        result = self.carrier.send(record.raw_tx, record.txid)
        delivered = bool(result.status.delivered)
        self.events.claim_broadcast(delivered)
        level = logging.INFO if delivered else logging.WARNING
        log.log(
            level,
            "claim broadcast channel=%s txid=%s amount=%d deadline=%d tip=%d delivered=%s%s",
            cid,
            record.txid,
            record.amount,
            record.deadline,
            tip,
            delivered,
            "" if delivered else f" answer={getattr(result, 'message', '')!r}",
        )
        self.claimer.on_event(cid, claims.BroadcastResult(tip, delivered))

    def _bump(self, cid: ChannelId, fee_rate: int) -> None:
        snap = self.store.get_claim(cid)
        if snap is None or snap.record.terminal:
            return
        try:
            child = self.claimer.bump(snap.record, fee_rate)
        except ChannelError as e:
            log.warning("claim fee bump impossible channel=%s fee_rate=%d: %s", cid, fee_rate, e)
            return
        result = self.carrier.send(child.raw, child.txid)
        self.events.claim_bumped()
        log.info(
            "claim fee bumped channel=%s child=%s package_fee_rate=%d delivered=%s",
            cid,
            child.txid,
            fee_rate,
            bool(result.status.delivered),
        )

    def _forget_old(self, height: int, channels: list[Snapshot]) -> None:
        closed = (ChannelStatus.CLAIMED, ChannelStatus.REFUNDED, ChannelStatus.UNPAID)
        for snap in channels:
            state = snap.state
            if state.status in closed and height >= state.params.expiry + RETENTION_BLOCKS:
                self._guard("forget", state.channel_id, functools.partial(self._forget, state.channel_id))

    def _forget(self, cid: ChannelId) -> None:
        # The channel's records go first, its grant markers last: a crash in between leaves markers with
        # no channel (harmless), never a channel whose last grant has lost its marker (granted again).
        self.store.forget(cid)
        if self.grants is not None:
            self.grants.forget_grants(cid)
        log.info("closed channel forgotten channel=%s", cid)

    # -- containment ----------------------------------------------------------------------------------

    def _guard(self, step: str, cid: ChannelId | None, fn: Callable[[], Any]) -> Any:
        """Runs one step for one claim; a failure is logged with its context and counted, never raised."""
        try:
            result = fn()
            return True if result is None else result
        except Exception:
            log.exception("claim step failed step=%s channel=%s", step, cid)
            self.events.claim_failure(step)
            return None

    def _guarded_list(self, step: str, fn: Callable[[], list[Any]]) -> list[Any]:
        result = self._guard(step, None, fn)
        return result if isinstance(result, list) else []
