"""Claims: which payment the tower broadcasts, when, and the claim's life on chain as a pure state machine.

Which: the channel's last accepted payment. It has the highest amount, and the tower keeps no other (each
payment's signature replaces the previous one in the channel state).

When: once ``expiry - tip <= claim_margin`` (checked at every block and at start, so a tower that was
down claims at once when it returns), or when the operator asks. Deciding is a compare-and-swap of the
channel from OPEN to CLOSING: it freezes the amount, and a payment racing it loses its own CAS.

Deadline: the claim must be in a block at or below ``expiry``. From block ``expiry + 1`` the user's
refund is valid too and the two race (whoever pays more wins a mempool; whatever is mined first wins).

Life (``advance``; events are blocks connected and disconnected, with the transaction of each connected
block that spends the funding output, and the results of broadcast attempts)::

    PENDING --accepted--> BROADCAST --claim mined--> CONFIRMED --claim_confirmations deep--> COMPLETE
       |                      |   ^                    |
       |                      |   '---- reorged out ---'
       '----------------------+--other spend mined--> CONFLICTED --claim_confirmations deep--> LOST
                                  ^                        |
                                  '------ reorged out -----'

While unconfirmed, the claim is broadcast again every ``rebroadcast_blocks`` blocks; from ``bump_margin``
blocks before the deadline it is broadcast at every block and each block also asks for a fee bump: a child
spending the tower's own output (CPFP), at twice the previous package fee rate, capped by
``max_bump_fee_rate`` and by what the output can pay.

Can claims of several channels share one transaction? No. Each user signs SIGHASH_ALL over a transaction
with exactly one input, so the signature commits to the whole transaction: adding another channel's
input invalidates it. Letting users sign SIGHASH_SINGLE|ANYONECANPAY would allow batching, but it ties
channels together: one input spent by its user's refund after expiry (or one unconfirmed funding reorged
out) invalidates the whole batch right when deadlines are near, and the batch becomes a pinning target.
Fee bumps are per claim for the same reason (a child spending several claims dies with any of them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum

from common import channel, script, sighash
from common.channel import ChannelError, ChannelId
from common.tx import Transaction, TxIn, TxOut, decode_transaction
from common.types import Txid
from teos.payments.config import PaymentConfig
from teos.payments.state import ChannelState, ChannelStatus, ClaimRecord, ClaimStatus
from teos.payments.store import ChannelStore, Snapshot
from teos.payments.tower_key import TowerPaymentKey

log = logging.getLogger(__name__)

CPFP_SEQUENCE = 0xFFFFFFFD


# -- the pure machine -------------------------------------------------------------------------------------


class ActionKind(Enum):
    BROADCAST = "broadcast"  # send the claim (again)
    BUMP = "bump"  # send a child paying ``fee_rate`` for the package (CPFP)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    fee_rate: int = 0  # sat/kvB for the package, for BUMP


@dataclass(frozen=True)
class BlockConnected:
    height: int
    spender: Txid | None  # the transaction of this block spending the funding output, if any


@dataclass(frozen=True)
class BlockDisconnected:
    height: int  # the height of the block that was disconnected


@dataclass(frozen=True)
class BroadcastResult:
    tip: int
    accepted: bool  # bitcoind took it (or already had it)


ClaimEvent = BlockConnected | BlockDisconnected | BroadcastResult


@dataclass(frozen=True)
class ClaimPolicy:
    fee_rate: int  # the claim's own fee rate (the channel's)
    rebroadcast_blocks: int
    bump_margin: int
    max_bump_fee_rate: int
    confirmations: int

    @classmethod
    def from_config(cls, config: PaymentConfig) -> ClaimPolicy:
        return cls(
            config.fee_rate,
            config.rebroadcast_blocks,
            config.bump_margin,
            config.max_bump_fee_rate,
            config.claim_confirmations,
        )

    def bump_rate(self, bumps: int) -> int:
        """The package fee rate of the ``bumps``-th bump (1-based): doubling, capped."""
        return min(self.max_bump_fee_rate, self.fee_rate << bumps)


def begin(record: ClaimRecord) -> list[Action]:
    """What to do as soon as a claim is decided (or found undecided at start)."""
    return [] if record.terminal else [Action(ActionKind.BROADCAST)]


def advance(record: ClaimRecord, event: ClaimEvent, policy: ClaimPolicy) -> tuple[ClaimRecord, list[Action]]:
    """The claim after ``event``, and what to do now. Terminal records never change, and a block at or
    below the record's tip is ignored, so feeding the same blocks again (after a restart) is harmless."""
    if record.terminal:
        return record, []
    if isinstance(event, BroadcastResult):
        status = record.status
        if event.accepted and status is ClaimStatus.PENDING:
            status = ClaimStatus.BROADCAST
        return replace(record, status=status, last_broadcast=max(event.tip, 1)), []
    if isinstance(event, BlockDisconnected):
        return _disconnected(record, event.height)
    return _connected(record, event, policy)


def _connected(
    record: ClaimRecord, event: BlockConnected, policy: ClaimPolicy
) -> tuple[ClaimRecord, list[Action]]:
    h = event.height
    if h <= record.tip:
        return record, []  # a block already seen (the engine replays blocks after a restart): nothing new
    rec = replace(record, tip=h)
    if event.spender is not None:
        if event.spender == rec.txid:
            rec = replace(
                rec, status=ClaimStatus.CONFIRMED, confirmed_height=h, conflict_txid=None, conflict_height=0
            )
        else:
            rec = replace(
                rec,
                status=ClaimStatus.CONFLICTED,
                conflict_txid=event.spender,
                conflict_height=h,
                confirmed_height=0,
            )
    if rec.status is ClaimStatus.CONFIRMED:
        if h - rec.confirmed_height + 1 >= policy.confirmations:
            rec = replace(rec, status=ClaimStatus.COMPLETE)
        return rec, []
    if rec.status is ClaimStatus.CONFLICTED:
        if h - rec.conflict_height + 1 >= policy.confirmations:
            rec = replace(rec, status=ClaimStatus.LOST)
        return rec, []
    actions: list[Action] = []
    urgent = rec.deadline - h <= policy.bump_margin
    if urgent or rec.last_broadcast == 0 or h - rec.last_broadcast >= policy.rebroadcast_blocks:
        actions.append(Action(ActionKind.BROADCAST))
    if urgent and rec.status is ClaimStatus.BROADCAST:
        rate = policy.bump_rate(rec.bumps + 1)
        if rate > policy.bump_rate(rec.bumps) or rec.bumps == 0:
            rec = replace(rec, bumps=min(rec.bumps + 1, 255))
            actions.append(Action(ActionKind.BUMP, rate))
    return rec, actions


def _disconnected(record: ClaimRecord, height: int) -> tuple[ClaimRecord, list[Action]]:
    rec = replace(record, tip=height - 1)
    if rec.status is ClaimStatus.CONFIRMED and rec.confirmed_height >= height:
        return replace(rec, status=ClaimStatus.BROADCAST, confirmed_height=0), [Action(ActionKind.BROADCAST)]
    if rec.status is ClaimStatus.CONFLICTED and rec.conflict_height >= height:
        rec = replace(rec, status=ClaimStatus.BROADCAST, conflict_txid=None, conflict_height=0)
        return rec, [Action(ActionKind.BROADCAST)]
    return rec, []


def at_risk(record: ClaimRecord, policy: ClaimPolicy) -> bool:
    """Unconfirmed within the bump margin of its deadline (or past it), or spent by someone else."""
    if record.status is ClaimStatus.CONFLICTED:
        return True
    unconfirmed = record.status in (ClaimStatus.PENDING, ClaimStatus.BROADCAST)
    return unconfirmed and record.deadline - record.tip <= policy.bump_margin


# -- fee bumping ------------------------------------------------------------------------------------------


def cpfp_child(
    claim: Transaction,
    parent_fee: int,
    tower: TowerPaymentKey,
    package_fee_rate: int,
    destination: bytes | None = None,
) -> Transaction:
    """A child spending the claim's tower output (index 0) so that parent and child together pay
    ``package_fee_rate`` sat/kvB; it pays the rest to ``destination`` (the tower's own script by default).
    ChannelError if the output cannot pay that much and keep a non-dust output."""
    tower_script = script.p2wpkh(tower.public_key)
    out = claim.outputs[0]
    if out.script_pubkey != tower_script:
        raise ChannelError("the claim's first output is not the tower's")
    dest = destination if destination is not None else tower_script
    dummy = TxIn(claim.txid, 0, b"", CPFP_SEQUENCE, (bytes(channel.SIGNATURE_BOUND), tower.public_key))
    child_vsize = Transaction(2, (dummy,), (TxOut(0, dest),), 0).vsize
    package_fee = -(-package_fee_rate * (claim.vsize + child_vsize) // 1000)
    child_fee = max(package_fee - parent_fee, -(-package_fee_rate * child_vsize // 1000))
    value = out.value - child_fee
    if value < script.dust_threshold(dest):
        raise ChannelError(f"the claimed {out.value} sat cannot pay a {child_fee} sat bump")
    unsigned = Transaction(2, (TxIn(claim.txid, 0, b"", CPFP_SEQUENCE),), (TxOut(value, dest),), 0)
    code = b"\x76\xa9\x14" + tower_script[2:] + b"\x88\xac"
    signature = sighash.sign(tower.secret, sighash.bip143_sighash(unsigned, 0, code, out.value))
    return channel.with_witness(unsigned, (signature, tower.public_key))


# -- orchestration over the store ---------------------------------------------------------------------------


class Claimer:
    """Decides claims and keeps their records (the engine thread drives it: teos.payments.runner).

    Every change is a compare-and-swap; a lost CAS means another writer moved the record first, and the
    caller simply sees the newer record on its next look.
    """

    def __init__(self, config: PaymentConfig, store: ChannelStore, tower: TowerPaymentKey) -> None:
        self.config = config
        self.store = store
        self.tower = tower
        self.policy = ClaimPolicy.from_config(config)

    def due(self, tip: int, snapshots: list[Snapshot] | None = None) -> list[ChannelState]:
        """OPEN channels whose claim is due: paid, and within ``claim_margin`` of expiry (or past it).
        ``snapshots``: the channels as the caller just read them (else they are read here)."""
        return [
            s.state
            for s in (self.store.all() if snapshots is None else snapshots)
            if s.state.status is ChannelStatus.OPEN
            and s.state.amount > 0
            and s.state.params.expiry - tip <= self.config.claim_margin
        ]

    def start_claim(self, channel_id: ChannelId, tip: int) -> ClaimRecord:
        """Freezes the channel (OPEN -> CLOSING) and records its claim; idempotent for a CLOSING channel.
        ChannelError if there is nothing to claim."""
        while True:
            snap = self.store.get(channel_id)
            if snap is None:
                raise ChannelError(f"no channel {channel_id}")
            state = snap.state
            if state.status is ChannelStatus.OPEN:
                if state.amount == 0:
                    raise ChannelError(f"{channel_id} has no payment to claim")
                if not self.store.swap(snap, replace(state, status=ChannelStatus.CLOSING)):
                    continue  # a payment landed meanwhile: claim the newer amount
                state = replace(state, status=ChannelStatus.CLOSING)
                log.info(
                    "claim decided channel=%s amount=%d expiry=%d tip=%d",
                    channel_id,
                    state.amount,
                    state.params.expiry,
                    tip,
                )
            if state.status is not ChannelStatus.CLOSING:
                raise ChannelError(f"{channel_id} is {state.status.name.lower()}")
            return self._claim_record(state, tip)

    def _claim_record(self, state: ChannelState, tip: int) -> ClaimRecord:
        existing = self.store.get_claim(state.channel_id)
        if existing is not None:
            return existing.record
        params = state.params
        tx = channel.claim_tx(params, state.amount, state.user_signature, self.tower.secret)
        record = ClaimRecord(
            channel_id=state.channel_id,
            amount=state.amount,
            txid=tx.txid,
            raw_tx=tx.raw,
            deadline=params.expiry,
            started_at=tip,
            tip=tip,
        )
        if not self.store.create_claim(record):
            raced = self.store.get_claim(state.channel_id)
            assert raced is not None
            return raced.record
        return record

    def recover(self, tip: int) -> list[tuple[ClaimRecord, list[Action]]]:
        """At start: records claims decided before a crash, and decides every claim now due (a tower that
        was down near expiry claims at once). Returns every live claim with what to do now."""
        for state in self.due(tip):
            self.start_claim(state.channel_id, tip)
        out = []
        for snap in self.store.all():
            if snap.state.status is ChannelStatus.CLOSING:
                record = self._claim_record(snap.state, tip)
                out.append((record, begin(record)))
        return out

    def on_event(self, channel_id: ChannelId, event: ClaimEvent) -> tuple[ClaimRecord, list[Action]]:
        """Advances one claim by ``event`` (CAS, retried on a lost race); a terminal claim closes its
        channel (CLAIMED or REFUNDED)."""
        while True:
            snap = self.store.get_claim(channel_id)
            if snap is None:
                raise ChannelError(f"no claim for {channel_id}")
            record, actions = advance(snap.record, event, self.policy)
            if record == snap.record or self.store.swap_claim(snap, record):
                break
        if record.terminal and not snap.record.terminal:
            self._close(
                channel_id,
                ChannelStatus.CLAIMED if record.status is ClaimStatus.COMPLETE else ChannelStatus.REFUNDED,
            )
            log.info(
                "claim %s channel=%s amount=%d txid=%s",
                record.status.name.lower(),
                channel_id,
                record.amount,
                record.txid,
            )
        return record, actions

    def _close(self, channel_id: ChannelId, status: ChannelStatus) -> None:
        while True:
            snap = self.store.get(channel_id)
            if snap is None or snap.state.status is status:
                return
            if self.store.swap(snap, replace(snap.state, status=status)):
                return

    def on_block_connected(
        self, height: int, spends: Mapping[ChannelId, Txid]
    ) -> dict[ChannelId, list[Action]]:
        """Feeds one connected block to every live claim (``spends``: the funding outputs this block
        spends, by channel) and marks expired unpaid channels; returns the actions per channel."""
        actions: dict[ChannelId, list[Action]] = {}
        for snap in self.store.claims():
            if not snap.record.terminal:
                cid = snap.record.channel_id
                _, todo = self.on_event(cid, BlockConnected(height, spends.get(cid)))
                if todo:
                    actions[cid] = todo
        self.expire_unpaid(height)
        return actions

    def expire_unpaid(self, height: int, snapshots: list[Snapshot] | None = None) -> list[ChannelId]:
        """Marks UNPAID the OPEN channels that reach their expiry without a single payment (nothing to
        claim; the user refunds); returns them."""
        expired = []
        for channel_snap in self.store.all() if snapshots is None else snapshots:
            state = channel_snap.state
            if state.status is ChannelStatus.OPEN and state.amount == 0 and height >= state.params.expiry:
                if self.store.swap(channel_snap, replace(state, status=ChannelStatus.UNPAID)):
                    expired.append(state.channel_id)
                    log.info("channel expired unpaid channel=%s expiry=%d", state.channel_id, height)
        return expired

    def on_block_disconnected(self, height: int) -> dict[ChannelId, list[Action]]:
        actions: dict[ChannelId, list[Action]] = {}
        for snap in self.store.claims():
            if not snap.record.terminal:
                _, todo = self.on_event(snap.record.channel_id, BlockDisconnected(height))
                if todo:
                    actions[snap.record.channel_id] = todo
        return actions

    def claim_transaction(self, record: ClaimRecord) -> Transaction:
        return decode_transaction(record.raw_tx)

    def bump(self, record: ClaimRecord, fee_rate: int) -> Transaction:
        """The CPFP child for ``record`` at ``fee_rate`` (ChannelError when the output cannot pay it)."""
        snap = self.store.get(record.channel_id)
        if snap is None:
            raise ChannelError(f"no channel {record.channel_id}")
        parent_fee = snap.state.params.funding_value - sum(
            o.value for o in self.claim_transaction(record).outputs
        )
        return cpfp_child(self.claim_transaction(record), parent_fee, self.tower, fee_rate)


# -- what the operator and /metrics see ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSummary:
    channel_id: ChannelId
    status: ChannelStatus
    amount: int  # paid (accepted) so far
    claimed: int  # irrevocably claimed
    unclaimed: int  # paid but not (yet) claimed
    blocks_to_expiry: int
    claim_status: ClaimStatus | None
    at_risk: bool


def summarize(
    state: ChannelState, claim: ClaimRecord | None, tip: int, config: PaymentConfig
) -> ChannelSummary:
    policy = ClaimPolicy.from_config(config)
    claimed = state.amount if claim is not None and claim.status is ClaimStatus.COMPLETE else 0
    lost = claim is not None and claim.status is ClaimStatus.LOST
    unclaimed = 0 if claimed or lost else state.amount
    if claim is not None:
        risky = at_risk(replace(claim, tip=max(claim.tip, tip)), policy)
    else:
        risky = (
            state.status is ChannelStatus.OPEN
            and state.amount > 0
            and state.params.expiry - tip <= config.claim_margin
        )
    return ChannelSummary(
        state.channel_id,
        state.status,
        state.amount,
        claimed,
        unclaimed,
        state.params.expiry - tip,
        claim.status if claim is not None else None,
        risky,
    )


@dataclass(frozen=True)
class Totals:
    """For /metrics: sats earned (accepted payments), claimed (irrevocably), at risk (see ``at_risk``),
    lost (a refund won)."""

    earned: int
    claimed: int
    at_risk: int
    lost: int


def totals(summaries: list[ChannelSummary], claims: Mapping[ChannelId, ClaimRecord]) -> Totals:
    lost = sum(
        s.amount for s in summaries if (c := claims.get(s.channel_id)) and c.status is ClaimStatus.LOST
    )
    return Totals(
        earned=sum(s.amount for s in summaries),
        claimed=sum(s.claimed for s in summaries),
        at_risk=sum(s.unclaimed for s in summaries if s.at_risk),
        lost=lost,
    )
