"""The pure-Python RIPEMD-160 fallback against the test vectors of the RIPEMD-160 paper (Dobbertin,
Bosselaers, Preneel, 1996, appendix B), and against hashlib where hashlib has it."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import crypto
from common.ripemd160 import ripemd160 as ripemd160_pure

PAPER_VECTORS = [
    (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
    (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
    (b"abcdefghijklmnopqrstuvwxyz", "f71c27109c692c1b56bbdceb5b9d2865b3708dbc"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "12a053384a9c0c88e405a06c27dcf49ada62eb2b"),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "b0e20b6e3116640286ed3a87a5713079b21f5189",
    ),
    (b"1234567890" * 8, "9b752e45573d4b39f4dbd3323cab82bf63326bfb"),
]


def _hashlib_has_ripemd160() -> bool:
    try:
        hashlib.new("ripemd160")
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("message", "digest"), PAPER_VECTORS, ids=lambda v: repr(v)[:20])
def test_paper_vectors(message: bytes, digest: str) -> None:
    assert ripemd160_pure(message).hex() == digest
    assert crypto.ripemd160(message).hex() == digest


def test_paper_vector_million_a() -> None:
    assert ripemd160_pure(b"a" * 1_000_000).hex() == "52783243c1697bdbe16d37f97f68f08325dc1528"


@pytest.mark.skipif(not _hashlib_has_ripemd160(), reason="this OpenSSL build has no ripemd160")
@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_matches_hashlib(data: bytes) -> None:
    assert ripemd160_pure(data) == hashlib.new("ripemd160", data).digest()


@pytest.mark.parametrize("size", [54, 55, 56, 57, 63, 64, 65, 119, 120, 128])
def test_padding_boundaries_are_consistent(size: int) -> None:
    """Lengths around the 56-byte padding boundary hash to 20 bytes and differ from their neighbours."""
    digests = {ripemd160_pure(b"q" * n) for n in (size - 1, size, size + 1)}
    assert len(digests) == 3
    assert all(len(d) == 20 for d in digests)
