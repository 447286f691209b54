"""Issue 13, F8: registrations and top-ups are limited per client address (unless behind a proxy); the same
limiter bounds a paid tower's channel openings (issue 14)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.channel_wire import PaymentError, Refusal
from common.errors import ErrorKind, TeosError
from teos.api import create_app
from teos.api.ipc import TOKEN_BYTES, CoreClient, CoreServer, RemoteAdmission, RemoteCore
from teos.api.limits import (
    AddressLimits,
    AddressRateLimiter,
    address_limits,
    channel_opening_limiter,
    registration_limiter,
    too_many_channel_openings,
)
from teos.config import load_config
from teos.gatekeeper import Gatekeeper
from teos.service import TowerCore, TowerService
from teos.storage.store import Store
from tests.api.support import PYTHON_UA, RUST_UA
from tests.support.users import Client, FakeChainView


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: AddressRateLimiter, address: str) -> str:
    with pytest.raises(TeosError) as e:
        limiter.admit(address)
    assert e.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    return e.value.message


def test_a_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = AddressRateLimiter(per_hour=30, clock=clock)  # a burst of 10, then one every 120 s
    for _ in range(10):
        limiter.admit("198.51.100.7")
    assert "retry in 120 s" in refused(limiter, "198.51.100.7")
    limiter.admit("198.51.100.8")  # another address has its own bucket
    clock.now += 119
    refused(limiter, "198.51.100.7")
    clock.now += 2
    limiter.admit("198.51.100.7")
    refused(limiter, "198.51.100.7")


def test_an_ipv6_slash_64_is_one_client() -> None:
    limiter = AddressRateLimiter(per_hour=2, burst=2, clock=Clock())
    limiter.admit("2001:db8:0:1::1")
    limiter.admit("2001:db8:0:1:ffff::2")
    refused(limiter, "2001:db8:0:1::3")
    limiter.admit("2001:db8:0:2::1")


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = AddressRateLimiter(per_hour=1, burst=1, clock=clock, max_tracked=100)
    for i in range(1000):
        limiter.admit(f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked == 100


def test_channel_openings_are_refused_as_a_payment_refusal() -> None:
    clock = Clock()
    limits = AddressLimits(channel_openings=AddressRateLimiter(
        600, burst=2, clock=clock, refusal=too_many_channel_openings))  # fmt: skip
    for _ in range(2):
        limits.admit_channel_opening("198.51.100.7")
    with pytest.raises(PaymentError) as e:
        limits.admit_channel_opening("198.51.100.7")
    assert e.value.reason is Refusal.RATE_LIMITED and "retry in 6 s" in e.value.message
    for _ in range(50):
        limits.admit_registration("198.51.100.7")  # no registration limiter: not limited
    clock.now += 6
    limits.admit_channel_opening("198.51.100.7")


@pytest.mark.parametrize(("argv", "limited"), [
    ([], True), (["--registrationsperhour", "0"], False), (["--behindproxy"], False),
])
def test_the_configuration_decides(tmp_path: Path, argv: list[str], limited: bool) -> None:
    config = load_config(["--datadir", str(tmp_path), *argv], {})
    assert (registration_limiter(config) is not None) is limited
    assert channel_opening_limiter(config) is None  # a free tower opens no channels


@pytest.mark.parametrize(("argv", "limited"), [([], True), (["--behindproxy"], False)])
def test_a_paid_tower_limits_channel_openings_unless_behind_a_proxy(
    tmp_path: Path, argv: list[str], limited: bool
) -> None:
    config = load_config(["--datadir", str(tmp_path), "--paymentprice", "1000", *argv], {})
    assert (channel_opening_limiter(config) is not None) is limited
    assert (address_limits(config) is not None) is limited


@pytest.fixture(params=["local", "remote"])
def app(
    request: pytest.FixtureRequest, gatekeeper: Gatekeeper, chain: FakeChainView, store: Store
) -> Iterator[Any]:
    """The public app with a limit of 2 registrations per address, the limiter in this process or, as
    in teosd, in the main process behind the worker channel."""
    limiter = AddressLimits(registrations=AddressRateLimiter(per_hour=2, burst=2))
    core = TowerCore(gatekeeper, chain, chain, store)
    if request.param == "local":
        yield create_app(TowerService(core, os.urandom(32), min_to_self_delay=20), admission=limiter)
        return
    server = CoreServer(core, os.urandom(TOKEN_BYTES), admission=limiter)
    server.start()
    client = CoreClient(server.address, server.token, timeout=10)
    service = TowerService(RemoteCore(client), os.urandom(32), min_to_self_delay=20)
    try:
        yield create_app(service, admission=RemoteAdmission(client))
    finally:
        server.stop()


def register(app: Any, address: str, client: Client, rust: bool = False) -> tuple[int, Any]:
    body = {"user_id" if rust else "public_key": client.user_id.hex()}
    response = app.test_client().post("/register", json=body, headers=RUST_UA if rust else PYTHON_UA,
                                      environ_base={"REMOTE_ADDR": address})
    return response.status_code, response.get_json()


def test_registrations_and_top_ups_from_one_address_are_limited(app: Any) -> None:
    alice = Client.new()
    assert register(app, "203.0.113.5", alice)[0] == 200
    assert register(app, "203.0.113.5", alice)[0] == 200  # a top-up counts too
    status, body = register(app, "203.0.113.5", Client.new())
    assert (status, body["error_code"]) == (503, -35)
    status, body = register(app, "203.0.113.5", Client.new(), rust=True)
    assert (status, body["error_code"]) == (503, 65)  # REGISTRATION_RESOURCE_EXHAUSTED
    assert register(app, "203.0.113.6", Client.new())[0] == 200


def test_a_malformed_registration_costs_no_token(app: Any) -> None:
    for _ in range(5):
        response = app.test_client().post("/register", json={"public_key": "zz"}, headers=PYTHON_UA,
                                          environ_base={"REMOTE_ADDR": "203.0.113.9"})
        assert response.status_code == 400
    assert register(app, "203.0.113.9", Client.new())[0] == 200
