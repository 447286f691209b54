"""The payment use cases across the worker split: the gateway's checks and signatures, the core's state
changes, the wire between them (over the same ops the worker channel carries), the cap on unpaid
channels, the bounded gettxout and the per-address limiter."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from common import crypto, receipts
from common.channel_wire import (
    ChannelView,
    PaymentError,
    PaymentTerms,
    Refusal,
    make_get_channel_request,
    make_open_request,
    make_pay_request,
)
from common.errors import ErrorKind, TeosError
from common.types import Dialect, Txid, UserId
from teos.payments.chain import BoundedFundingChain, ChainUnavailable, TxOutInfo
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.service import (
    LocalPayments,
    PaymentCore,
    PaymentGateway,
    PaymentOps,
    RemotePayments,
)
from teos.payments.store import ChannelStore
from teos.storage.atomic import MemoryAtomicStore
from tests.payments.support import (
    TOWER_KEY,
    USER_SECRET,
    FakeChain,
    FakeLedger,
    make_params,
    secret,
    user_id,
)
from tests.support.wait import wait_until

PRICE = 5_000
CONFIG = PaymentConfig(price=PRICE, max_unpaid_channels=2)
TOWER_SECRET = secret("service tower id")
TOWER_ID = crypto.public_key(TOWER_SECRET)
TERMS = CONFIG.terms(TOWER_KEY, 10, 20, "regtest")


def build(remote: bool) -> tuple[PaymentGateway, FakeChain, FakeLedger, PaymentCore]:
    chain = FakeChain(tip=100)
    ledger = FakeLedger(tip=100)
    handler = PaymentHandler(
        CONFIG, ChannelStore(MemoryAtomicStore()), chain, ledger, FixedPrice(PRICE), TOWER_KEY, 10, 20
    )
    core = PaymentCore(handler)
    backend: Any
    if remote:
        ops = PaymentOps(core).handlers()
        backend = RemotePayments(lambda op, *args: ops[op](*args))
    else:
        backend = LocalPayments(core)
    return PaymentGateway(handler.rules, backend, TERMS, TOWER_SECRET), chain, ledger, core


@pytest.mark.parametrize("remote", [False, True])
def test_open_pay_and_read_a_channel_with_signed_answers(remote: bool) -> None:
    gateway, chain, ledger, _ = build(remote)
    params = make_params(value=200_000, expiry=600)
    chain.fund(params)
    opened = gateway.open_channel(make_open_request(params, USER_SECRET))
    view = ChannelView.from_json(opened["channel"])
    assert view.status == "open" and view.amount == 0
    assert crypto.verify(view.ack_message(), opened["channel_signature"], TOWER_ID)

    uid = user_id(7)
    paid = gateway.pay(make_pay_request(params, 1, 2 * PRICE, uid, Dialect.PYTHON, USER_SECRET))
    assert paid["registrations"] == 2 and paid["public_key"] == uid.hex()
    receipt = receipts.registration_receipt(Dialect.PYTHON, uid, 20, 0, paid["subscription_expiry"])
    assert paid["available_slots"] == 20
    assert crypto.verify(receipt, paid["subscription_signature"], TOWER_ID)
    after = ChannelView.from_json(paid["channel"])
    assert (after.nonce, after.amount) == (1, 2 * PRICE)
    assert crypto.verify(after.ack_message(), paid["channel_signature"], TOWER_ID)

    again = gateway.pay(make_pay_request(params, 1, 2 * PRICE, uid, Dialect.PYTHON, USER_SECRET))
    assert again["available_slots"] == 20  # a repeat grants nothing more
    assert ledger.applied[(params.channel_id, 1)] == 1

    read = gateway.get_channel(make_get_channel_request(params.channel_id, USER_SECRET))
    assert ChannelView.from_json(read["channel"]) == after
    assert crypto.verify(after.ack_message(), read["channel_signature"], TOWER_ID)


@pytest.mark.parametrize("remote", [False, True])
def test_forged_requests_are_refused_in_the_gateway_and_change_nothing(remote: bool) -> None:
    gateway, chain, ledger, core = build(remote)
    params = make_params(value=200_000, expiry=600)
    chain.fund(params)
    with pytest.raises(PaymentError) as info:
        gateway.open_channel(make_open_request(params, secret("mallory")))
    assert info.value.reason is Refusal.BAD_REQUEST_SIGNATURE and chain.calls == 0
    gateway.open_channel(make_open_request(params, USER_SECRET))
    calls = chain.calls
    with pytest.raises(PaymentError) as info:
        gateway.pay(make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, secret("mallory")))
    assert info.value.reason is Refusal.BAD_REQUEST_SIGNATURE
    with pytest.raises(PaymentError) as info:
        gateway.get_channel(make_get_channel_request(params.channel_id, secret("mallory")))
    assert info.value.reason is Refusal.BAD_REQUEST_SIGNATURE
    assert chain.calls == calls and ledger.applied == {}
    snap = core.store.get(params.channel_id)
    assert snap is not None and snap.state.nonce == 0
    unknown = make_params(value=200_000, expiry=600, vout=9)
    with pytest.raises(PaymentError) as info:
        gateway.get_channel(make_get_channel_request(unknown.channel_id, USER_SECRET))
    assert info.value.reason is Refusal.CHANNEL_NOT_FOUND


def test_the_unpaid_channels_are_capped() -> None:
    gateway, chain, _, _ = build(remote=True)
    channels = [make_params(value=200_000, expiry=600, vout=v) for v in range(3)]
    for params in channels:
        chain.fund(params)
    for params in channels[:2]:
        gateway.open_channel(make_open_request(params, USER_SECRET))
    with pytest.raises(PaymentError) as info:
        gateway.open_channel(make_open_request(channels[2], USER_SECRET))
    assert info.value.reason is Refusal.TOWER_FULL and info.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    gateway.open_channel(make_open_request(channels[0], USER_SECRET))  # an existing one still answers
    gateway.pay(make_pay_request(channels[0], 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    gateway.open_channel(make_open_request(channels[2], USER_SECRET))  # one paid: room again


def test_terms_and_the_402_body_are_signed_by_the_tower() -> None:
    gateway, *_ = build(remote=False)
    body = gateway.terms_body()
    assert PaymentTerms.from_json(body["terms"]) == TERMS
    assert crypto.verify(TERMS.message(), body["signature"], TOWER_ID)
    for dialect, code in ((Dialect.PYTHON, -100), (Dialect.RUST, 80)):
        required = gateway.payment_required_body(dialect)
        assert required["error_code"] == code and required["terms"] == body["terms"]
        assert UserId.from_hex(required["tower_id"]) == TOWER_ID


# -- bounds ---------------------------------------------------------------------------------------------


class SlowChain:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.inside = 0

    def get_tx_out(self, txid: Txid, vout: int) -> TxOutInfo | None:
        self.inside += 1
        self.release.wait(10)
        return None

    def tip_height(self) -> int:
        return 5


def test_at_most_max_calls_gettxout_run_at_once() -> None:
    slow = SlowChain()
    bounded = BoundedFundingChain(slow, max_calls=2, wait=0.05)
    txid = Txid(bytes(32))
    threads = [threading.Thread(target=bounded.get_tx_out, args=(txid, i)) for i in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: slow.inside == 2, timeout=10)
    with pytest.raises(ChainUnavailable):
        bounded.get_tx_out(txid, 3)
    assert bounded.tip_height() == 5  # the tip never waits
    slow.release.set()
    for t in threads:
        t.join(10)
    assert bounded.get_tx_out(txid, 4) is None


class Stopped:
    def __init__(self) -> None:
        self.reason: str | None = None

    def stopped_watching(self) -> str | None:
        return self.reason


def test_a_tower_that_stopped_watching_opens_nothing_and_signs_no_payment() -> None:
    gateway, chain, ledger, core = build(remote=False)
    watching = Stopped()
    core.watching = watching
    params = make_params(value=200_000, expiry=600)
    chain.fund(params)
    gateway.open_channel(make_open_request(params, USER_SECRET))
    watching.reason = "the engine thread died"
    with pytest.raises(TeosError) as info:
        gateway.pay(make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE and ledger.applied == {}
    other = make_params(value=200_000, expiry=600, vout=5)
    chain.fund(other)
    with pytest.raises(TeosError) as info:
        gateway.open_channel(make_open_request(other, USER_SECRET))
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE
    watching.reason = None
    assert (
        gateway.pay(make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET))[
            "registrations"
        ]
        == 1
    )
