"""teosd's API worker processes, seen from outside: how many, what they report, and that they never
outlive the tower or share its port with another."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from common.client import TowerClient
from common.types import Dialect
from teos.devtools import free_port, wait_until
from tests.daemon.conftest import TeosdFactory, metric
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd

pytestmark = pytest.mark.e2e


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def teosd_pid(daemon: Teosd) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def test_workers_are_spawned_as_configured(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> None:
    daemon = teosd_factory(bitcoind, extra=["--apiworkers", "3"])
    pid = teosd_pid(daemon)
    wait_until(lambda: len(children(pid)) >= 3, 30, "three API workers")
    assert "workers=3" in daemon.log_path.read_text()


def test_workers_die_with_a_killed_teosd(bitcoind: BitcoindHandle, teosd: Teosd) -> None:
    pid = teosd_pid(teosd)
    workers = children(pid)
    assert workers
    teosd.signal(signal.SIGKILL)
    teosd.wait(10)
    wait_until(lambda: not any(alive(w) for w in workers), 10, "the API workers to die with teosd")
    wait_until(lambda: port_free(teosd.api_port), 10, "the API port to be free again")


def test_an_api_port_in_use_stops_teosd(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # granian's own listeners do this
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        daemon = teosd_factory(bitcoind, api_port=port, wait=False)
        assert daemon.wait(30) == 1
    log = daemon.log_path.read_text()
    assert f"cannot listen on 127.0.0.1:{port}" in log and "--apiport" in log


def test_requests_served_by_workers_show_in_metrics(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    admin_port = free_port()
    daemon = teosd_factory(bitcoind, extra=["--rpcport", str(admin_port)])
    user = TowerClient("127.0.0.1", daemon.api_port, Dialect.RUST)
    for _ in range(3):
        user.register()
    user.close()

    registered = 'teos_http_requests_total{app="public",endpoint="/register",method="POST",status="200"}'

    def counted() -> bool:
        try:
            return metric(admin_port, registered) == 3
        except AssertionError:  # not exposed until the first forward
            return False

    wait_until(counted, 15, "the workers' request counts to reach /metrics")


def test_a_killed_worker_is_replaced_and_nothing_is_lost(bitcoind: BitcoindHandle, teosd: Teosd) -> None:
    pid = teosd_pid(teosd)
    wait_until(lambda: len(children(pid)) >= 2, 30, "the API workers")
    user = TowerClient("127.0.0.1", teosd.api_port, Dialect.RUST)
    user.register()
    victim = min(children(pid))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in children(pid) and len(children(pid)) >= 2, 30, "a new worker")
    user.close()
    info = user.get_subscription_info()  # the registration made before the crash is still there
    assert info["available_slots"] > 0
    assert teosd.running
