"""What the tower keeps per channel: its state (changed only by compare-and-swap) and its claim.

Records are stored in the atomic store (``teos.storage.atomic``) under the keys ``channel_key`` and
``claim_key`` (layout in teos/storage/keys.py). Each encoding starts with a version byte; integers are
big-endian; encodings are deterministic, so equal states have equal bytes (which is what a CAS compares).

ChannelState v1::

    01 | channel_id(36) | funding_value(u64) | user_key(33) | tower_key(33) | expiry(u32) |
    len(change_script)(u8) | change_script | fee_rate(u32) | opened_at(u32) | status(u8) | nonce(u32) |
    amount(u64) | len(user_signature)(u8) | user_signature | registrations(u32) | has_grant(u8) [grant]

    grant = nonce(u32) | user_id(33) | dialect(u8) | registrations(u32) | slots(u32) | duration(u32)

ClaimRecord v1::

    01 | channel_id(36) | amount(u64) | txid(32, internal) | len(raw)(u16) | raw claim tx | deadline(u32) |
    status(u8) | started_at(u32) | last_broadcast(u32) | confirmed_height(u32) | conflict(u8) [txid(32)] |
    conflict_height(u32) | bumps(u8) | tip(u32)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import Enum

from common.channel import ChannelId, ChannelParams
from common.types import Dialect, Txid, UserId
from teos.storage.codec import CodecError

CHANNEL_PREFIX = b"s"
CLAIM_PREFIX = b"k"


def channel_key(channel_id: ChannelId) -> bytes:
    return CHANNEL_PREFIX + channel_id.raw


def claim_key(channel_id: ChannelId) -> bytes:
    return CLAIM_PREFIX + channel_id.raw


class ChannelStatus(Enum):
    """Where a channel is in its life. Only OPEN takes payments."""

    OPEN = 1  # funding confirmed; payments accepted while far enough from expiry
    CLOSING = 2  # the tower decided to claim; the amount is frozen
    CLAIMED = 3  # the claim is irrevocably confirmed
    REFUNDED = 4  # the funding output was spent by the user's refund (the tower lost the amount)
    UNPAID = 5  # expired without a single payment: nothing to claim, the user refunds


class ClaimStatus(Enum):
    """Where a claim transaction is (see teos.payments.claims for the transitions)."""

    PENDING = 1  # decided, never accepted by bitcoind yet
    BROADCAST = 2  # accepted into the mempool (as far as we know), not in the best chain
    CONFIRMED = 3  # in the best chain, not yet deep enough
    COMPLETE = 4  # irrevocably confirmed (terminal)
    CONFLICTED = 5  # the funding output was spent by another transaction in the best chain
    LOST = 6  # that other spend is irrevocable (terminal)


@dataclass(frozen=True)
class Grant:
    """What one accepted payment buys: ``registrations`` times the subscription, for one user.

    Identified by (channel, nonce). Slots and duration are fixed when the payment is accepted, so a
    change of the tower's configuration before the grant is applied cannot change what was paid for."""

    channel_id: ChannelId
    nonce: int
    user_id: UserId
    dialect: Dialect
    registrations: int
    slots: int  # registrations * subscription_slots
    duration: int  # registrations * subscription_duration (blocks)


@dataclass(frozen=True)
class ChannelState:
    VERSION = 1

    params: ChannelParams
    opened_at: int  # tip height when the channel was opened
    status: ChannelStatus = ChannelStatus.OPEN
    nonce: int = 0
    amount: int = 0  # the highest amount the user has signed and the tower accepted
    user_signature: bytes = b""  # the user's signature of the payment of ``amount``
    registrations: int = 0  # registrations granted over the channel's life
    last_grant: Grant | None = None  # the grant of the payment at ``nonce`` (applied or not)

    @property
    def channel_id(self) -> ChannelId:
        return self.params.channel_id

    def with_payment(self, nonce: int, amount: int, signature: bytes, grant: Grant) -> ChannelState:
        return replace(
            self,
            nonce=nonce,
            amount=amount,
            user_signature=signature,
            registrations=self.registrations + grant.registrations,
            last_grant=grant,
        )

    def encode(self) -> bytes:
        p = self.params
        parts = [
            bytes([self.VERSION]),
            p.channel_id.raw,
            struct.pack(">Q", p.funding_value),
            p.user_key,
            p.tower_key,
            struct.pack(">I", p.expiry),
            bytes([len(p.change_script)]),
            p.change_script,
            struct.pack(">IIB", p.fee_rate, self.opened_at, self.status.value),
            struct.pack(">IQ", self.nonce, self.amount),
            bytes([len(self.user_signature)]),
            self.user_signature,
            struct.pack(">I", self.registrations),
        ]
        g = self.last_grant
        if g is None:
            parts.append(b"\x00")
        else:
            parts.append(b"\x01" + struct.pack(">I", g.nonce) + g.user_id.raw + bytes([g.dialect.code]))
            parts.append(struct.pack(">III", g.registrations, g.slots, g.duration))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ChannelState:
        r = _Reader(data)
        if r.u8() != cls.VERSION:
            raise CodecError("unknown channel state version")
        try:
            channel_id = ChannelId.from_raw(r.take(36))
            params = ChannelParams(
                channel_id=channel_id,
                funding_value=r.u64(),
                user_key=r.take(33),
                tower_key=r.take(33),
                expiry=r.u32(),
                change_script=r.take(r.u8()),
                fee_rate=r.u32(),
            )
            opened_at = r.u32()
            status = ChannelStatus(r.u8())
            nonce = r.u32()
            amount = r.u64()
            signature = r.take(r.u8())
            registrations = r.u32()
            grant = None
            if r.u8():
                g_nonce = r.u32()
                user_id = UserId(r.take(33))
                dialect = Dialect.from_code(r.u8())
                grant = Grant(channel_id, g_nonce, user_id, dialect, r.u32(), r.u32(), r.u32())
        except ValueError as exc:  # a field out of its domain (bad enum, key prefix...)
            raise CodecError(f"corrupt channel state: {exc}") from None
        r.end()
        return cls(params, opened_at, status, nonce, amount, signature, registrations, grant)


@dataclass(frozen=True)
class ClaimRecord:
    """The tower's claim of one channel and its progress (the state of teos.payments.claims' machine)."""

    VERSION = 1

    channel_id: ChannelId
    amount: int
    txid: Txid
    raw_tx: bytes  # the fully signed claim
    deadline: int  # the channel's expiry: the claim must confirm in a block at or below it
    status: ClaimStatus = ClaimStatus.PENDING
    started_at: int = 0  # tip height when the claim was decided
    last_broadcast: int = 0  # tip height of the last broadcast attempt (0: never)
    confirmed_height: int = 0  # height of the block holding the claim (0: none)
    conflict_txid: Txid | None = None  # another spend of the funding output seen in the best chain
    conflict_height: int = 0
    bumps: int = 0  # fee bumps (CPFP) made so far
    tip: int = 0  # the last height this record was brought up to

    @property
    def terminal(self) -> bool:
        return self.status in (ClaimStatus.COMPLETE, ClaimStatus.LOST)

    def encode(self) -> bytes:
        conflict = b"\x00" if self.conflict_txid is None else b"\x01" + self.conflict_txid.raw
        return b"".join(
            [
                bytes([self.VERSION]),
                self.channel_id.raw,
                struct.pack(">Q", self.amount),
                self.txid.raw,
                struct.pack(">H", len(self.raw_tx)),
                self.raw_tx,
                struct.pack(
                    ">IBIII",
                    self.deadline,
                    self.status.value,
                    self.started_at,
                    self.last_broadcast,
                    self.confirmed_height,
                ),
                conflict,
                struct.pack(">IBI", self.conflict_height, self.bumps, self.tip),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> ClaimRecord:
        r = _Reader(data)
        if r.u8() != cls.VERSION:
            raise CodecError("unknown claim record version")
        try:
            channel_id = ChannelId.from_raw(r.take(36))
            amount = r.u64()
            txid = Txid(r.take(32))
            raw = r.take(int.from_bytes(r.take(2), "big"))
            deadline = r.u32()
            status = ClaimStatus(r.u8())
            started_at, last_broadcast, confirmed_height = r.u32(), r.u32(), r.u32()
            conflict = Txid(r.take(32)) if r.u8() else None
            conflict_height = r.u32()
            bumps = r.u8()
            tip = r.u32()
        except ValueError as exc:
            raise CodecError(f"corrupt claim record: {exc}") from None
        r.end()
        return cls(
            channel_id,
            amount,
            txid,
            raw,
            deadline,
            status,
            started_at,
            last_broadcast,
            confirmed_height,
            conflict,
            conflict_height,
            bumps,
            tip,
        )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise CodecError("record truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def end(self) -> None:
        if self._pos != len(self._data):
            raise CodecError("trailing bytes in record")
