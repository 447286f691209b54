"""The operator's payment controls over the admin API (listchannels, claim, claimall) and the payment
metrics, over a channel store with real channels and a claim runner whose broadcasts are recorded."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient

from common.channel_wire import make_open_request, make_pay_request
from common.types import Dialect, Txid
from teos.admin import COOKIE_USER, Metrics, StoreAdminBackend, create_admin_app
from teos.payments.claims import Claimer
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.operator import PaymentsOperator
from teos.payments.report import payments_report
from teos.payments.runner import ClaimRunner
from teos.payments.store import ChannelStore
from teos.payments.tower_key import TowerPaymentKey
from teos.storage.atomic import MemoryAtomicStore
from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, NoCounts, new_user_id
from tests.payments.support import USER_SECRET, FakeChain, FakeLedger, make_params, secret, user_id

COOKIE = "cd" * 32
PRICE = 3_000
CONFIG = PaymentConfig(price=PRICE, claim_margin=10, min_blocks_before_expiry=20, bump_margin=5)
TOWER = TowerPaymentKey.from_tower_secret(secret("admin tower"))


def auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{COOKIE_USER}:{COOKIE}".encode()).decode()}


@dataclass
class _Delivered:
    delivered: bool = True


@dataclass
class _Sent:
    status: _Delivered
    message: str = ""


class Carrier:
    def __init__(self) -> None:
        self.sent: list[Txid] = []

    def send(self, raw_tx: bytes, txid: Txid) -> _Sent:
        self.sent.append(txid)
        return _Sent(_Delivered())


class NoBlocks:
    def block_hash(self, height: int) -> Any:
        raise AssertionError("not read")

    def block_txids(self, block_hash: Any) -> Any:
        raise AssertionError("not read")

    def raw_block(self, block_hash: Any) -> bytes:
        raise AssertionError("not read")


@dataclass
class World:
    client: FlaskClient
    store: ChannelStore
    carrier: Carrier
    metrics: Metrics
    engine_calls: list[str]


def build(
    store: Store, engine_status: FakeEngineStatus, on_engine: Callable[..., Any] | None = None
) -> World:
    channels = ChannelStore(MemoryAtomicStore())
    chain = FakeChain(tip=100)
    handler = PaymentHandler(
        CONFIG, channels, chain, FakeLedger(), FixedPrice(PRICE), TOWER.public_key, 10, 10
    )
    for vout, payments in ((0, 2), (1, 1), (2, 0)):
        params = make_params(value=100_000, expiry=400, vout=vout, tower_key=TOWER.public_key)
        chain.fund(params)
        handler.open_channel(make_open_request(params, USER_SECRET))
        for n in range(1, payments + 1):
            handler.pay(make_pay_request(params, n, n * PRICE, user_id(vout), Dialect.RUST, USER_SECRET))
    carrier = Carrier()
    runner = ClaimRunner(Claimer(CONFIG, channels, TOWER), carrier, NoBlocks())
    calls: list[str] = []

    def direct(fn: Callable[[], Any]) -> Any:
        calls.append("engine")
        return fn()

    operator = PaymentsOperator(channels, CONFIG, lambda: 100, runner, on_engine or direct)
    backend = StoreAdminBackend(
        store, engine_status, new_user_id(), lambda: None, NoCounts(), payments=operator
    )
    metrics = Metrics()
    metrics.bind_payments(lambda: payments_report(channels, 100, CONFIG))
    return World(create_admin_app(backend, COOKIE, metrics).test_client(), channels, carrier, metrics, calls)


def test_a_free_tower_has_no_channels(store: Store, engine_status: FakeEngineStatus) -> None:
    backend = StoreAdminBackend(store, engine_status, new_user_id(), lambda: None, NoCounts())
    client = create_admin_app(backend, COOKIE)
    response = client.test_client().get("/listchannels", headers=auth())
    assert response.status_code == 404 and "free" in response.get_json()["error"]
    assert client.test_client().post("/claimall", headers=auth()).status_code == 404


def test_listchannels_claim_and_claimall(store: Store, engine_status: FakeEngineStatus) -> None:
    w = build(store, engine_status)
    listing = w.client.get("/listchannels", headers=auth()).get_json()
    by_vout = {line["channel_id"].rsplit(":", 1)[1]: line for line in listing["channels"]}
    assert {v: (line["paid"], line["status"]) for v, line in by_vout.items()} == {
        "0": (2 * PRICE, "open"), "1": (PRICE, "open"), "2": (0, "open"),
    }  # fmt: skip
    assert by_vout["0"]["blocks_to_expiry"] == 300 and by_vout["0"]["unclaimed"] == 2 * PRICE
    assert listing["totals"]["earned"] == 3 * PRICE and listing["totals"]["channels"]["open"] == 3

    first = by_vout["0"]["channel_id"]
    claimed = w.client.post(f"/claim/{first}", headers=auth()).get_json()
    assert claimed["claimed"] and claimed["amount"] == 2 * PRICE and claimed["claim_status"] == "broadcast"
    assert [t.hex() for t in w.carrier.sent] == [claimed["claim_txid"]] and w.engine_calls == ["engine"]
    unpaid = by_vout["2"]["channel_id"]
    refused = w.client.post(f"/claim/{unpaid}", headers=auth()).get_json()
    assert not refused["claimed"] and "no payment" in refused["error"]
    assert w.client.post("/claim/not-a-channel", headers=auth()).status_code == 400

    everything = w.client.post("/claimall", headers=auth()).get_json()
    assert [c["channel_id"] for c in everything["claims"]] == [by_vout["1"]["channel_id"]]
    statuses = {
        line["status"] for line in w.client.get("/listchannels", headers=auth()).get_json()["channels"]
    }
    assert statuses == {"closing", "open"}


def test_a_claim_the_engine_does_not_get_to_is_a_503(store: Store, engine_status: FakeEngineStatus) -> None:
    def busy(fn: Callable[[], Any]) -> Any:
        raise TimeoutError("the engine did not get to the request in time")

    w = build(store, engine_status, busy)
    response = w.client.post("/claimall", headers=auth())
    assert response.status_code == 503 and "try again" in response.get_json()["error"]


def test_the_payment_metrics(store: Store, engine_status: FakeEngineStatus) -> None:
    w = build(store, engine_status)
    w.metrics.payment_refused("stale_nonce")
    w.metrics.observe_refusals([("stale_nonce", 2), ("payment_required", 1), ("made up", 4)])
    w.metrics.claim_broadcast(True)
    w.metrics.claim_bumped()
    w.metrics.claim_failure("read_block")
    value = w.metrics.value
    assert value("teos_payments_sats_earned") == 3 * PRICE
    assert value("teos_payments_sats_claimed") == 0 and value("teos_payments_sats_lost") == 0
    assert value("teos_payments_channels", {"status": "open"}) == 3
    assert value("teos_payments_claims", {"status": "pending"}) == 0
    assert value("teos_payments_refusals_total", {"reason": "stale_nonce"}) == 3
    assert value("teos_payments_refusals_total", {"reason": "other"}) == 4  # labels stay bounded
    assert value("teos_payments_claim_broadcasts_total", {"delivered": "true"}) == 1
    assert value("teos_payments_claim_bumps_total") == 1
    assert value("teos_payments_claim_failures_total", {"step": "read_block"}) == 1
    text = w.client.get("/metrics").get_data(as_text=True)
    assert "teos_payments_sats_at_risk 0.0" in text
