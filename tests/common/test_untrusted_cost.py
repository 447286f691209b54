"""Issue 13, F2: untrusted text is length-checked before it is decoded, and decoding is linear.

A 64 KB z-base-32 ``signature`` used to cost half a second of CPU: ``zbase32.decode`` built one integer
for the whole input (quadratic), and nothing checked the length of a signature before decoding it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import crypto, zbase32


class DecodeSpy:
    def __init__(self) -> None:
        self.lengths: list[int] = []
        self.real = zbase32.decode

    def __call__(self, text: str) -> bytes:
        self.lengths.append(len(text))
        return self.real(text)


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch) -> DecodeSpy:
    spy = DecodeSpy()
    monkeypatch.setattr(crypto.zbase32, "decode", spy)
    return spy


@pytest.mark.parametrize("length", [0, 1, 103, 105, 208, 65536])
def test_signature_of_the_wrong_length_is_refused_before_decoding(decode_spy: DecodeSpy, length: int) -> None:
    text = "".join(random.choices(zbase32.ALPHABET, k=length))
    with pytest.raises(crypto.InvalidSignature, match="104 z-base-32 characters"):
        crypto.recover_public_key(b"msg", text)
    assert decode_spy.lengths == []


def test_a_lightning_signature_is_104_characters(decode_spy: DecodeSpy) -> None:
    secret = crypto.generate_secret_key()
    signature = crypto.sign(b"msg", secret)
    assert len(signature) == crypto.SIGNATURE_CHARS == 104
    assert crypto.recover_public_key(b"msg", signature) == crypto.public_key(secret)
    assert decode_spy.lengths == [104]


@settings(max_examples=100)
@given(st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 5)), st.binary(max_size=40))
def test_decoding_goes_group_by_group(head: bytes, tail: bytes) -> None:
    """Whole 8-character groups decode independently of what follows (what makes decoding linear)."""
    assert zbase32.decode(zbase32.encode(head) + zbase32.encode(tail)) == head + tail


def test_a_megabyte_of_z_base_32_decodes() -> None:
    """With the old quadratic decoder this took hours (64 KB cost 0.55 s, and it grows as the square)."""
    data = random.randbytes(640_000)
    text = zbase32.encode(data)
    assert len(text) == 1_024_000
    assert zbase32.decode(text) == data
