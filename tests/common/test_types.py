"""The identifier value types: txids in display-order hex, and a block's txids held as one bytes object."""

from __future__ import annotations

import os

import pytest

from common.types import Txid, Txids
from teos.watcher.locator_cache import block_locators


def test_txids_are_the_txids_of_their_hex_in_order() -> None:
    values = [os.urandom(32).hex() for _ in range(300)] + ["AB" * 32]
    one_by_one = tuple(Txid.from_hex(v) for v in values)
    txids = Txids.from_hex(values)
    assert len(txids) == len(values) and tuple(txids) == one_by_one and txids == one_by_one
    assert txids[0] == one_by_one[0] and txids[-1] == one_by_one[-1] and txids[5:9] == one_by_one[5:9]
    assert txids.raw_txids() == [t.raw for t in one_by_one]
    assert Txids.from_raw(t.raw for t in one_by_one) == txids
    assert hash(Txids.from_raw(txids.raw_txids())) == hash(txids)
    with pytest.raises(IndexError):
        txids[len(values)]
    assert len(Txids.from_hex([])) == 0 and list(Txids.from_hex([])) == []


def test_a_blocks_locators_are_the_same_from_txids_and_from_their_bytes() -> None:
    one_by_one = [Txid(os.urandom(32)) for _ in range(50)]
    assert block_locators(Txids.from_raw(t.raw for t in one_by_one)) == block_locators(one_by_one)


@pytest.mark.parametrize(
    "bad",
    [
        ["00" * 31],
        ["00" * 33],
        ["00" * 31 + "0", "00" * 32 + "0"],  # lengths that add up
        ["zz" * 32],
        [" " + "0" * 63],  # whitespace, which bytes.fromhex skips
        [b"00" * 32],
        [None],
        [32],
    ],
)
def test_txids_refuse_what_a_txid_refuses(bad: list[object]) -> None:
    for value in bad:
        with pytest.raises(ValueError):
            Txid.from_hex(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Txids.from_hex(["00" * 32, *bad])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Txids(bytes(33))
