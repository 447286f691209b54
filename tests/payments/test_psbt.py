"""BIP174 against the BIP's own test vectors: parsing, each role, and this project's funding use."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import pytest
from coincurve import PrivateKey

from common import psbt
from common.tx import Transaction, TxIn, TxOut, decode_transaction, hash160
from common.types import Txid
from teos.regtest.address import b58check_decode
from tests.payments.vectors import load

V = load("bip174.json")
ROLES: dict[str, Any] = V["roles"]


def wif_secret(wif: str) -> bytes:
    payload = b58check_decode(wif)
    assert payload[0] == 0xEF and len(payload) == 34 and payload[33] == 1  # testnet, compressed
    return payload[1:33]


def master_fingerprint() -> bytes:
    raw = b58check_decode(ROLES["master_xprv"])
    secret = raw[46:78]
    return hash160(PrivateKey(secret).public_key.format(compressed=True))[:4]


def path_ints(path: str) -> list[int]:
    out = []
    for part in path.split("/")[1:]:
        hardened = part.endswith("'")
        out.append(int(part.rstrip("'")) | (0x80000000 if hardened else 0))
    return out


@pytest.mark.parametrize("case", V["invalid"], ids=lambda c: c["case"])
def test_invalid_vectors_are_refused(case: dict[str, str]) -> None:
    with pytest.raises(psbt.PsbtError):
        psbt.parse(bytes.fromhex(case["hex"]))


@pytest.mark.parametrize("case", V["valid"] + V["signer_checks"], ids=lambda c: c["case"])
def test_valid_vectors_parse_and_serialize_back_to_the_same_bytes(case: dict[str, str]) -> None:
    raw = bytes.fromhex(case["hex"])
    parsed = psbt.parse(raw)
    assert parsed.serialize() == raw
    assert psbt.parse_base64(parsed.to_base64()).serialize() == raw


def creator_psbt() -> psbt.Psbt:
    c = ROLES["creator"]
    tx = Transaction(
        2,
        tuple(TxIn(Txid.from_hex(i["txid"]), i["vout"], b"", 0xFFFFFFFF) for i in c["inputs"]),
        tuple(TxOut(int(Decimal(o["btc"]) * 100_000_000), bytes.fromhex(o["script"])) for o in c["outputs"]),
        0,
    )
    return psbt.Psbt.create(tx)


def test_creator() -> None:
    assert creator_psbt().serialize().hex() == ROLES["creator"]["psbt"]


def updated_psbt() -> psbt.Psbt:
    u = ROLES["updater"]
    p = creator_psbt()
    prev = [decode_transaction(bytes.fromhex(h)) for h in u["previous_txs"]]
    by_txid = {t.txid: t for t in prev}
    # Input 0 spends a legacy P2SH output (the full previous transaction), input 1 a P2SH-P2WSH one.
    p.set_non_witness_utxo(0, by_txid[p.tx.inputs[0].prev_txid])
    second = by_txid[p.tx.inputs[1].prev_txid]
    p.set_witness_utxo(1, second.outputs[p.tx.inputs[1].prev_vout])
    p.set_redeem_script(0, bytes.fromhex(u["redeem_scripts"][0]))
    p.set_redeem_script(1, bytes.fromhex(u["redeem_scripts"][1]))
    p.set_witness_script(1, bytes.fromhex(u["witness_scripts"][0]))
    fingerprint = master_fingerprint()
    keys = [(bytes.fromhex(k["pubkey"]), path_ints(k["path"])) for k in u["keys"]]
    for pubkey, path in keys[:2]:
        p.add_input_derivation(0, pubkey, fingerprint, path)
    for pubkey, path in keys[2:4]:
        p.add_input_derivation(1, pubkey, fingerprint, path)
    p.add_output_derivation(0, *keys[4][:1], fingerprint, keys[4][1])
    p.add_output_derivation(1, *keys[5][:1], fingerprint, keys[5][1])
    return p


def test_updater() -> None:
    assert updated_psbt().serialize().hex() == ROLES["updater"]["psbt"]


def test_updater_adding_sighash_all() -> None:
    p = updated_psbt()
    p.set_sighash_type(0, 1)
    p.set_sighash_type(1, 1)
    assert p.serialize().hex() == ROLES["updater_sighash_all"]["psbt"]


@pytest.mark.parametrize("signer", ["signer_1", "signer_2"])
def test_segwit_signature_matches_the_signer_vector(signer: str) -> None:
    """Our signer handles segwit v0 inputs only: its signature for the P2SH-P2WSH input (input 1) must be
    byte for byte the one in the vector (RFC6979 nonces); the legacy input is refused, not signed wrongly."""
    p = psbt.parse(bytes.fromhex(ROLES["updater_sighash_all"]["psbt"]))
    expected = psbt.parse(bytes.fromhex(ROLES[signer]["psbt"]))
    segwit_keys = [k for k in ROLES[signer]["keys"] if k["path"] in ("m/0'/0'/2'", "m/0'/0'/3'")]
    legacy_keys = [k for k in ROLES[signer]["keys"] if k not in segwit_keys]
    assert len(segwit_keys) == 1 and len(legacy_keys) == 1
    p.sign_input(1, wif_secret(segwit_keys[0]["wif"]))
    assert p.partial_sigs(1) == expected.partial_sigs(1)
    with pytest.raises(psbt.PsbtSignError):
        p.sign_input(0, wif_secret(legacy_keys[0]["wif"]))


def test_combiner() -> None:
    one = psbt.parse(bytes.fromhex(ROLES["signer_1"]["psbt"]))
    two = psbt.parse(bytes.fromhex(ROLES["signer_2"]["psbt"]))
    assert psbt.combine([one, two]).serialize().hex() == ROLES["combiner"]["psbt"]


def test_combiner_of_unknown_records_orders_keys() -> None:
    a, b = (psbt.parse(bytes.fromhex(h)) for h in ROLES["combine_unknowns"]["inputs"])
    assert psbt.combine([a, b]).serialize().hex() == ROLES["combine_unknowns"]["psbt"]


def test_finalizer_and_extractor() -> None:
    p = psbt.parse(bytes.fromhex(ROLES["combiner"]["psbt"]))
    p.finalize()
    assert p.serialize().hex() == ROLES["finalizer"]["psbt"]
    assert p.extract().raw.hex() == ROLES["extractor"]["tx"]


SIGNER_CHECKS = {
    # case -> (input the vector makes inconsistent, what our signer must say about it)
    "A Witness UTXO is provided for a non-witness input": (0, "witness UTXO is given for a non-witness"),
    "redeemScript with non-witness UTXO does not match the scriptPubKey": (0, "redeem script does not match"),
    "redeemScript with witness UTXO does not match the scriptPubKey": (1, "redeem script does not match"),
    "witnessScript with witness UTXO does not match the redeemScript": (1, "witness script does not match"),
}


@pytest.mark.parametrize("case", V["signer_checks"], ids=lambda c: c["case"])
def test_signer_refuses_inconsistent_inputs(case: dict[str, str]) -> None:
    index, reason = SIGNER_CHECKS[case["case"]]
    p = psbt.parse(bytes.fromhex(case["hex"]))
    before = p.serialize()
    keys = [wif_secret(k["wif"]) for r in ("signer_1", "signer_2") for k in ROLES[r]["keys"]]
    for key in keys:
        with pytest.raises(psbt.PsbtSignError, match=reason):
            p.sign_input(index, key)
    assert p.serialize() == before


def test_p2wpkh_round_trip_sign_finalize_extract() -> None:
    secret = hashlib.sha256(b"psbt p2wpkh").digest()
    pubkey = PrivateKey(secret).public_key.format(compressed=True)
    spk = b"\x00\x14" + hash160(pubkey)
    tx = Transaction(2, (TxIn(Txid(bytes(range(32))), 1, b"", 0xFFFFFFFD),), (TxOut(90_000, spk),), 0)
    p = psbt.Psbt.create(tx)
    with pytest.raises(psbt.PsbtSignError):
        p.sign_input(0, secret)  # the UTXO is unknown
    p.set_witness_utxo(0, TxOut(100_000, spk))
    with pytest.raises(psbt.PsbtSignError):
        p.sign_input(0, hashlib.sha256(b"someone else").digest())
    signature = p.sign_input(0, secret)
    p.finalize()
    final = p.extract()
    assert final.inputs[0].witness == (signature, pubkey)
    assert final.txid == tx.txid
    assert psbt.parse(p.serialize()).serialize() == p.serialize()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"psbt",
        b"psbt\xff",
        b"psbt\xff\x00",
        b"psbt\xff\x01\x00\xfd",
        b"\xff" * 40,
        b"psbt\xff" + b"\xfe" * 9,
    ],
)
def test_garbage_is_a_psbt_error(data: bytes) -> None:
    with pytest.raises(psbt.PsbtError):
        psbt.parse(data)


def test_base64_errors() -> None:
    with pytest.raises(psbt.PsbtError):
        psbt.parse_base64("not base64!")
    with pytest.raises(psbt.PsbtError):
        psbt.parse_base64(123)  # type: ignore[arg-type]
