"""A paid teosd end to end: the real daemon (subprocess, LevelDB on disk, API workers over HTTP on
127.0.0.1) against the ``bitcoind`` fixture (the script-validating simulator, and Bitcoin Core when one is
found), with real funding, payment, claim and refund transactions.

Narrated like a functional test; each test names the part of issue 14's "done when" it shows.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from dataclasses import replace
from typing import Any

import pytest

from common import channel, crypto, script
from common.channel import ChannelId
from common.channel_wire import PayRequest, make_pay_request, pay_message
from common.http import HttpError
from common.payment_client import ChannelRecord
from common.tx import TxOut
from common.types import Dialect, UserId
from teos.cli import teos_cli
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
    refund,
    start_paid_tower,
    wait_in_mempool,
)
from tests.support.bitcoind import BitcoindHandle, RPCError

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
    wait_processed(tower, node)
    return user.payments.open_channel(record)


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

    # The operator's key for what the tower earned pays exactly where the claim paid.
    key = _paymentkey(tower)
    assert key["address"] == claim["vout"][0]["scriptPubKey"]["address"]
    if node.kind == "bitcoin-core":  # Core reads the descriptor (and its checksum) as teos-cli wrote it
        body, checksum = key["descriptor"].split("#")
        info = node.rpc("getdescriptorinfo", body)
        assert info["checksum"] == checksum and info["hasprivatekeys"]
        assert terms.tower_key.hex() in info["descriptor"]

    # The user reads the channel's final state, signed.
    final = user.payments.get_channel(record)
    assert final.status == "claimed" and final.amount == 2 * PRICE
    assert metric(tower.admin_port, "teos_payments_sats_claimed") == 2 * PRICE
    refused = 'teos_payments_refusals_total{reason="payment_required"}'  # counted by a worker, forwarded
    wait_until(lambda: _metric_or_zero(tower, refused) >= 1, 10, "the refusal to be counted")


def _paymentkey(tower: PaidTower) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    args = ["--datadir", str(tower.daemon.datadir), "--btcnetwork", "regtest", "paymentkey"]
    assert teos_cli.run(args, out=out, err=err) == 0, err.getvalue()
    key: dict[str, Any] = json.loads(out.getvalue())
    return key


def _metric_or_zero(tower: PaidTower, name: str) -> float:
    try:
        return metric(tower.admin_port, name)
    except AssertionError:
        return 0.0


def test_sixteen_threads_paying_on_one_channel(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> None:
    """Each accepted payment raised the channel's amount by what it paid, and no slots were granted twice:
    16 users (both dialects), each paying on the same channel from its own thread and connection, retrying
    after reading the channel whenever another payment won the race. They all come from 127.0.0.1, as
    behind Tor, so the tower is told so (``--behindproxy``: one address may have more requests in progress
    than half of a worker's threads)."""
    node = bitcoind
    tower = start_paid_tower(bitcoind, teosd_factory, extra=["--behindproxy"])
    owner = User(tower, Dialect.RUST)
    record = open_paid_channel(node, tower, owner, value=400_000)
    accepted: list[tuple[int, int, str]] = []  # (nonce, amount, user id)
    conflicts = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def payer(index: int) -> None:
        user = User(tower, Dialect.PYTHON if index % 2 else Dialect.RUST)
        mine = record
        try:
            barrier.wait()
            done = 0
            while done < 3:
                try:
                    paid = user.payments.pay(mine)
                except HttpError as e:
                    if e.status == 409 and e.body.get("reason") == "stale_nonce":
                        with lock:
                            conflicts[0] += 1
                        mine = user.payments.get_channel(mine)
                        continue
                    raise
                with lock:
                    accepted.append((paid.record.nonce, paid.record.amount, user.user_id.hex()))
                done += 1
                mine = paid.record
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=payer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(accepted) == 48
    assert sorted(n for n, _, _ in accepted) == list(range(1, 49))  # every nonce accepted exactly once
    assert all(amount == nonce * PRICE for nonce, amount, _ in accepted)  # each raised it by the price
    final = owner.payments.get_channel(record)
    assert (final.nonce, final.amount, final.registrations) == (48, 48 * PRICE, 48)
    for user_hex in {u for _, _, u in accepted}:  # three registrations each, never more
        info = tower.user(UserId.from_hex(user_hex))
        assert info is not None and info["available_slots"] == 3 * SLOTS
    print(f"16 payers: 48 payments accepted, {conflicts[0]} lost races retried")


def _refused(call: Any, status: int, reason: str, dialect: Dialect, codes: tuple[int, int]) -> None:
    with pytest.raises(HttpError) as info:
        call()
    body = info.value.body
    assert (info.value.status, body.get("reason")) == (status, reason), body
    assert body["error_code"] == (codes[0] if dialect is Dialect.PYTHON else codes[1]), body


INVALID_PAYMENT = (-101, 81)
CHANNEL_UNAVAILABLE = (-103, 83)
INVALID_FUNDING = (-104, 84)
PAYMENT_CONFLICT = (-105, 85)


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_every_bad_input_is_refused_in_the_callers_dialect_and_changes_nothing(
    bitcoind: BitcoindHandle, tower: PaidTower, dialect: Dialect
) -> None:
    node = bitcoind
    user = User(tower, dialect)
    funded = coins(node, 4)
    expiry = height(node) + 40
    record = user.fund(node, funded[0], 60_000, expiry)

    # Funding: unconfirmed, not the channel's script, spent.
    _refused(lambda: user.payments.open_channel(record), 400, "funding_unconfirmed", dialect, INVALID_FUNDING)
    node.mine(1)
    wait_processed(tower, node)
    other = node.wallet().build([funded[1]], [TxOut(60_000, script.p2wpkh(record.user_key))], change=True)
    node.rpc("sendrawtransaction", other.hex)
    node.mine(1)
    wait_processed(tower, node)
    wrong = replace(record, params=replace(record.params, channel_id=ChannelId(other.txid, 0)))
    _refused(lambda: user.payments.open_channel(wrong), 400, "funding_wrong_script", dialect, INVALID_FUNDING)
    spent = replace(
        record, params=replace(record.params, channel_id=ChannelId(funded[1].txid, funded[1].vout))
    )
    _refused(lambda: user.payments.open_channel(spent), 400, "funding_not_found", dialect, INVALID_FUNDING)
    record = user.payments.open_channel(record)
    record = user.payments.pay(record).record  # nonce 1

    def send(request: PayRequest) -> Any:
        return user.client.request("POST", "/pay", request.to_json())

    def post(request: PayRequest) -> None:
        status, body = send(request)
        if status != 200:
            raise HttpError(status, body)

    params, secret, uid = record.params, record.user_secret, user.user_id
    good = make_pay_request(params, 2, 2 * PRICE, uid, dialect, secret)
    forged = replace(good, signature=crypto.sign(good.message(), crypto.generate_secret_key()))
    _refused(lambda: post(forged), 400, "bad_request_signature", dialect, INVALID_PAYMENT)
    stale = make_pay_request(params, 1, 2 * PRICE, uid, dialect, secret)  # signed for a nonce already used
    _refused(lambda: post(stale), 409, "stale_nonce", dialect, PAYMENT_CONFLICT)
    too_low = make_pay_request(params, 2, 2 * PRICE - 1, uid, dialect, secret)
    _refused(lambda: post(too_low), 400, "amount_too_low", dialect, INVALID_PAYMENT)
    bad_sig = replace(
        good, payment_signature=channel.sign_payment(params, 2 * PRICE, crypto.generate_secret_key())
    )
    _refused(lambda: post(bad_sig), 400, "bad_payment_signature", dialect, INVALID_PAYMENT)
    tx = good.payment_tx
    variants = {
        "extra_outputs": replace(tx, outputs=(*tx.outputs, TxOut(1000, script.p2wpkh(record.user_key)))),
        "wrong_fee": replace(
            tx, outputs=(tx.outputs[0], replace(tx.outputs[1], value=tx.outputs[1].value - 1))
        ),
        "lock_time": replace(tx, locktime=height(node)),
    }
    for reason, bad_tx in variants.items():
        message = pay_message(params.channel_id, 2, 2 * PRICE, uid, dialect, bad_tx)
        request = replace(good, payment_tx=bad_tx, signature=crypto.sign(message, secret))
        _refused(lambda r=request: post(r), 400, reason, dialect, INVALID_PAYMENT)

    # Nothing was charged or granted by any of them.
    assert user.payments.get_channel(record).nonce == 1
    info = tower.user(uid)
    assert info is not None and info["available_slots"] == SLOTS

    # Too near the expiry: refused as the channel being unavailable; and a new channel that near too.
    mine_to(node, expiry - MIN_BLOCKS + 1)
    wait_processed(tower, node)
    _refused(lambda: post(good), 409, "expiry_too_near", dialect, CHANNEL_UNAVAILABLE)
    near = user.fund(node, funded[2], 60_000, height(node) + MIN_BLOCKS - 1)
    node.mine(1)
    wait_processed(tower, node)
    _refused(lambda: user.payments.open_channel(near), 409, "expiry_too_near", dialect, CHANNEL_UNAVAILABLE)
    assert user.payments.get_channel(record).nonce == 1


def restart(
    node: BitcoindHandle, tower: PaidTower, factory: TeosdFactory, how: int = signal.SIGTERM
) -> PaidTower:
    """Stops teosd (``how``: SIGTERM, or SIGKILL for a crash) and starts it again on the same datadir."""
    tower.daemon.signal(how)
    tower.daemon.wait(30)
    tower.daemon.stop()
    return start_paid_tower(node, factory, datadir=tower.daemon.datadir, admin_port=tower.admin_port)


def test_the_tower_down_until_near_expiry_claims_at_once_on_restart(
    bitcoind: BitcoindHandle, tower: PaidTower, teosd_factory: TeosdFactory
) -> None:
    node = bitcoind
    user = User(tower, Dialect.RUST)
    record = user.payments.pay(open_paid_channel(node, tower, user, blocks=60)).record
    expiry = record.params.expiry
    tower.daemon.signal(signal.SIGTERM)
    tower.daemon.wait(30)
    mine_to(node, expiry - CLAIM_MARGIN + 5)  # well inside the margin, 5 blocks before the deadline
    tower = restart(node, tower, teosd_factory)
    wait_until(lambda: tower.channel(record.channel_id)["claim_txid"] is not None, 30, "the claim")
    claim_txid = tower.channel(record.channel_id)["claim_txid"]
    wait_in_mempool(node, claim_txid)
    node.mine(1)
    assert height(node) <= expiry
    node.mine(CLAIM_CONFIRMATIONS - 1)
    wait_until(lambda: tower.channel(record.channel_id)["status"] == "claimed", 30, "the claim to complete")
    assert tower.channel(record.channel_id)["claimed"] == PRICE


def test_a_claim_reorged_out_is_broadcast_and_confirmed_again(
    bitcoind: BitcoindHandle, tower: PaidTower
) -> None:
    node = bitcoind
    user = User(tower, Dialect.PYTHON)
    record = user.payments.pay(open_paid_channel(node, tower, user, blocks=60)).record
    mine_to(node, record.params.expiry - CLAIM_MARGIN)
    wait_until(lambda: tower.channel(record.channel_id)["claim_txid"] is not None, 30, "the claim")
    claim_txid = tower.channel(record.channel_id)["claim_txid"]
    wait_in_mempool(node, claim_txid)
    (first,) = node.mine(1)
    at = height(node)
    wait_until(lambda: tower.channel(record.channel_id)["claim_confirmed_height"] == at, 30, "confirmed")

    node.rpc("invalidateblock", first)  # the block holding the claim leaves the best chain
    wait_until(lambda: tower.channel(record.channel_id)["claim_status"] == "broadcast", 30, "reorged out")
    assert tower.channel(record.channel_id)["claim_confirmed_height"] is None
    wait_in_mempool(node, claim_txid)
    (second,) = node.mine(1, address=node.wallet().address())  # another block at the same height
    assert second != first
    wait_until(lambda: tower.channel(record.channel_id)["claim_confirmed_height"] == at, 30, "again")
    node.mine(CLAIM_CONFIRMATIONS - 1)
    wait_until(lambda: tower.channel(record.channel_id)["status"] == "claimed", 30, "the claim to complete")


def test_the_users_refund_after_expiry_when_the_tower_never_claimed(
    bitcoind: BitcoindHandle, tower: PaidTower, teosd_factory: TeosdFactory
) -> None:
    """Two channels: one never paid (the tower has nothing to claim), one paid while the tower was down
    past its expiry. Both users take their money back with their refund; the tower sees it, marks the
    first unpaid and counts the second as lost."""
    node = bitcoind
    user = User(tower, Dialect.RUST)
    a, b = coins(node, 2)
    expiry = height(node) + 40
    unpaid = user.fund(node, a, 30_000, expiry)
    paid = user.fund(node, b, 30_000, expiry)
    node.mine(1)
    wait_processed(tower, node)
    unpaid = user.payments.open_channel(unpaid)
    paid = user.payments.pay(user.payments.open_channel(paid)).record
    tower.daemon.signal(signal.SIGTERM)
    tower.daemon.wait(30)

    destination = script.p2wpkh(crypto.public_key(crypto.generate_secret_key()).raw)
    refunds = [refund(r, destination) for r in (unpaid, paid)]
    mine_to(node, expiry - 1)
    for tx in refunds:  # final only in a block above expiry: Core and the simulator refuse it before
        with pytest.raises(RPCError) as info:
            node.rpc("sendrawtransaction", tx.raw.hex())
        assert "non-final" in info.value.message
    node.mine(1)
    for tx in refunds:
        assert node.rpc("sendrawtransaction", tx.raw.hex()) == tx.txid.hex()
    node.mine(1)
    for tx in refunds:
        assert node.rpc("gettxout", tx.txid.hex(), 0, True)["confirmations"] == 1

    tower = restart(node, tower, teosd_factory)
    node.mine(CLAIM_CONFIRMATIONS)
    wait_until(lambda: tower.channel(paid.channel_id)["status"] == "refunded", 30, "the claim to be lost")
    assert tower.channel(paid.channel_id)["claim_status"] == "lost"
    assert tower.channel(unpaid.channel_id)["status"] == "unpaid"
    assert metric(tower.admin_port, "teos_payments_sats_lost") == PRICE


def test_kill_9_right_after_a_payments_acknowledgement(
    bitcoind: BitcoindHandle, tower: PaidTower, teosd_factory: TeosdFactory
) -> None:
    node = bitcoind
    user = User(tower, Dialect.PYTHON)
    record = open_paid_channel(node, tower, user)
    for _ in range(3):
        record = user.payments.pay(record).record
    acknowledged = user.payments.pay(record, registrations=2)  # the answer is in hand: kill at once
    os.kill(tower.daemon.proc.pid if tower.daemon.proc else 0, signal.SIGKILL)
    tower.daemon.wait(30)

    tower = restart(node, tower, teosd_factory, how=signal.SIGKILL)
    user = User(tower, Dialect.PYTHON, user.client.secret_key)
    state = user.payments.get_channel(acknowledged.record)
    assert (state.nonce, state.amount, state.registrations) == (4, 5 * PRICE, 5)
    info = tower.user(user.user_id)
    assert (
        info is not None and info["available_slots"] == 5 * SLOTS == acknowledged.receipt["available_slots"]
    )
    pair = node.wallet().breach_pair()
    sent = user.client.add_appointment(pair.commitment.txid, pair.penalty.raw)  # the slots are usable
    user.client.check_appointment(sent, tower.tower_id)
    again = user.payments.pay(state)  # and the channel goes on from there
    assert again.record.nonce == 5 and again.receipt["available_slots"] == 6 * SLOTS - 1
