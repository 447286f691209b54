"""The payment key's derivation and the forms an operator imports it in, checked against the simulator's
own base58 and descriptor code (written apart from these, and checked against Bitcoin Core's)."""

from __future__ import annotations

import hashlib

import pytest

from common import payment_key
from teos.regtest.address import b58check_decode
from teos.regtest.address import descriptor_checksum as simulator_checksum

SECRET = hashlib.sha256(b"payment key vectors").digest()


def test_the_derivation_is_the_documented_one() -> None:
    tower = hashlib.sha256(b"teos docs tower").digest()
    assert payment_key.derive_payment_secret(tower) == hashlib.sha256(b"teos/payment-key/v1" + tower).digest()
    with pytest.raises(ValueError):
        payment_key.derive_payment_secret(b"short")


@pytest.mark.parametrize("network,version", [("mainnet", 0x80), ("regtest", 0xEF), ("testnet", 0xEF)])
def test_wif_round_trips(network: str, version: int) -> None:
    raw = b58check_decode(payment_key.wif(SECRET, network))
    assert raw == bytes([version]) + SECRET + b"\x01"
    first = ("K", "L") if network == "mainnet" else ("c",)
    assert payment_key.wif(SECRET, network)[0] in first


def test_the_descriptor_checksum_agrees_with_the_simulators() -> None:
    for body in ("wpkh(" + payment_key.wif(SECRET, "regtest") + ")", "addr(bcrt1qqqqqqq)", "raw(00)"):
        assert payment_key.descriptor_checksum(body) == simulator_checksum(body)
    full = payment_key.descriptor(SECRET, "mainnet")
    body, checksum = full.split("#")
    assert body.startswith("wpkh(") and checksum == simulator_checksum(body)
    with pytest.raises(ValueError):
        payment_key.descriptor_checksum("wpkh(\u00e9)")
