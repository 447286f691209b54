"""Records stored in LevelDB and their byte encoding.

One serialisation path per representation: these records are the storage shape; JSON for HTTP lives in
the API. Every encoding starts with a version byte so the format can migrate. Variable-length fields are
prefixed with their length (u16 or u32 big-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from common import zbase32
from common.appointment import Appointment, compute_uuid
from common.types import BlockHash, Dialect, Locator, Txid, UserId, Uuid
from teos.storage.keys import read_varint, varint


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

    def varint(self) -> int:
        value, self._pos = _read_varint(self._data, self._pos)
        return value

    def end(self) -> None:
        if self._pos != len(self._data):
            raise CodecError("trailing bytes in record")


def _var(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


_varint = varint  # the keys' LEB128 (teos.storage.keys), also inside records


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        return read_varint(data, pos)
    except ValueError:
        raise CodecError("record truncated") from None


@dataclass(frozen=True)
class AppointmentRecord:
    """An appointment under watch, with what is needed to answer for it and to act on it.

    Encodings (the first byte says which; every one stays readable):

    - v1: version | dialect | uuid(20) | locator(16) | user_id(33) | to_self_delay u32 | start_block u32 |
      signature (u32 length, ascii) | blob (u32 length);
    - v2 (written since): version | dialect | locator(16) | user_id(33) | to_self_delay varint |
      start_block varint | signature (65 bytes: the z-base-32 text decoded) | blob (varint length). The
      uuid is not stored (it is RIPEMD160(locator || user_id)), integers take what they need and the
      signature 65 bytes instead of 104: 68 bytes less per appointment, a fifth of the database;
    - v3: v2 for a signature that is not canonical z-base-32 of 65 bytes (kept as text: varint length,
      ascii), so that the text a receipt was made over always comes back exactly.

    A record whose uuid is not RIPEMD160(locator || user_id) (only tests make such) is written as v1.
    """

    VERSION = 2

    uuid: Uuid
    locator: Locator
    encrypted_blob: bytes
    to_self_delay: int
    user_id: UserId
    user_signature: str  # zbase32, as the user sent it (the receipt is over it)
    start_block: int
    dialect: Dialect

    def encode(self) -> bytes:
        if self.uuid != compute_uuid(self.locator, self.user_id):  # (not made by the service: keep it)
            return self._encode_v1()
        as_text, sig = _signature_field(self.user_signature)
        head = 3 if as_text else 2
        return b"".join(
            [
                bytes([head, self.dialect.code]),
                self.locator.raw,
                self.user_id.raw,
                _varint(self.to_self_delay),
                _varint(self.start_block),
                sig,
                _varint(len(self.encrypted_blob)),
                self.encrypted_blob,
            ]
        )

    @classmethod
    def of(
        cls, appointment: Appointment, user_id: UserId, signature: str, start_block: int, dialect: Dialect
    ) -> AppointmentRecord:
        """The record of ``appointment`` as accepted from ``user_id`` at ``start_block``."""
        return cls(
            uuid=compute_uuid(appointment.locator, user_id),
            locator=appointment.locator,
            encrypted_blob=appointment.encrypted_blob,
            to_self_delay=appointment.to_self_delay,
            user_id=user_id,
            user_signature=signature,
            start_block=start_block,
            dialect=dialect,
        )

    @classmethod
    def decode(cls, data: bytes) -> AppointmentRecord:
        if not data:
            raise CodecError("record truncated")
        version = data[0]
        if version == 1:
            return cls._decode_v1(data)
        if version not in (2, 3):
            raise CodecError("unknown appointment record version")
        if len(data) < 2 + 16 + 33:
            raise CodecError("record truncated")
        return cls._decode_rest(data, 51, version == 2, Dialect.from_code(data[1]), Locator(data[2:18]),
                                UserId(data[18:51]))  # fmt: skip

    @classmethod
    def _decode_rest(
        cls, data: bytes, pos: int, raw_signature: bool, dialect: Dialect, locator: Locator, user_id: UserId
    ) -> AppointmentRecord:
        """The fields after the locator and the user id: to_self_delay, start_block, signature, blob."""
        to_self_delay, pos = _read_varint(data, pos)
        start_block, pos = _read_varint(data, pos)
        if raw_signature:
            if pos + 65 > len(data):
                raise CodecError("record truncated")
            signature = zbase32.encode(data[pos : pos + 65])
            pos += 65
        else:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise CodecError("record truncated")
            try:
                signature = data[pos : pos + length].decode("ascii")
            except UnicodeDecodeError:
                raise CodecError("signature is not ascii") from None
            pos += length
        length, pos = _read_varint(data, pos)
        if pos + length != len(data):
            raise CodecError("record truncated" if pos + length > len(data) else "trailing bytes in record")
        if to_self_delay > 0xFFFFFFFF or start_block > 0xFFFFFFFF:
            raise CodecError("integer out of range")
        return cls(
            uuid=compute_uuid(locator, user_id),
            locator=locator,
            encrypted_blob=data[pos:],
            to_self_delay=to_self_delay,
            user_id=user_id,
            user_signature=signature,
            start_block=start_block,
            dialect=dialect,
        )

    def encode_body(self) -> bytes:
        """What an ``w|locator|usernum`` entry holds: v2/v3 without the locator and the user id (the key
        and the user number give them; the uuid is derived from both). First byte 4 (signature as its 65
        bytes) or 5 (signature as text)."""
        as_text, sig = _signature_field(self.user_signature)
        head = 5 if as_text else 4
        return b"".join(
            [
                bytes([head, self.dialect.code]),
                _varint(self.to_self_delay),
                _varint(self.start_block),
                sig,
                _varint(len(self.encrypted_blob)),
                self.encrypted_blob,
            ]
        )

    @classmethod
    def decode_body(cls, data: bytes, locator: Locator, user_id: UserId) -> AppointmentRecord:
        """The record of an ``w|`` entry, given what its key and its user number say."""
        if len(data) < 2 or data[0] not in (4, 5):
            raise CodecError("unknown appointment body version" if data else "record truncated")
        return cls._decode_rest(data, 2, data[0] == 4, Dialect.from_code(data[1]), locator, user_id)

    def _encode_v1(self) -> bytes:
        return b"".join(
            [
                bytes([1, self.dialect.code]),
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
    def _decode_v1(cls, data: bytes) -> AppointmentRecord:
        r = _Reader(data)
        r.u8()
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


def _signature_field(text: str) -> tuple[bool, bytes]:
    """How a record stores a signature: (False, its 65 bytes) when the text is their z-base-32, else
    (True, the text with its length in front), so that a receipt's bytes always come back."""
    raw = _raw_signature(text)
    if raw is not None:
        return False, raw
    data = text.encode("ascii")
    return True, _varint(len(data)) + data


def _raw_signature(text: str) -> bytes | None:
    """The 65 bytes a signature's text encodes, if the text is their z-base-32 (``zbase32.decode`` is
    strict: a text it accepts is the one encoding of its bytes, so encoding them gives the text back)."""
    if len(text) != 104:
        return None
    try:
        return zbase32.decode(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class UserRecord:
    """A registered user's subscription. ``available_slots`` is what remains to spend; ``usernum`` is the
    user's number in the keys of its appointments (``teos.storage.keys``; None only in records from
    before numbers, which the migration numbers, and in records a test builds without storing them).

    v1: version | dialect | user_id(33) | available_slots u32 | start u32 | expiry u32; v2 adds the usernum
    (varint) at the end.
    """

    VERSION = 2

    user_id: UserId
    dialect: Dialect
    available_slots: int
    subscription_start: int
    subscription_expiry: int
    usernum: int | None = field(default=None, compare=False)  # where it is stored, not what it says

    def encode(self) -> bytes:
        return b"".join(
            [
                bytes([1 if self.usernum is None else 2, self.dialect.code]),
                self.user_id.raw,
                _u32(self.available_slots),
                _u32(self.subscription_start),
                _u32(self.subscription_expiry),
                b"" if self.usernum is None else _varint(self.usernum),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> UserRecord:
        r = _Reader(data)
        version = r.u8()
        if version not in (1, 2):
            raise CodecError("unknown user record version")
        dialect = Dialect.from_code(r.u8())
        user_id = UserId(r.take(33))
        slots, start, expiry = r.u32(), r.u32(), r.u32()
        usernum = None
        if version == 2:
            usernum = r.varint()
        r.end()
        return cls(user_id, dialect, slots, start, expiry, usernum)


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
