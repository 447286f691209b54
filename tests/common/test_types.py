"""The identifier value types: hex in display order for txids, and the bulk parse of a block's txids."""

from __future__ import annotations

import os

import pytest

from common.types import Txid


def test_many_from_hex_is_from_hex_for_each() -> None:
    values = [os.urandom(32).hex() for _ in range(300)] + ["AB" * 32]
    many = Txid.many_from_hex(values)
    assert many == tuple(Txid.from_hex(v) for v in values)
    assert all(type(t) is Txid and len(t.raw) == 32 for t in many)
    assert {many[0]: 1}[Txid.from_hex(values[0])] == 1  # hash and equality as usual
    assert Txid.many_from_hex([]) == ()


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
def test_many_from_hex_refuses_what_from_hex_refuses(bad: list[object]) -> None:
    for value in bad:
        with pytest.raises(ValueError):
            Txid.from_hex(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Txid.many_from_hex(["00" * 32, *bad])  # type: ignore[list-item]
