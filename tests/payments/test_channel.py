"""The channel's byte formats (known answers written out by hand from docs/PAYMENTS.md), amounts and
signatures; the segwit address codec against BIP173/BIP350's vectors."""

from __future__ import annotations

import struct

import pytest
from coincurve import PrivateKey

from common import bech32, channel, script, sighash
from common.channel import ChannelError, ChannelId
from common.tx import hash160, sha256
from common.types import Txid
from tests.payments.support import (
    CHANGE_SCRIPT,
    FUNDING_TXID,
    TOWER_KEY,
    TOWER_SECRET,
    USER_KEY,
    USER_SECRET,
    make_params,
    secret,
)

# -- the funding script ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expiry", "push"),
    [
        (16, "60"),  # OP_16
        (127, "017f"),
        (128, "028000"),  # the sign bit forces a second byte
        (500, "02f401"),
        (840_000, "0340d10c"),  # 0x0cd140
        (499_999_999, "04ff64cd1d"),
    ],
)
def test_witness_script_bytes(expiry: int, push: str) -> None:
    expected = (
        "63" + "21" + TOWER_KEY.hex() + "ad" + "67" + push + "b175" + "68" + "21" + USER_KEY.hex() + "ac"
    )
    assert channel.funding_witness_script(USER_KEY, TOWER_KEY, expiry).hex() == expected


def test_funding_output_and_address() -> None:
    params = make_params()
    ws = params.witness_script
    assert params.script_pubkey == b"\x00\x20" + sha256(ws)
    version, program = bech32.decode("bcrt", params.address("regtest"))
    assert (version, program) == (0, sha256(ws))
    assert params.address("mainnet").startswith("bc1q") and len(params.address("mainnet")) == 62


# BIP173 / BIP350: valid addresses and their scripts, then invalid ones.
VALID_ADDRESSES = [
    ("mainnet", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "testnet",
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "mainnet",
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "testnet",
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "mainnet",
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
    ("mainnet", "BC1SW50QGDZ25J", "6002751e"),
]


@pytest.mark.parametrize(("network", "address", "script_hex"), VALID_ADDRESSES)
def test_valid_addresses(network: str, address: str, script_hex: str) -> None:
    assert bech32.address_to_script(address, network).hex() == script_hex
    assert bech32.script_to_address(bytes.fromhex(script_hex), network) == address.lower()


@pytest.mark.parametrize(
    "address",
    [
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",  # bad checksum
        "bc1rw5uspcuh",  # program length
        "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",  # v0 program length
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",  # mixed case
        "bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du",  # padding
        "bc1gmk9yu",  # empty data
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",  # v1 with a bech32 checksum
        "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",  # v0 with a bech32m checksum
        "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",  # another network
    ],
)
def test_invalid_addresses(address: str) -> None:
    with pytest.raises(bech32.AddressError):
        bech32.address_to_script(address, "mainnet")


def test_the_channel_address_is_bip173_on_a_known_script() -> None:
    """BIP173's P2WSH example is the P2WSH of ``<G> OP_CHECKSIG``; our P2WSH encoder gives its address."""
    generator = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    ws = script.push_data(generator) + b"\xac"
    assert bech32.script_to_address(script.p2wsh(ws), "mainnet") == (
        "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3"
    )


# -- the payment ------------------------------------------------------------------------------------------


def test_payment_transaction_bytes() -> None:
    """Version 2 | 1 input (funding outpoint, empty scriptSig, 0xfffffffd) | tower output | change | 0."""
    params = make_params(value=1_000_000, expiry=500, fee_rate=2000)
    # Fee at 2000 sat/kvB: with change, 113 stripped bytes + 230 witness bytes (two 72-byte signature
    # bounds, the selector, the 78-byte script) -> weight 682 -> 171 vB -> 342 sat. Without: 140 vB -> 280.
    assert params.payment_fee(True) == 342
    assert params.payment_fee(False) == 280
    amount = 10_000
    tx = channel.payment_tx(params, amount)
    tower_spk = "0014" + hash160(TOWER_KEY).hex()
    expected = (
        "02000000"
        + "01"
        + FUNDING_TXID.raw.hex()
        + "01000000"
        + "00"
        + "fdffffff"
        + "02"
        + struct.pack("<q", amount).hex()
        + "16"
        + tower_spk
        + struct.pack("<q", 1_000_000 - amount - 342).hex()
        + "16"
        + CHANGE_SCRIPT.hex()
        + "00000000"
    )
    assert tx.raw.hex() == expected
    # The signed claim's real virtual size never exceeds the size the fee was computed for.
    claim = channel.claim_tx(params, amount, channel.sign_payment(params, amount, USER_SECRET), TOWER_SECRET)
    assert claim.vsize <= 171
    assert claim.txid == tx.txid


def test_amount_rules_around_dust() -> None:
    params = make_params(value=100_000)
    dust_change = script.dust_threshold(CHANGE_SCRIPT)
    assert dust_change == 294
    top_with_change = 100_000 - 342 - 294
    assert params.max_amount_with_change == top_with_change
    assert params.max_amount == 100_000 - 280
    assert params.change_for(top_with_change) == 294
    assert params.change_for(params.max_amount) is None
    assert len(channel.payment_tx(params, params.max_amount).outputs) == 1
    for bad in (top_with_change + 1, params.max_amount - 1, params.max_amount + 1, 293, 0, -5):
        with pytest.raises(ChannelError):
            params.change_for(bad)
    with pytest.raises(ChannelError):
        params.change_for(True)
    assert params.change_for(294) == 100_000 - 294 - 342


def test_signatures_commit_to_the_exact_payment() -> None:
    params = make_params()
    sig = channel.sign_payment(params, 20_000, USER_SECRET)
    assert channel.verify_payment_signature(params, 20_000, sig)
    assert not channel.verify_payment_signature(params, 20_001, sig)
    assert not channel.verify_payment_signature(make_params(vout=2), 20_000, sig)
    assert not channel.verify_payment_signature(make_params(fee_rate=2001), 20_000, sig)
    assert not channel.verify_payment_signature(params, 20_000, sig[:-1] + bytes([sighash.SIGHASH_SINGLE]))
    other = channel.sign_payment(params, 20_000, secret("not the user"))
    assert not channel.verify_payment_signature(params, 20_000, other)
    with pytest.raises(ChannelError):
        channel.claim_tx(params, 20_000, other, TOWER_SECRET)


def test_claim_witness_and_signatures() -> None:
    params = make_params()
    user_sig = channel.sign_payment(params, 20_000, USER_SECRET)
    claim = channel.claim_tx(params, 20_000, user_sig, TOWER_SECRET)
    w = claim.inputs[0].witness
    assert w[0] == user_sig and w[2] == b"\x01" and w[3] == params.witness_script
    digest = channel.payment_sighash(params, 20_000)
    assert sighash.verify(TOWER_KEY, w[1], digest)
    assert sighash.verify(USER_KEY, w[0], digest)


def test_refund_transaction() -> None:
    params = make_params(value=50_000, expiry=777)
    dest = script.p2wpkh(USER_KEY)
    tx = channel.refund_tx(params, dest, 1000, USER_SECRET)
    assert tx.locktime == 777 and tx.version == 2
    assert tx.inputs[0].sequence == channel.REFUND_SEQUENCE != 0xFFFFFFFF
    assert tx.inputs[0].outpoint == (FUNDING_TXID, 1)
    sig, selector, ws = tx.inputs[0].witness
    assert selector == b"" and ws == params.witness_script
    unsigned = channel.with_witness(tx, ())
    assert sighash.verify(USER_KEY, sig, sighash.bip143_sighash(unsigned, 0, ws, 50_000))
    assert tx.outputs[0].value == 50_000 - channel.refund_fee(params, dest, 1000)
    assert channel.refund_fee(params, dest, 1000) >= tx.vsize  # at 1 sat/vB the bound covers the real size
    with pytest.raises(ChannelError):
        channel.refund_tx(make_params(value=2_000, expiry=777), dest, 50_000, USER_SECRET)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tower_key": USER_KEY}, "differ"),
        ({"expiry": 0}, "expiry"),
        ({"expiry": 500_000_000}, "expiry"),
        ({"fee_rate": 0}, "fee_rate"),
        ({"change_script": b"\x6a\x00"}, "change_script"),
        ({"value": 300}, "cannot pay"),
        ({"tower_key": b"\x02" + bytes(32)}, "point"),
        ({"tower_key": b"\x04" + bytes(32)}, "compressed"),
    ],
)
def test_parameter_validation(change: dict[str, object], field: str) -> None:
    params = make_params(**change)  # type: ignore[arg-type]
    with pytest.raises(ChannelError, match=field):
        params.validate()


def test_valid_parameters_validate() -> None:
    make_params().validate()
    make_params(change_script=bytes.fromhex("5120" + "11" * 32)).validate()  # P2TR change


def test_channel_id_text_and_bytes() -> None:
    cid = ChannelId(Txid.from_hex("ab" * 32), 7)
    assert str(cid) == "ab" * 32 + ":7"
    assert ChannelId.parse(str(cid)) == cid
    assert cid.raw == bytes.fromhex("ab" * 32)[::-1] + b"\x00\x00\x00\x07"
    assert ChannelId.from_raw(cid.raw) == cid
    for bad in ("ab" * 32, "AB" * 32 + ":1", "ab" * 32 + ":01", "ab" * 32 + ":-1", "ab" * 31 + ":1",
                "ab" * 32 + ":4294967296", "ab" * 32 + ":1:2", 5):  # fmt: skip
        with pytest.raises(ChannelError):
            ChannelId.parse(bad)  # type: ignore[arg-type]


def test_dust_thresholds_match_core() -> None:
    assert script.dust_threshold(bytes.fromhex("76a914" + "00" * 20 + "88ac")) == 546
    assert script.dust_threshold(bytes.fromhex("a914" + "00" * 20 + "87")) == 540
    assert script.dust_threshold(bytes.fromhex("0014" + "00" * 20)) == 294
    assert script.dust_threshold(bytes.fromhex("0020" + "00" * 32)) == 330
    assert script.dust_threshold(bytes.fromhex("5120" + "00" * 32)) == 330


def test_push_int_minimal_encodings() -> None:
    assert script.push_int(0) == b"\x00"
    assert script.push_int(-1) == b"\x4f"
    assert script.push_int(255) == b"\x02\xff\x00"
    assert script.push_int(-255) == b"\x02\xff\x80"
    assert script.push_int(256) == b"\x02\x00\x01"


def test_the_tower_key_in_the_script_is_the_one_paid() -> None:
    params = make_params()
    assert params.tower_script == b"\x00\x14" + hash160(PrivateKey(TOWER_SECRET).public_key.format())
