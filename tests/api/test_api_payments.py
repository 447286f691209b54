"""The payment endpoints in the public app (Flask's test client over a real store and Gatekeeper, the state
in-process or behind the real worker channel): a free tower has none of them; a paid one answers 402 to
/register in each dialect's shape, bounds bodies and /open_channel per address (with the limiter of
``teos.api.limits``, kept in the main process as in teosd), and carries the reason of a refusal made in the
main process across the worker channel."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask.testing import FlaskClient

from common import crypto
from common.channel_wire import (
    ChannelView,
    PaymentTerms,
    make_get_channel_request,
    make_open_request,
    make_pay_request,
)
from common.messages import register_body
from common.types import Dialect, UserId
from teos.api import create_app
from teos.api.ipc import TOKEN_BYTES, CoreClient, CoreServer, RemoteAdmission
from teos.api.limits import AddressLimits, AddressRateLimiter, too_many_channel_openings
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.ledger import GatekeeperLedger
from teos.payments.service import LocalPayments, PaymentCore, PaymentGateway, PaymentOps, RemotePayments
from teos.payments.store import ChannelStore
from teos.service import TowerCore, TowerService
from teos.storage.atomic import LevelDBAtomicStore
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.api.support import PYTHON_UA, RUST_UA
from tests.payments.support import TOWER_KEY, USER_SECRET, FakeChain, make_params, secret, user_id
from tests.support.users import FakeChainView

PRICE = 2_000
CONFIG = PaymentConfig(price=PRICE, max_unpaid_channels=5)


@dataclass
class Refusals:
    seen: list[str] = field(default_factory=list)

    def payment_refused(self, reason: str) -> None:
        self.seen.append(reason)


@dataclass
class PaidApp:
    client: FlaskClient
    funding: FakeChain
    refusals: Refusals
    tower_id: UserId
    server: CoreServer | None


@pytest.fixture(params=["local", "remote"])
def paid(store: Store, index: LocatorIndex, request: pytest.FixtureRequest) -> Iterator[PaidApp]:
    tip = FakeChainView(tip_height=100)
    gatekeeper = Gatekeeper(store, GatekeeperConfig(subscription_slots=50), tip, index)
    gatekeeper.start()
    funding = FakeChain(tip=100)
    handler = PaymentHandler(
        CONFIG, ChannelStore(LevelDBAtomicStore(store)), funding, GatekeeperLedger(gatekeeper),
        FixedPrice(PRICE), TOWER_KEY, 50, 4320,
    )  # fmt: skip
    secret_key = secret("api tower id")
    core = TowerCore(gatekeeper, tip, tip, store, paid=True)
    opening = AddressRateLimiter(600, burst=2, refusal=too_many_channel_openings)
    limits = AddressLimits(channel_openings=opening)
    admission: Any = limits
    server = None
    if request.param == "remote":
        server = CoreServer(
            core, os.urandom(TOKEN_BYTES), admission=limits,
            extra_ops=PaymentOps(PaymentCore(handler)).handlers(),
        )  # fmt: skip
        server.start()
        client = CoreClient(server.address, server.token)
        backend: Any = RemotePayments(client.call)
        admission = RemoteAdmission(client)
    else:
        backend = LocalPayments(PaymentCore(handler))
    terms = CONFIG.terms(TOWER_KEY, 50, 4320, "regtest")
    gateway = PaymentGateway(handler.rules, backend, terms, secret_key)
    service = TowerService(core, secret_key, min_to_self_delay=20)
    refusals = Refusals()
    app = create_app(service, admission=admission, payments=gateway, refusals=refusals)
    try:
        yield PaidApp(app.test_client(), funding, refusals, crypto.public_key(secret_key), server)
    finally:
        if server is not None:
            server.stop()


def post(client: FlaskClient, path: str, body: Any, headers: dict[str, str], **kw: Any) -> tuple[int, Any]:
    response = client.post(path, json=body, headers=headers, **kw)
    return response.status_code, response.get_json()


def test_a_free_tower_has_no_payment_endpoints(store: Store, index: LocatorIndex) -> None:
    tip = FakeChainView(tip_height=100)
    gatekeeper = Gatekeeper(store, GatekeeperConfig(), tip, index)
    gatekeeper.start()
    client = create_app(
        TowerService.local(gatekeeper, tip, store, crypto.generate_secret_key())
    ).test_client()
    assert client.get("/payment_terms").status_code == 404
    for path in ("/open_channel", "/pay", "/get_channel"):
        assert client.post(path, json={}).status_code == 404
    assert client.post("/register", json=register_body(user_id(1), Dialect.RUST)).status_code == 200


@pytest.mark.parametrize(
    "dialect,headers,code", [(Dialect.PYTHON, PYTHON_UA, -100), (Dialect.RUST, RUST_UA, 80)]
)
def test_an_unpaid_register_gets_402_and_the_signed_terms(
    paid: PaidApp, dialect: Dialect, headers: dict[str, str], code: int
) -> None:
    status, body = post(paid.client, "/register", register_body(user_id(2), dialect), headers)
    assert status == 402 and body["error_code"] == code
    terms = PaymentTerms.from_json(body["terms"])
    assert terms.price == PRICE and terms.tower_key == TOWER_KEY
    assert crypto.verify(terms.message(), body["signature"], paid.tower_id)
    assert paid.refusals.seen == ["payment_required"]
    # A malformed registration is refused as always, before any talk of payment.
    status, body = post(paid.client, "/register", {}, headers)
    assert status == 400 and body["error_code"] == (-33 if dialect is Dialect.PYTHON else 1)


def test_the_terms_and_a_channel_through_the_app(paid: PaidApp) -> None:
    terms = paid.client.get("/payment_terms").get_json()
    assert terms["tip_height"] == 100 and terms["terms"]["price"] == PRICE
    params = make_params(value=100_000, expiry=600)
    paid.funding.fund(params)
    status, body = post(
        paid.client, "/open_channel", make_open_request(params, USER_SECRET).to_json(), RUST_UA
    )
    assert status == 200 and ChannelView.from_json(body["channel"]).status == "open"
    request = make_pay_request(params, 1, PRICE, user_id(3), Dialect.PYTHON, USER_SECRET)
    status, body = post(paid.client, "/pay", request.to_json(), RUST_UA)
    assert status == 200 and body["public_key"] == user_id(3).hex() and body["available_slots"] == 50
    status, body = post(
        paid.client,
        "/get_channel",
        make_get_channel_request(params.channel_id, USER_SECRET).to_json(),
        PYTHON_UA,
    )
    assert status == 200 and body["channel"]["nonce"] == 1


def test_a_refusal_made_in_the_main_process_keeps_its_reason(paid: PaidApp) -> None:
    params = make_params(value=100_000, expiry=600)
    paid.funding.fund(params)
    post(paid.client, "/open_channel", make_open_request(params, USER_SECRET).to_json(), RUST_UA)
    del paid.funding.outputs[(params.channel_id.txid, params.channel_id.vout)]  # spent since
    request = make_pay_request(params, 1, PRICE, user_id(4), Dialect.RUST, USER_SECRET)
    status, body = post(paid.client, "/pay", request.to_json(), PYTHON_UA)
    assert status == 400 and body["reason"] == "funding_spent" and body["error_code"] == 84  # rust user field
    paid.funding.fund(params)
    paid.funding.down = True
    status, body = post(paid.client, "/pay", request.to_json(), PYTHON_UA)
    assert status == 503 and body["error_code"] == 32  # bitcoind down: nothing charged
    assert "funding_spent" in paid.refusals.seen


def test_bodies_are_bounded_and_malformed_ones_get_field_codes(paid: PaidApp) -> None:
    big = {"channel_id": "00" * 3000}
    assert paid.client.post("/pay", json=big, headers=RUST_UA).status_code == 413
    assert paid.client.post("/open_channel", json=big, headers=RUST_UA).status_code == 413
    assert paid.client.post("/get_channel", json=big, headers=RUST_UA).status_code == 413
    status, body = post(paid.client, "/pay", {"public_key": user_id(1).hex()}, PYTHON_UA)
    assert status == 400 and body["error_code"] == -1  # python: a missing field
    status, body = post(paid.client, "/pay", {"user_id": user_id(1).hex()}, PYTHON_UA)
    assert status == 400 and body["error_code"] == 1  # the user field says rust, whatever the User-Agent
    response = paid.client.post("/get_channel", data=b"{not json", headers=RUST_UA)
    assert response.status_code == 400 and response.get_json()["error_code"] == 6


def test_open_channel_is_limited_per_address(paid: PaidApp) -> None:
    params = make_params(value=100_000, expiry=600, vout=7)
    body = make_open_request(params, USER_SECRET).to_json()  # never funded: each costs a gettxout
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    statuses = [post(paid.client, "/open_channel", body, RUST_UA, environ_base=remote)[0] for _ in range(3)]
    assert statuses == [400, 400, 503]
    calls = paid.funding.calls
    status, answer = post(paid.client, "/open_channel", body, RUST_UA, environ_base=remote)
    assert (status, answer["reason"]) == (503, "rate_limited") and paid.funding.calls == calls
    assert "rate_limited" in paid.refusals.seen
    other = {"REMOTE_ADDR": "203.0.113.10"}  # another address has its own bucket
    assert post(paid.client, "/open_channel", body, RUST_UA, environ_base=other)[0] == 400
