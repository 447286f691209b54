"""Records stored in LevelDB and their byte encoding.

One serialisation path per representation: these records are the storage shape; JSON for HTTP lives in
the API. Every encoding starts with a version byte so the format can migrate. Variable-length fields are
prefixed with their length (u16 or u32 big-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from common.types import BlockHash, Dialect, Locator, Txid, UserId, Uuid


class CodecError(ValueError):
    """Stored bytes could not be decoded (corruption or an unknown format version)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            raise CodecError("record truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def var(self) -> bytes:
        return self.take(self.u32())

    def end(self) -> None:
        if self._pos != len(self._data):
            raise CodecError("trailing bytes in record")


def _var(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


@dataclass(frozen=True)
class AppointmentRecord:
    """An appointment under watch, with what is needed to answer for it and to act on it."""

    VERSION = 1

    uuid: Uuid
    locator: Locator
    encrypted_blob: bytes
    to_self_delay: int
    user_id: UserId
    user_signature: str  # zbase32, as the user sent it (the receipt is over it)
    start_block: int
    dialect: Dialect

    def encode(self) -> bytes:
        return b"".join(
            [
                bytes([self.VERSION, self.dialect.code]),
                self.uuid.raw,
                self.locator.raw,
                self.user_id.raw,
                _u32(self.to_self_delay),
                _u32(self.start_block),
                _var(self.user_signature.encode("ascii")),
                _var(self.encrypted_blob),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> AppointmentRecord:
        r = _Reader(data)
        if r.u8() != cls.VERSION:
            raise CodecError("unknown appointment record version")
        dialect = Dialect.from_code(r.u8())
        rec = cls(
            uuid=Uuid(r.take(20)),
            locator=Locator(r.take(16)),
            user_id=UserId(r.take(33)),
            to_self_delay=r.u32(),
            start_block=r.u32(),
            user_signature=r.var().decode("ascii"),
            encrypted_blob=r.var(),
            dialect=dialect,
        )
        r.end()
        return rec


@dataclass(frozen=True)
class UserRecord:
    """A registered user's subscription. ``available_slots`` is what remains to spend."""

    VERSION = 1

    user_id: UserId
    dialect: Dialect
    available_slots: int
    subscription_start: int
    subscription_expiry: int

    def encode(self) -> bytes:
        return b"".join(
            [
                bytes([self.VERSION, self.dialect.code]),
                self.user_id.raw,
                _u32(self.available_slots),
                _u32(self.subscription_start),
                _u32(self.subscription_expiry),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> UserRecord:
        r = _Reader(data)
        if r.u8() != cls.VERSION:
            raise CodecError("unknown user record version")
        dialect = Dialect.from_code(r.u8())
        rec = cls(
            user_id=UserId(r.take(33)),
            dialect=dialect,
            available_slots=r.u32(),
            subscription_start=r.u32(),
            subscription_expiry=r.u32(),
        )
        r.end()
        return rec


@dataclass(frozen=True)
class TrackerRecord:
    """A penalty the Responder is following until it is irrevocably resolved.

    It keeps the original appointment so that, if the dispute transaction is reorged out of the chain,
    the appointment can be put back under watch. Version 2 adds the block holding the dispute
    transaction (so a disconnected block finds its trackers); version 1 records still decode, with
    ``dispute_block`` None.
    """

    VERSION = 2

    appointment: AppointmentRecord
    dispute_txid: Txid
    penalty_txid: Txid
    penalty_rawtx: bytes
    broadcast_height: int  # height of the tip when the penalty was (last) broadcast
    confirmed_in: BlockHash | None  # block that holds the penalty, if confirmed
    confirmed_height: int  # its height (0 when unconfirmed)
    dispute_block: BlockHash | None = None  # block that holds the dispute transaction (v2)
    dispute_height: int = 0  # its height (v2)

    @property
    def uuid(self) -> Uuid:
        return self.appointment.uuid

    @property
    def user_id(self) -> UserId:
        return self.appointment.user_id

    @property
    def locator(self) -> Locator:
        return self.appointment.locator

    def encode(self) -> bytes:
        return b"".join(
            [
                bytes([self.VERSION]),
                _var(self.appointment.encode()),
                self.dispute_txid.raw,
                self.penalty_txid.raw,
                _var(self.penalty_rawtx),
                _u32(self.broadcast_height),
                (b"\x01" + self.confirmed_in.raw) if self.confirmed_in is not None else b"\x00",
                _u32(self.confirmed_height),
                (b"\x01" + self.dispute_block.raw) if self.dispute_block is not None else b"\x00",
                _u32(self.dispute_height),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> TrackerRecord:
        r = _Reader(data)
        version = r.u8()
        if version not in (1, 2):
            raise CodecError("unknown tracker record version")
        appointment = AppointmentRecord.decode(r.var())
        dispute_txid = Txid(r.take(32))
        penalty_txid = Txid(r.take(32))
        penalty_rawtx = r.var()
        broadcast_height = r.u32()
        confirmed_in = BlockHash(r.take(32)) if r.u8() else None
        confirmed_height = r.u32()
        dispute_block: BlockHash | None = None
        dispute_height = 0
        if version >= 2:
            dispute_block = BlockHash(r.take(32)) if r.u8() else None
            dispute_height = r.u32()
        r.end()
        return cls(
            appointment=appointment,
            dispute_txid=dispute_txid,
            penalty_txid=penalty_txid,
            penalty_rawtx=penalty_rawtx,
            broadcast_height=broadcast_height,
            confirmed_in=confirmed_in,
            confirmed_height=confirmed_height,
            dispute_block=dispute_block,
            dispute_height=dispute_height,
        )


def encode_block_pointer(block_hash: BlockHash, height: int) -> bytes:
    """Value of ``m|last_block:*``: ``hash(32) | height(4 BE)``."""
    return block_hash.raw + struct.pack(">I", height)


def decode_block_pointer(data: bytes) -> tuple[BlockHash, int]:
    if len(data) != 36:
        raise CodecError("bad block pointer")
    return BlockHash(data[:32]), struct.unpack(">I", data[32:])[0]


def encode_recent_block(block_hash: BlockHash, height: int, prev_hash: BlockHash | None) -> bytes:
    """Value of ``m|recent:engine:<height>``: ``hash(32) | prev hash(32, zeros for none) | height(4 BE)``."""
    prev = prev_hash.raw if prev_hash is not None else bytes(32)
    return block_hash.raw + prev + struct.pack(">I", height)


def decode_recent_block(data: bytes) -> tuple[BlockHash, int, BlockHash | None]:
    if len(data) != 68:
        raise CodecError("bad recent-block record")
    prev = data[32:64]
    return BlockHash(data[:32]), struct.unpack(">I", data[64:])[0], BlockHash(prev) if any(prev) else None
