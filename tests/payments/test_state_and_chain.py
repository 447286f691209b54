"""Stored records (byte layout, round trips, corruption) and the bitcoind adapter's handling of replies."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.types import Dialect, Txid
from teos.payments.chain import ChainUnavailable, RpcFundingChain, btc_to_sats
from teos.payments.config import PaymentConfig
from teos.payments.state import ChannelState, ChannelStatus, ClaimRecord, ClaimStatus, Grant
from teos.storage import keys
from teos.storage.codec import CodecError
from tests.payments.support import CHANGE_SCRIPT, FUNDING_TXID, TOWER_KEY, USER_KEY, make_params, user_id


def test_channel_state_layout() -> None:
    params = make_params(value=1_000_000, expiry=500, fee_rate=2000)
    state = ChannelState(params, opened_at=100)
    raw = state.encode()
    expected = (
        b"\x01"
        + FUNDING_TXID.raw
        + b"\x00\x00\x00\x01"
        + (1_000_000).to_bytes(8, "big")
        + USER_KEY
        + TOWER_KEY
        + (500).to_bytes(4, "big")
        + bytes([len(CHANGE_SCRIPT)])
        + CHANGE_SCRIPT
        + (2000).to_bytes(4, "big")
        + (100).to_bytes(4, "big")
        + b"\x01"  # OPEN
        + bytes(4 + 8)  # nonce, amount
        + b"\x00"  # no signature
        + bytes(4)  # registrations
        + b"\x00"  # no grant
    )
    assert raw == expected
    assert ChannelState.decode(raw) == state


@given(
    nonce=st.integers(0, 2**32 - 1),
    amount=st.integers(0, 2**64 - 1),
    signature=st.binary(max_size=73),
    status=st.sampled_from(list(ChannelStatus)),
    grant=st.booleans(),
    dialect=st.sampled_from(list(Dialect)),
)
def test_channel_state_round_trips(
    nonce: int, amount: int, signature: bytes, status: ChannelStatus, grant: bool, dialect: Dialect
) -> None:
    params = make_params()
    g = Grant(params.channel_id, nonce, user_id(2), dialect, 3, 30, 90) if grant else None
    state = ChannelState(params, 7, status, nonce, amount, signature, 11, g)
    assert ChannelState.decode(state.encode()) == state


def test_claim_record_round_trips() -> None:
    rec = ClaimRecord(
        make_params().channel_id, 5000, Txid(bytes(range(32))), b"\x02" * 200, 900,
        ClaimStatus.CONFLICTED, 800, 801, 0, Txid(bytes(32)), 850, 3, 860,
    )  # fmt: skip
    assert ClaimRecord.decode(rec.encode()) == rec
    plain = ClaimRecord(make_params().channel_id, 1, Txid(bytes(32)), b"", 2)
    assert ClaimRecord.decode(plain.encode()) == plain


@pytest.mark.parametrize("cut", [1, 10, 100, -1])
def test_truncated_or_corrupt_records_are_codec_errors(cut: int) -> None:
    raw = ChannelState(make_params(), 1).encode()
    with pytest.raises(CodecError):
        ChannelState.decode(raw[:cut])
    with pytest.raises(CodecError):
        ChannelState.decode(raw + b"\x00")
    with pytest.raises(CodecError):
        ChannelState.decode(b"\x09" + raw[1:])  # unknown version
    bad_status = bytearray(raw)
    bad_status[1 + 36 + 8 + 33 + 33 + 4 + 1 + len(CHANGE_SCRIPT) + 8] = 9
    with pytest.raises(CodecError):
        ChannelState.decode(bytes(bad_status))


def test_key_prefixes_are_distinct() -> None:
    prefixes = [keys.APPOINTMENT, keys.LOCATOR_MARKER, keys.USER, keys.USER_APPOINTMENT, keys.EXPIRY,
                keys.TRACKER, keys.META, keys.ATOMIC, keys.GRANT]  # fmt: skip
    assert len(set(prefixes)) == len(prefixes) and all(len(p) == 1 for p in prefixes)
    cid = make_params().channel_id
    assert keys.grant(cid.raw, 2) == b"g" + cid.raw + b"\x00\x00\x00\x02"
    assert keys.grant(cid.raw, 2).startswith(keys.grants_of_channel(cid.raw))
    with pytest.raises(ValueError):
        keys.grant(b"short", 1)


# -- the bitcoind adapter -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sats"),
    [
        (0.0025, 250_000),
        (21_000_000, 2_100_000_000_000_000),
        (0.00000001, 1),
        (Decimal("1.23456789"), 123456789),
    ],
)
def test_btc_to_sats(value: Any, sats: int) -> None:
    assert btc_to_sats(value) == sats


@pytest.mark.parametrize("value", [0.000000001, -1, "x", None, True, [1]])
def test_btc_to_sats_refusals(value: Any) -> None:
    with pytest.raises(ValueError):
        btc_to_sats(value)


def test_rpc_chain_reads_gettxout() -> None:
    calls: list[tuple[Any, ...]] = []

    def rpc(method: str, *params: Any) -> Any:
        calls.append((method, *params))
        if method == "getblockcount":
            return 123
        return {"confirmations": 4, "value": 0.0025, "scriptPubKey": {"hex": "0014" + "00" * 20}}

    chain = RpcFundingChain(rpc)
    out = chain.get_tx_out(FUNDING_TXID, 1)
    assert out is not None and (out.value, out.confirmations) == (250_000, 4)
    assert calls[0] == ("gettxout", FUNDING_TXID.hex(), 1, True)
    assert chain.tip_height() == 123
    assert RpcFundingChain(rpc, tip=lambda: 7).tip_height() == 7


@pytest.mark.parametrize(
    "reply",
    [{"value": 1}, {"confirmations": "x", "value": 1, "scriptPubKey": {"hex": "00"}}, "nonsense", 5],
)
def test_rpc_chain_turns_odd_replies_into_unavailable(reply: Any) -> None:
    with pytest.raises(ChainUnavailable):
        RpcFundingChain(lambda *a: reply).get_tx_out(FUNDING_TXID, 0)


def test_rpc_chain_down() -> None:
    def down(*a: Any) -> Any:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(ChainUnavailable):
        RpcFundingChain(down).get_tx_out(FUNDING_TXID, 0)
    with pytest.raises(ChainUnavailable):
        RpcFundingChain(down).tip_height()
    assert RpcFundingChain(lambda *a: None).get_tx_out(FUNDING_TXID, 0) is None
    with pytest.raises(ChainUnavailable):
        RpcFundingChain(lambda *a: -3).tip_height()


@pytest.mark.parametrize(
    "settings",
    [{"price": -1}, {"claim_margin": 300}, {"fee_rate": 50}, {"min_funding_confirmations": 0},
     {"bump_margin": 200}, {"max_bump_fee_rate": 1000}, {"max_channel_blocks": 10}],
)  # fmt: skip
def test_payment_config_refuses_inconsistent_settings(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        PaymentConfig(**settings)


def test_payment_config_defaults_are_a_free_tower() -> None:
    config = PaymentConfig()
    assert not config.paid and config.claim_margin < config.min_blocks_before_expiry
    terms = config.terms(TOWER_KEY, 10000, 4320, "regtest")
    assert terms.price == 0 and terms.tower_key == TOWER_KEY
