from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import zbase32


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"\x00", "yy"),  # 00000 000(00)
        (b"\xff", "9h"),  # 11111 111(00): 31 -> '9', 28 -> 'h'
        (b"\x00\x00\x00\x00\x00", "yyyyyyyy"),  # 40 bits, no padding
        (bytes([0x08, 0x82, 0x20, 0x88, 0x22]), "bnbnbnbn"),
    ],
)
def test_known_encodings(data: bytes, text: str) -> None:
    assert zbase32.encode(data) == text
    assert zbase32.decode(text) == data


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_round_trip(data: bytes) -> None:
    text = zbase32.encode(data)
    assert len(text) == -(-8 * len(data) // 5)
    assert set(text) <= set(zbase32.ALPHABET)
    assert zbase32.decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "0",  # not in the alphabet
        "l",
        "v",
        "2",
        "YY",  # upper case is not z-base-32
        "yy ",
        "y",  # 5 bits: no whole byte, no encoder writes this
        "yyy",  # 15 bits: 1 byte + 7 padding bits, an encoder writes 2 characters
        "yb",  # non-zero padding bits
        "\u00e9\u00e9",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        zbase32.decode(text)


@settings(max_examples=200)
@given(st.text(max_size=120))
def test_decode_only_raises_value_error(text: str) -> None:
    try:
        data = zbase32.decode(text)
    except ValueError:
        return
    assert zbase32.encode(data) == text  # strict decoding: every accepted text is canonical
