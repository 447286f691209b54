"""Bitcoin transaction and block wire formats (pure: no I/O).

Parses and writes transactions in the legacy and the segwit (BIP144: ``version | 00 01 | inputs | outputs
| witnesses | locktime``) serialisations, computes txid (no witness), wtxid, weight and virtual size, and
writes block headers and blocks with their merkle roots. The tower uses ``decode_transaction`` to check that
a decrypted blob is exactly one well-formed transaction; the regtest simulator and its wallet build blocks
and transactions with the rest.

Decoding is strict and bounded: every count read from the input is checked against the bytes that remain
before anything is allocated, CompactSize integers must be canonical, trailing bytes are an error, and a
transaction needs at least one input. Anything wrong raises :class:`TxDecodeError`; nothing else escapes.
All multi-byte integers are little-endian; hashes are double-SHA256 and kept in internal byte order.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from common.types import BlockHash, Txid

MAX_SIZE = 0x02000000  # Bitcoin Core's bound on any serialised vector length
WITNESS_SCALE_FACTOR = 4
NULL_TXID = Txid(bytes(32))
COINBASE_VOUT = 0xFFFFFFFF


class TxDecodeError(ValueError):
    """The bytes are not exactly one well-formed transaction (or block)."""


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def ser_compact_size(n: int) -> bytes:
    if n < 0:
        raise ValueError("negative CompactSize")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def ser_bytes(data: bytes) -> bytes:
    """A length-prefixed byte vector (scripts, witness items)."""
    return ser_compact_size(len(data)) + data


class Reader:
    """A cursor over bytes whose reads fail with TxDecodeError instead of returning short data."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise TxDecodeError("unexpected end of data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.read(1)[0]

    def u32(self) -> int:
        return int(struct.unpack("<I", self.read(4))[0])

    def i32(self) -> int:
        return int(struct.unpack("<i", self.read(4))[0])

    def i64(self) -> int:
        return int(struct.unpack("<q", self.read(8))[0])

    def compact_size(self) -> int:
        first = self.u8()
        if first < 0xFD:
            n = first
        elif first == 0xFD:
            n = int(struct.unpack("<H", self.read(2))[0])
            if n < 0xFD:
                raise TxDecodeError("non-canonical CompactSize")
        elif first == 0xFE:
            n = int(struct.unpack("<I", self.read(4))[0])
            if n <= 0xFFFF:
                raise TxDecodeError("non-canonical CompactSize")
        else:
            n = int(struct.unpack("<Q", self.read(8))[0])
            if n <= 0xFFFFFFFF:
                raise TxDecodeError("non-canonical CompactSize")
        if n > MAX_SIZE:
            raise TxDecodeError("CompactSize too large")
        return n

    def count(self, min_item_size: int) -> int:
        """A vector length, refused when that many items of ``min_item_size`` bytes cannot fit."""
        n = self.compact_size()
        if n * min_item_size > self.remaining:
            raise TxDecodeError("count exceeds remaining data")
        return n

    def var_bytes(self) -> bytes:
        return self.read(self.count(1))


@dataclass(frozen=True, slots=True)
class TxIn:
    prev_txid: Txid
    prev_vout: int
    script_sig: bytes = b""
    sequence: int = 0xFFFFFFFF
    witness: tuple[bytes, ...] = ()

    @property
    def outpoint(self) -> tuple[Txid, int]:
        return (self.prev_txid, self.prev_vout)

    def serialize(self) -> bytes:
        return (
            self.prev_txid.raw
            + struct.pack("<I", self.prev_vout)
            + ser_bytes(self.script_sig)
            + struct.pack("<I", self.sequence)
        )


@dataclass(frozen=True, slots=True)
class TxOut:
    value: int  # satoshis
    script_pubkey: bytes

    def serialize(self) -> bytes:
        return struct.pack("<q", self.value) + ser_bytes(self.script_pubkey)


@dataclass(frozen=True)
class Transaction:
    """An immutable transaction; ``txid``/``wtxid`` and sizes are computed once on first use."""

    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    @property
    def has_witness(self) -> bool:
        return any(txin.witness for txin in self.inputs)

    def serialize(self, include_witness: bool = True) -> bytes:
        witness = include_witness and self.has_witness
        parts = [struct.pack("<i", self.version)]
        if witness:
            parts.append(b"\x00\x01")
        parts.append(ser_compact_size(len(self.inputs)))
        parts.extend(txin.serialize() for txin in self.inputs)
        parts.append(ser_compact_size(len(self.outputs)))
        parts.extend(txout.serialize() for txout in self.outputs)
        if witness:
            for txin in self.inputs:
                parts.append(ser_compact_size(len(txin.witness)))
                parts.extend(ser_bytes(item) for item in txin.witness)
        parts.append(struct.pack("<I", self.locktime))
        return b"".join(parts)

    @cached_property
    def raw(self) -> bytes:
        """The full serialisation (with witness when there is one)."""
        return self.serialize(True)

    @cached_property
    def stripped(self) -> bytes:
        return self.serialize(False)

    @cached_property
    def txid(self) -> Txid:
        return Txid(sha256d(self.stripped))

    @cached_property
    def wtxid(self) -> Txid:
        return Txid(sha256d(self.raw))

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def weight(self) -> int:
        return len(self.stripped) * (WITNESS_SCALE_FACTOR - 1) + len(self.raw)

    @property
    def vsize(self) -> int:
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    @property
    def is_coinbase(self) -> bool:
        return (
            len(self.inputs) == 1
            and self.inputs[0].prev_txid == NULL_TXID
            and self.inputs[0].prev_vout == COINBASE_VOUT
        )

    def hex(self) -> str:
        return self.raw.hex()


def _read_transaction(r: Reader) -> Transaction:
    version = r.i32()
    # An input is at least 41 bytes (36 outpoint, 1 script length, 4 sequence), an output at least 9.
    n_in = r.count(41)
    segwit = False
    if n_in == 0:
        # BIP144: a zero input count is the marker, followed by the flag byte.
        flag = r.u8()
        if flag == 0:
            raise TxDecodeError("transaction has no inputs")
        if flag != 1:
            raise TxDecodeError("unknown transaction optional data")
        segwit = True
        n_in = r.count(41)
        if n_in == 0:
            raise TxDecodeError("transaction has no inputs")
    raw_inputs = []
    for _ in range(n_in):
        prev = Txid(r.read(32))
        vout = r.u32()
        script_sig = r.var_bytes()
        sequence = r.u32()
        raw_inputs.append((prev, vout, script_sig, sequence))
    n_out = r.count(9)
    outputs = []
    for _ in range(n_out):
        value = r.i64()
        outputs.append(TxOut(value, r.var_bytes()))
    witnesses: list[tuple[bytes, ...]] = [()] * n_in
    if segwit:
        for i in range(n_in):
            n_items = r.count(1)
            witnesses[i] = tuple(r.var_bytes() for _ in range(n_items))
        if not any(witnesses):
            raise TxDecodeError("superfluous witness record")
    locktime = r.u32()
    inputs = tuple(
        TxIn(prev, vout, script_sig, sequence, witnesses[i])
        for i, (prev, vout, script_sig, sequence) in enumerate(raw_inputs)
    )
    return Transaction(version, inputs, tuple(outputs), locktime)


def decode_transaction(raw: bytes) -> Transaction:
    """Parses exactly one transaction (legacy or BIP144 segwit); raises TxDecodeError otherwise."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TxDecodeError("transaction must be bytes")
    r = Reader(bytes(raw))
    try:
        tx = _read_transaction(r)
    except (struct.error, IndexError, OverflowError) as e:  # defensive: Reader should raise first
        raise TxDecodeError(str(e)) from None
    if r.remaining:
        raise TxDecodeError("trailing data after transaction")
    return tx


def decode_transaction_hex(value: str) -> Transaction:
    """As decode_transaction, from hex (odd length or non-hex characters are decode errors too)."""
    if not isinstance(value, str):
        raise TxDecodeError("transaction hex must be a string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise TxDecodeError("not hex") from None
    if len(value) != 2 * len(raw):  # fromhex skips whitespace; Core does not
        raise TxDecodeError("not hex")
    return decode_transaction(raw)


# -- blocks ----------------------------------------------------------------------------------------------


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """The Bitcoin merkle root of internal-order hashes (the last one doubled on odd levels)."""
    if not hashes:
        return bytes(32)
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")


def witness_merkle_root(transactions: Sequence[Transaction]) -> bytes:
    """BIP141: the merkle root of wtxids, with the coinbase's wtxid taken as 32 zero bytes."""
    return merkle_root([bytes(32)] + [tx.wtxid.raw for tx in transactions[1:]])


def witness_commitment_script(transactions: Sequence[Transaction], reserved: bytes = bytes(32)) -> bytes:
    """The coinbase output script committing to the block's witnesses (OP_RETURN, 36-byte push)."""
    commitment = sha256d(witness_merkle_root(transactions) + reserved)
    return b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + commitment


@dataclass(frozen=True)
class BlockHeader:
    version: int
    prev_hash: BlockHash
    merkle_root: bytes  # internal byte order
    time: int
    bits: int
    nonce: int

    def serialize(self) -> bytes:
        return (
            struct.pack("<i", self.version)
            + self.prev_hash.raw
            + self.merkle_root
            + struct.pack("<III", self.time, self.bits, self.nonce)
        )

    @cached_property
    def hash(self) -> BlockHash:
        return BlockHash(sha256d(self.serialize()))


def block_hash(header: BlockHeader) -> BlockHash:
    return header.hash


def decode_header(raw: bytes) -> BlockHeader:
    if len(raw) != 80:
        raise TxDecodeError("block header must be 80 bytes")
    return _read_header(Reader(raw))


def _read_header(r: Reader) -> BlockHeader:
    version = r.i32()
    prev = BlockHash(r.read(32))
    root = r.read(32)
    time_, bits, nonce = struct.unpack("<III", r.read(12))
    return BlockHeader(version, prev, root, int(time_), int(bits), int(nonce))


def bits_to_target(bits: int) -> int:
    """The target a compact ``nBits`` encodes (sign and overflow cases treated as zero)."""
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if bits & 0x00800000:
        return 0
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def check_proof_of_work(header: BlockHeader) -> bool:
    target = bits_to_target(header.bits)
    return target > 0 and int.from_bytes(header.hash.raw, "little") <= target


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...]

    @property
    def hash(self) -> BlockHash:
        return self.header.hash

    def serialize(self, include_witness: bool = True) -> bytes:
        return (
            self.header.serialize()
            + ser_compact_size(len(self.transactions))
            + b"".join(tx.serialize(include_witness) for tx in self.transactions)
        )

    @cached_property
    def raw(self) -> bytes:
        return self.serialize(True)

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def stripped_size(self) -> int:
        return len(self.serialize(False))

    @property
    def weight(self) -> int:
        return self.stripped_size * (WITNESS_SCALE_FACTOR - 1) + self.size

    def computed_merkle_root(self) -> bytes:
        return merkle_root([tx.txid.raw for tx in self.transactions])


def decode_block(raw: bytes) -> Block:
    """Parses exactly one block (header and transactions); raises TxDecodeError otherwise."""
    r = Reader(bytes(raw))
    header = _read_header(r)
    n_tx = r.count(51)  # the smallest transaction (one input, no outputs) is 51 bytes
    txs = tuple(_read_transaction(r) for _ in range(n_tx))
    if r.remaining:
        raise TxDecodeError("trailing data after block")
    return Block(header, txs)
