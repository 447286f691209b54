"""Fixtures for end-to-end tests: the real teosd as a subprocess against the ``bitcoind`` fixture."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from teos.devtools import free_port
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd, teosd_args

TeosdFactory = Callable[..., Teosd]


def metric(port: int, name: str) -> float:
    """The value of ``name`` (a metric, with its labels if given) on the admin port's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


@pytest.fixture
def teosd_factory(tmp_path: Path) -> Iterator[TeosdFactory]:
    """``factory(bitcoind, datadir=None, extra=(), wait=True, api_port=None, env=None)`` starts a
    regtest teosd against ``bitcoind`` on a free port (ZMQ on, polling every second); every daemon
    started is stopped at teardown."""
    started: list[Teosd] = []

    def factory(
        bitcoind: BitcoindHandle,
        datadir: Path | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
        api_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Teosd:
        datadir = datadir or tmp_path / "teos"
        port = api_port or free_port()
        args = teosd_args(
            datadir,
            port,
            bitcoind.rpc_host,
            bitcoind.rpc_port,
            bitcoind.rpc_user,
            bitcoind.rpc_password,
            bitcoind.zmq_url,
            ["--pollinterval", "1", *extra],
        )
        daemon = Teosd(datadir, args, port, env)
        started.append(daemon)
        daemon.start()
        if wait:
            daemon.wait_ready(timeout=30)
        return daemon

    try:
        yield factory
    finally:
        for daemon in started:
            daemon.stop()


@pytest.fixture
def teosd(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> Teosd:
    return teosd_factory(bitcoind)
