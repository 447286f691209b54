"""BIP143 signature hashes and signatures against the BIP's examples; strict signature encoding."""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PrivateKey

from common import sighash
from common.tx import decode_transaction
from tests.payments.vectors import load

CASES: list[dict[str, Any]] = load("bip143.json")["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_bip143_examples(case: dict[str, Any]) -> None:
    tx = decode_transaction(bytes.fromhex(case["unsigned_tx"]))
    digest = sighash.bip143_sighash(
        tx, case["index"], bytes.fromhex(case["script_code"]), case["amount"], case["hashtype"]
    )
    assert digest.hex() == case["sighash"]
    secret = bytes.fromhex(case["private_key"])
    assert PrivateKey(secret).public_key.format(compressed=True).hex() == case["public_key"]
    signature = bytes.fromhex(case["signature"])
    assert sighash.verify(bytes.fromhex(case["public_key"]), signature, digest)
    # libsecp256k1's RFC6979 nonce gives the BIP's signature byte for byte.
    assert sighash.sign(secret, digest, case["hashtype"]) == signature


def test_a_signature_does_not_verify_another_digest_or_key() -> None:
    case = CASES[0]
    tx = decode_transaction(bytes.fromhex(case["unsigned_tx"]))
    digest = sighash.bip143_sighash(tx, case["index"], bytes.fromhex(case["script_code"]), case["amount"])
    signature = bytes.fromhex(case["signature"])
    other_amount = sighash.bip143_sighash(
        tx, case["index"], bytes.fromhex(case["script_code"]), case["amount"] + 1
    )
    assert not sighash.verify(bytes.fromhex(case["public_key"]), signature, other_amount)
    other_key = PrivateKey(bytes(31) + b"\x07").public_key.format(compressed=True)
    assert not sighash.verify(other_key, signature, digest)
    assert not sighash.verify(b"\x02" + bytes(32), signature, digest)  # not a point


GOOD = bytes.fromhex(
    "304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f90"
    "300e8f3358f51928d43c212a8caed02de67eebee01"
)
ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _der(r: bytes, s: bytes, hashtype: int = 1) -> bytes:
    body = b"\x02" + bytes([len(r)]) + r + b"\x02" + bytes([len(s)]) + s
    return b"\x30" + bytes([len(body)]) + body + bytes([hashtype])


def test_strict_encoding_accepts_the_good_signature() -> None:
    der, hashtype = sighash.check_signature_encoding(GOOD)
    assert hashtype == 1 and der == GOOD[:-1]


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (b"", "bytes"),
        (GOOD[:-1] + b"\x04", "hash type"),
        (GOOD[:-1] + b"\x00", "hash type"),
        (b"\x31" + GOOD[1:], "DER sequence"),
        (GOOD[:1] + bytes([GOOD[1] + 1]) + GOOD[2:], "DER sequence"),
        (_der(b"\x00\x01", b"\x01"), "non-minimal R"),
        (_der(b"\x81", b"\x01"), "negative R"),
        (_der(b"\x01", b"\x80"), "negative S"),
        (_der(b"\x01\x02", b""), "empty S"),
        (_der(b"\x01", b"\x00"), "S is not low"),
        (_der(b"\x01", ((ORDER // 2) + 1).to_bytes(32, "big")), "S is not low"),
        (GOOD + b"\x01", "DER sequence"),
        (bytes(80), "signature of 80 bytes"),
    ],
)
def test_strict_encoding_refusals(signature: bytes, reason: str) -> None:
    with pytest.raises(sighash.SignatureEncodingError, match=reason):
        sighash.check_signature_encoding(signature)


def test_high_s_twin_of_a_valid_signature_is_refused() -> None:
    """The malleated (high S) form of a valid signature verifies mathematically but breaks policy."""
    der = GOOD[:-1]
    r_len = der[3]
    r = der[4 : 4 + r_len]
    s = int.from_bytes(der[6 + r_len :], "big")
    high = (ORDER - s).to_bytes(33, "big").lstrip(b"\x00")
    if high[0] & 0x80:
        high = b"\x00" + high
    twin = _der(r, high)
    with pytest.raises(sighash.SignatureEncodingError, match="S is not low"):
        sighash.check_signature_encoding(twin)
    assert not sighash.verify(bytes.fromhex(CASES[0]["public_key"]), twin, bytes(32))


def test_sighash_index_out_of_range() -> None:
    tx = decode_transaction(bytes.fromhex(CASES[0]["unsigned_tx"]))
    with pytest.raises(IndexError):
        sighash.bip143_sighash(tx, 5, b"", 0)
