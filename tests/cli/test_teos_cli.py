"""teos-cli as a subprocess against a real admin server on 127.0.0.1 (and against nothing at all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.types import Locator
from teos.admin import AdminServer, StoreAdminBackend
from teos.devtools import free_port, wait_until
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, Filler, new_user_id

TOWER_ID = new_user_id()
NETWORK = "regtest"


class Tower:
    def __init__(self, datadir: Path, server: AdminServer, filler: Filler, status: FakeEngineStatus) -> None:
        self.datadir = datadir
        self.server = server
        self.filler = filler
        self.status = status
        self.stops = 0

    def cli(
        self, *args: str, network: str = NETWORK, port: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "teos.cli.teos_cli", "--datadir", str(self.datadir),
               "--btcnetwork", network, "--rpcport", str(port or self.server.port), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def tower(tmp_path: Path) -> Iterator[Tower]:
    store = Store(tmp_path / NETWORK / "db")
    store.open()
    index = LocatorIndex(store)
    index.start()
    status = FakeEngineStatus()
    holder: list[Tower] = []

    def stop() -> None:
        holder[0].stops += 1

    backend = StoreAdminBackend(store, status, TOWER_ID, stop, index)
    server = AdminServer(backend, tmp_path / NETWORK, host="127.0.0.1", port=0)
    server.start()
    t = Tower(tmp_path, server, Filler(store, index), status)
    holder.append(t)
    try:
        yield t
    finally:
        server.stop()
        index.stop()
        store.close()


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_gettowerinfo(tower: Tower) -> None:
    uid = tower.filler.user()
    tower.filler.appointments(uid, 2)
    info = ok_json(tower.cli("gettowerinfo"))
    assert info["tower_id"] == TOWER_ID.hex()
    counts = (info["n_registered_users"], info["n_watcher_appointments"], info["n_responder_trackers"])
    assert counts == (1, 2, 0)
    assert info["bitcoind_reachable"] is True and info["ready"] is True


def test_getallappointments_follows_pages(tower: Tower) -> None:
    uid = tower.filler.user()
    records = tower.filler.appointments(uid, 2100)  # more than two pages of 1000
    trackers = [tower.filler.tracker(uid) for _ in range(3)]
    out = ok_json(tower.cli("getallappointments"))
    assert sorted(a["uuid"] for a in out["watcher_appointments"]) == sorted(r.uuid.hex() for r in records)
    assert sorted(t["uuid"] for t in out["responder_trackers"]) == sorted(t.uuid.hex() for t in trackers)


def test_empty_listings_are_valid_json(tower: Tower) -> None:
    assert ok_json(tower.cli("getallappointments")) == {"watcher_appointments": [], "responder_trackers": []}
    assert ok_json(tower.cli("getusers")) == {"users": []}


def test_getappointments_getusers_getuser(tower: Tower) -> None:
    users = [tower.filler.user() for _ in range(3)]
    locator = Locator(os.urandom(16))
    tower.filler.appointments(users[0], 1, locator)
    body = ok_json(tower.cli("getappointments", locator.hex()))
    assert [a["user_id"] for a in body["watcher_appointments"]] == [users[0].hex()]
    listed = ok_json(tower.cli("getusers"))["users"]
    assert sorted(u["user_id"] for u in listed) == sorted(u.hex() for u in users)
    user = ok_json(tower.cli("getuser", users[0].hex()))
    assert user["user_id"] == users[0].hex() and len(user["appointments"]) == 1


def test_errors_from_the_daemon_exit_1_with_json(tower: Tower) -> None:
    result = tower.cli("getuser", new_user_id().hex())
    assert result.returncode == 1 and result.stdout == ""
    error = json.loads(result.stderr)
    assert error["http_status"] == 404 and "not found" in error["error"]
    result = tower.cli("getappointments", "nothex")
    assert result.returncode == 1 and json.loads(result.stderr)["http_status"] == 400


def test_stop(tower: Tower) -> None:
    assert ok_json(tower.cli("stop")) == {"stopping": True}
    wait_until(lambda: tower.stops == 1)


def test_wrong_cookie_exits_non_zero(tower: Tower) -> None:
    (tower.datadir / NETWORK / ".cookie").write_text("__cookie__:" + "00" * 32)
    result = tower.cli("gettowerinfo")
    assert result.returncode == 1
    assert json.loads(result.stderr)["http_status"] == 401


def test_daemon_down_exits_3_with_json(tower: Tower) -> None:
    result = tower.cli("gettowerinfo", port=free_port())  # a cookie, but nothing listening
    assert result.returncode == 3 and result.stdout == ""
    assert "not reachable" in json.loads(result.stderr)["error"]
    result = tower.cli("gettowerinfo", network="signet")  # no cookie: teosd not running on that network
    assert result.returncode == 3
    assert "cookie" in json.loads(result.stderr)["error"]


def test_unknown_network_and_command_are_usage_errors(tower: Tower) -> None:
    result = tower.cli("gettowerinfo", network="moon")
    assert result.returncode == 2 and "unknown network" in json.loads(result.stderr)["error"]
    assert tower.cli("frobnicate").returncode == 2


def test_conf_file_gives_port_and_network(tower: Tower) -> None:
    conf = f"[teos]\nbtc_network = {NETWORK}\nrpcport = {tower.server.port}\n"
    (tower.datadir / "teos.conf").write_text(conf)
    cmd = [sys.executable, "-m", "teos.cli.teos_cli", "--datadir", str(tower.datadir), "gettowerinfo"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok_json(result)["tower_id"] == TOWER_ID.hex()


def test_ipv6_literal_host_is_bracketed() -> None:
    from teos.cli.teos_cli import AdminClient

    assert AdminClient("::1", 8814, ("__cookie__", "x")).base == "http://[::1]:8814"
    assert AdminClient("127.0.0.1", 1, ("__cookie__", "x")).base == "http://127.0.0.1:1"


def test_teosd_environment_gives_datadir_network_and_port(tower: Tower) -> None:
    """In a container teosd is configured by TEOS_* variables; the HEALTHCHECK's plain
    ``teos-cli gettowerinfo`` must find the same datadir, network and port."""
    env = {**os.environ, "TEOS_DATADIR": str(tower.datadir), "TEOS_BTCNETWORK": NETWORK,
           "TEOS_RPCPORT": str(tower.server.port)}  # fmt: skip
    cmd = [sys.executable, "-m", "teos.cli.teos_cli", "gettowerinfo"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert ok_json(result)["tower_id"] == TOWER_ID.hex()
    # A flag still wins over the environment.
    env["TEOS_RPCPORT"] = "1"
    cmd = [*cmd[:-1], "--rpcport", str(tower.server.port), "gettowerinfo"]
    assert ok_json(subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env))["tower_id"]
