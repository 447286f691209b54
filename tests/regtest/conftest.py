"""In-process simulator fixtures and a raw HTTP helper for the simulator's own tests."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from teos.regtest.simulator import Simulator
from tests.support.bitcoind import rpc_call

USER, PASSWORD = "alice", "secret"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    port: int,
    body: bytes | str = b"",
    auth: tuple[str, str] | None = (USER, PASSWORD),
    method: str = "POST",
    path: str = "/",
    headers: dict[str, str] | None = None,
) -> Reply:
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class Client:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def __call__(self, method: str, *params: Any) -> Any:
        return rpc_call("127.0.0.1", self.sim.rpc_port, USER, PASSWORD, method, list(params), timeout=10)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    simulator = Simulator(tmp_path / "sim", rpcuser=USER, rpcpassword=PASSWORD)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.stop()


@pytest.fixture
def rpc(sim: Simulator) -> Client:
    return Client(sim)
