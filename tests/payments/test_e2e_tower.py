"""A paid teosd end to end: the real daemon (subprocess, LevelDB on disk, API workers over HTTP on
127.0.0.1) against the ``bitcoind`` fixture (the script-validating simulator, and Bitcoin Core when one is
found), with real funding, payment, claim and refund transactions.

Narrated like a functional test; each test names the part of issue 14's "done when" it shows.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from common import crypto, script
from common.channel_wire import ChannelView
from common.client import TowerClient
from common.http import HttpError
from common.payment_client import ChannelRecord
from common.types import Dialect, Txid
from teos.devtools import wait_until
from tests.daemon.conftest import TeosdFactory, metric
from tests.payments.tower import (
    CLAIM_CONFIRMATIONS,
    CLAIM_MARGIN,
    MIN_BLOCKS,
    PRICE,
    SLOTS,
    PaidTower,
    User,
    coins,
    height,
    mine_to,
    start_paid_tower,
    wait_in_mempool,
)
from tests.support.bitcoind import BitcoindHandle

pytestmark = pytest.mark.e2e


@pytest.fixture
def tower(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> PaidTower:
    return start_paid_tower(bitcoind, teosd_factory)


def open_paid_channel(
    node: BitcoindHandle, tower: PaidTower, user: User, value: int = 100_000, blocks: int = 200
) -> ChannelRecord:
    (coin,) = coins(node, 1)
    record = user.fund(node, coin, value, height(node) + blocks)
    node.mine(1)
    wait_until(lambda: tower.daemon.check_alive() or _tip(tower) >= height(node), 30, "teosd at the tip")
    return user.payments.open_channel(record)


def _tip(tower: PaidTower) -> int:
    tip: int = tower.admin().get_tower_info()["tip_height"] or 0
    return tip


def _processed(tower: PaidTower) -> int:
    last: int = tower.admin().get_tower_info()["last_processed_block"]["height"] or 0
    return last


def wait_processed(tower: PaidTower, node: BitcoindHandle) -> None:
    target = height(node)
    wait_until(lambda: _processed(tower) >= target, 30, f"teosd to process block {target}")


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_the_full_flow_with_the_claim_confirmed_before_expiry(
    bitcoind: BitcoindHandle, tower: PaidTower, dialect: Dialect
) -> None:
    node = bitcoind
    user = User(tower, dialect)

    # An unpaid registration gets 402 and the signed terms, in the caller's dialect.
    with pytest.raises(HttpError) as info:
        user.client.register()
    assert info.value.status == 402
    assert info.value.body["error_code"] == (-100 if dialect is Dialect.PYTHON else 80)
    terms = user.payments.check_terms(info.value.body)
    assert terms.price == PRICE and terms.network == "regtest"
    assert user.fetch_terms() == terms

    # The user funds a channel (a real wallet transaction) and opens it once it is confirmed.
    (coin,) = coins(node, 1)
    expiry = height(node) + 60
    record = user.fund(node, coin, 50_000, expiry)
    with pytest.raises(HttpError) as info:
        user.payments.open_channel(record)
    assert info.value.status == 400 and info.value.body["reason"] == "funding_unconfirmed"
    node.mine(1)
    wait_processed(tower, node)
    record = user.payments.open_channel(record)
    assert record.status == "open"

    # Two registrations paid: the receipt is the dialect's and the channel's amount is acknowledged.
    paid = user.payments.pay(record, registrations=2)
    assert paid.registrations == 2 and paid.receipt["available_slots"] == 2 * SLOTS
    assert paid.record.amount == 2 * PRICE and paid.record.nonce == 1
    record = paid.record

    # An appointment, accepted against the paid slots, with a checked receipt.
    pair = node.wallet().breach_pair()
    sent = user.client.add_appointment(pair.commitment.txid, pair.penalty.raw)
    user.client.check_appointment(sent, tower.tower_id)
    assert sent.response["available_slots"] == 2 * SLOTS - 1

    # teosd claims by itself once expiry - tip <= claim_margin, and follows the claim to its confirmation.
    mine_to(node, expiry - CLAIM_MARGIN - 1)
    wait_processed(tower, node)
    assert tower.channel(record.channel_id)["status"] == "open"
    node.mine(1)
    wait_until(lambda: tower.channel(record.channel_id)["claim_txid"] is not None, 30, "the claim")
    claim_txid = tower.channel(record.channel_id)["claim_txid"]
    wait_in_mempool(node, claim_txid)
    node.mine(1)
    confirmed_at = height(node)
    assert confirmed_at <= expiry
    node.mine(CLAIM_CONFIRMATIONS - 1)
    wait_processed(tower, node)
    wait_until(lambda: tower.channel(record.channel_id)["status"] == "claimed", 30, "the claim to complete")
    line = tower.channel(record.channel_id)
    assert (line["paid"], line["claimed"], line["unclaimed"]) == (2 * PRICE, 2 * PRICE, 0)
    assert line["claim_confirmed_height"] == confirmed_at

    # The claim pays the tower's payment key and the user's change, as signed.
    claim = node.rpc("getrawtransaction", claim_txid, True, node.rpc("getblockhash", confirmed_at))
    assert round(claim["vout"][0]["value"] * 100_000_000) == 2 * PRICE
    assert claim["vout"][0]["scriptPubKey"]["hex"] == script.p2wpkh(terms.tower_key).hex()
    assert claim["vout"][1]["scriptPubKey"]["hex"] == record.params.change_script.hex()

    # The user reads the channel's final state, signed.
    final = user.payments.get_channel(record)
    assert final.status == "claimed" and final.amount == 2 * PRICE
    assert metric(tower.admin_port, "teos_payments_sats_claimed") == 2 * PRICE
    refused = 'teos_payments_refusals_total{reason="payment_required"}'  # counted by a worker, forwarded
    wait_until(lambda: _metric_or_zero(tower, refused) >= 1, 10, "the refusal to be counted")


def _metric_or_zero(tower: PaidTower, name: str) -> float:
    try:
        return metric(tower.admin_port, name)
    except AssertionError:
        return 0.0
