"""common/tx.py: round trips, known answers, and that hostile bytes only ever raise TxDecodeError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.tx import (
    Block,
    BlockHeader,
    Transaction,
    TxDecodeError,
    TxIn,
    TxOut,
    decode_block,
    decode_transaction,
    decode_transaction_hex,
    merkle_root,
    ser_compact_size,
    sha256d,
)
from common.types import BlockHash, Txid
from teos.regtest.chain import regtest_genesis

GENESIS_COINBASE_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"

u32 = st.integers(0, 0xFFFFFFFF)
scripts = st.binary(max_size=80)
txins = st.builds(
    TxIn,
    prev_txid=st.binary(min_size=32, max_size=32).map(Txid),
    prev_vout=u32,
    script_sig=scripts,
    sequence=u32,
    witness=st.lists(st.binary(max_size=80), max_size=4).map(tuple),
)
txouts = st.builds(TxOut, value=st.integers(-(2**63), 2**63 - 1), script_pubkey=scripts)
transactions = st.builds(
    Transaction,
    version=st.integers(-(2**31), 2**31 - 1),
    inputs=st.lists(txins, min_size=1, max_size=4).map(tuple),
    outputs=st.lists(txouts, max_size=4).map(tuple),
    locktime=u32,
)


@settings(max_examples=200)
@given(transactions)
def test_round_trip(tx: Transaction) -> None:
    decoded = decode_transaction(tx.serialize())
    assert decoded == tx
    assert decoded.serialize() == tx.serialize()
    assert decoded.txid == tx.txid
    legacy = decode_transaction(tx.serialize(include_witness=False))
    assert legacy.txid == tx.txid
    assert all(not i.witness for i in legacy.inputs)


@settings(max_examples=200)
@given(transactions)
def test_sizes(tx: Transaction) -> None:
    base = len(tx.serialize(False))
    total = len(tx.serialize(True))
    assert tx.weight == 3 * base + total
    assert tx.vsize == (tx.weight + 3) // 4
    assert (tx.txid == tx.wtxid) == (not tx.has_witness)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        tx = decode_transaction(data)
    except TxDecodeError:
        return
    assert tx.serialize() == data


@settings(max_examples=200)
@given(transactions, st.data())
def test_truncation_and_trailing_bytes(tx: Transaction, data: st.DataObject) -> None:
    raw = tx.serialize()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(TxDecodeError):
        decode_transaction(raw[:cut])
    with pytest.raises(TxDecodeError):
        decode_transaction(raw + data.draw(st.binary(min_size=1, max_size=8)))


def test_zero_inputs_rejected() -> None:
    no_inputs = struct.pack("<i", 2) + b"\x00" + b"\x00" + struct.pack("<I", 0)
    with pytest.raises(TxDecodeError):
        decode_transaction(no_inputs)
    segwit_no_inputs = struct.pack("<i", 2) + b"\x00\x01\x00\x00" + struct.pack("<I", 0)
    with pytest.raises(TxDecodeError):
        decode_transaction(segwit_no_inputs)


def test_absurd_counts_fail_fast() -> None:
    # 2^25 inputs claimed in a 20-byte buffer: refused before allocating anything
    huge = struct.pack("<i", 2) + b"\xfe" + struct.pack("<I", 0x02000000) + bytes(10)
    with pytest.raises(TxDecodeError):
        decode_transaction(huge)
    over_max = struct.pack("<i", 2) + b"\xff" + struct.pack("<Q", 2**60)
    with pytest.raises(TxDecodeError):
        decode_transaction(over_max)
    non_canonical = struct.pack("<i", 2) + b"\xfd\x01\x00" + bytes(60)
    with pytest.raises(TxDecodeError):
        decode_transaction(non_canonical)


def test_superfluous_witness_and_unknown_flag() -> None:
    tx = Transaction(2, (TxIn(Txid(bytes(32)), 0, b"", 0, (b"\x01",)),), (TxOut(1, b"\x51"),), 0)
    raw = tx.serialize()
    empty_witness = raw[:-7] + b"\x00" + raw[-4:]  # witness stack of the only input emptied
    with pytest.raises(TxDecodeError):
        decode_transaction(empty_witness)
    with pytest.raises(TxDecodeError):
        decode_transaction(raw[:5] + b"\x03" + raw[6:])


def test_hex_helper_rejects_odd_and_non_hex() -> None:
    for bad in ("abc", "zz", "00 00", 5):
        with pytest.raises(TxDecodeError):
            decode_transaction_hex(bad)  # type: ignore[arg-type]


def test_genesis_known_answers() -> None:
    genesis = regtest_genesis()
    assert genesis.transactions[0].txid.hex() == GENESIS_COINBASE_TXID
    assert genesis.hash.hex() == GENESIS_HASH
    assert genesis.header.merkle_root[::-1].hex() == GENESIS_COINBASE_TXID
    assert genesis.transactions[0].is_coinbase
    again = decode_block(genesis.serialize())
    assert again.hash == genesis.hash and again.transactions == genesis.transactions
    assert len(genesis.header.serialize()) == 80


def test_merkle_root_odd_levels_duplicate_last() -> None:
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    assert merkle_root([a]) == a
    assert merkle_root([a, b]) == sha256d(a + b)
    assert merkle_root([a, b, c]) == sha256d(sha256d(a + b) + sha256d(c + c))


def test_block_round_trip_and_trailing() -> None:
    coinbase = regtest_genesis().transactions[0]
    header = BlockHeader(0x20000000, BlockHash(bytes(32)), merkle_root([coinbase.txid.raw]), 1, 0x207FFFFF, 0)
    block = Block(header, (coinbase,))
    assert decode_block(block.serialize()) == block
    with pytest.raises(TxDecodeError):
        decode_block(block.serialize() + b"\x00")
    with pytest.raises(TxDecodeError):
        decode_block(block.serialize()[:-1])


def test_compact_size_encodings() -> None:
    assert ser_compact_size(0xFC) == b"\xfc"
    assert ser_compact_size(0xFD) == b"\xfd\xfd\x00"
    assert ser_compact_size(0x10000) == b"\xfe\x00\x00\x01\x00"
    assert ser_compact_size(2**32) == b"\xff" + (2**32).to_bytes(8, "little")
