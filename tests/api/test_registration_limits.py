"""Issue 13, F8: registrations and top-ups are limited per client address (unless behind a proxy)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import ErrorKind, TeosError
from teos.api import create_app
from teos.api.ipc import TOKEN_BYTES, CoreClient, CoreServer, RemoteAdmission, RemoteCore
from teos.api.limits import AddressRateLimiter, registration_limiter
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
        limiter.admit_registration(address)
    assert e.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    return e.value.message


def test_a_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = AddressRateLimiter(per_hour=30, clock=clock)  # a burst of 10, then one every 120 s
    for _ in range(10):
        limiter.admit_registration("198.51.100.7")
    assert "retry in 120 s" in refused(limiter, "198.51.100.7")
    limiter.admit_registration("198.51.100.8")  # another address has its own bucket
    clock.now += 119
    refused(limiter, "198.51.100.7")
    clock.now += 2
    limiter.admit_registration("198.51.100.7")
    refused(limiter, "198.51.100.7")


def test_an_ipv6_slash_64_is_one_client() -> None:
    limiter = AddressRateLimiter(per_hour=2, burst=2, clock=Clock())
    limiter.admit_registration("2001:db8:0:1::1")
    limiter.admit_registration("2001:db8:0:1:ffff::2")
    refused(limiter, "2001:db8:0:1::3")
    limiter.admit_registration("2001:db8:0:2::1")


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = AddressRateLimiter(per_hour=1, burst=1, clock=clock, max_tracked=100)
    for i in range(1000):
        limiter.admit_registration(f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked == 100


@pytest.mark.parametrize(("argv", "limited"), [
    ([], True), (["--registrationsperhour", "0"], False), (["--behindproxy"], False),
])
def test_the_configuration_decides(tmp_path: Path, argv: list[str], limited: bool) -> None:
    config = load_config(["--datadir", str(tmp_path), *argv], {})
    assert (registration_limiter(config) is not None) is limited


@pytest.fixture(params=["local", "remote"])
def app(
    request: pytest.FixtureRequest, gatekeeper: Gatekeeper, chain: FakeChainView, store: Store
) -> Iterator[Any]:
    """The public app with a limit of 2 registrations per address, the limiter in this process or, as
    in teosd, in the main process behind the worker channel."""
    limiter = AddressRateLimiter(per_hour=2, burst=2)
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
