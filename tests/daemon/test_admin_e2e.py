"""teos-cli and the admin API against a real teosd (subprocess) and the ``bitcoind`` fixture.

Narrated like a functional test: a user registers and sends an appointment over the public API, the
operator looks at the tower with teos-cli, a breach moves the metrics, and ``teos-cli stop`` ends teosd.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.client import TowerClient
from common.types import Dialect
from teos.devtools import free_port, wait_until
from tests.daemon.conftest import TeosdFactory, metric
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd

pytestmark = pytest.mark.e2e


def teos_cli(datadir: Path, port: int, *args: str) -> tuple[int, Any]:
    """Runs teos-cli; returns its exit code and its JSON output (stdout, else stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "teos.cli.teos_cli", "--datadir", str(datadir), "--btcnetwork", "regtest",
         "--rpcport", str(port), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = done.stdout.strip() or done.stderr.strip()
    return done.returncode, json.loads(out)


@pytest.fixture
def admin_port() -> int:
    return free_port()


@pytest.fixture
def tower(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory, admin_port: int) -> Teosd:
    return teosd_factory(bitcoind, extra=["--rpcport", str(admin_port)])


def test_teos_cli_sees_what_users_did_and_stops_the_tower(
    bitcoind: BitcoindHandle, tower: Teosd, admin_port: int
) -> None:
    datadir = tower.datadir
    code, info = teos_cli(datadir, admin_port, "gettowerinfo")
    assert code == 0
    assert info["tower_id"] == tower.tower_id().hex()
    assert info["n_registered_users"] == 0 and info["bitcoind_reachable"] is True

    # A user registers and sends an appointment for a real commitment transaction.
    user = TowerClient("127.0.0.1", tower.api_port, Dialect.RUST)
    user.register()
    pair = bitcoind.wallet().breach_pair()
    sent = user.add_appointment(pair.commitment.txid, pair.penalty.raw)

    # Funding the wallet mined blocks: the tower catches up with them.
    height = bitcoind.rpc("getblockcount")

    def caught_up() -> dict[str, Any] | None:
        code, info = teos_cli(datadir, admin_port, "gettowerinfo")
        assert code == 0
        done = info["last_processed_block"]["height"] == info["tip_height"] == height
        return info if done and info["ready"] else None

    info = wait_until(caught_up, 60, "the tower to catch up with bitcoind")
    counts = (info["n_registered_users"], info["n_watcher_appointments"], info["n_responder_trackers"])
    assert counts == (1, 1, 0)

    code, users = teos_cli(datadir, admin_port, "getusers")
    assert code == 0 and user.user_id.hex() in json.dumps(users)
    code, found = teos_cli(datadir, admin_port, "getappointments", sent.locator.hex())
    assert code == 0 and sent.locator.hex() in json.dumps(found)

    # The breach: the tower responds, and the metrics say so.
    assert metric(admin_port, "teos_breaches_seen_total") == 0
    bitcoind.rpc("sendrawtransaction", pair.commitment.hex)
    bitcoind.mine(1)
    wait_until(lambda: metric(admin_port, "teos_penalties_broadcast_total") >= 1, 30, "penalty metric")
    assert metric(admin_port, "teos_breaches_seen_total") == 1
    code, info = teos_cli(datadir, admin_port, "gettowerinfo")
    assert (info["n_watcher_appointments"], info["n_responder_trackers"]) == (0, 1)

    # Without the cookie the admin API refuses.
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
    conn.request("GET", "/gettowerinfo")
    assert conn.getresponse().status == 401
    conn.close()

    code, _ = teos_cli(datadir, admin_port, "stop")
    assert code == 0
    assert tower.wait(timeout=20) == 0
    code, error = teos_cli(datadir, admin_port, "gettowerinfo")
    assert code != 0 and "error" in error


def teos_client(home: Path, *args: str) -> tuple[int, Any]:
    done = subprocess.run([sys.executable, "-m", "teos.cli.teos_client", "--datadir", str(home), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    out = done.stdout.strip() or done.stderr.strip()
    return done.returncode, json.loads(out)


@pytest.mark.parametrize("dialect", ["rust", "python"])
def test_teos_client_session_through_a_breach(
    bitcoind: BitcoindHandle, tower: Teosd, tmp_path: Path, dialect: str
) -> None:
    """A user with teos-client registers, hands over a real penalty, and sees it responded."""
    home = tmp_path / f"client-{dialect}"
    address = f"{tower.tower_id().hex()}@127.0.0.1:{tower.api_port}"
    code, reg = teos_client(home, "--dialect", dialect, "register", address)
    assert code == 0 and reg["tower_id"] == tower.tower_id().hex()

    pair = bitcoind.wallet().breach_pair()
    code, receipt = teos_client(home, "add_appointment", "--dispute-txid", pair.commitment.txid.hex(),
                                "--penalty-rawtx", pair.penalty.hex)  # fmt: skip
    assert code == 0, receipt
    locator = receipt["appointment"]["locator"]
    code, got = teos_client(home, "get_appointment", locator)
    assert code == 0 and got["status"] == "being_watched"

    bitcoind.rpc("sendrawtransaction", pair.commitment.hex)
    bitcoind.mine(1)
    wait_until(lambda: pair.penalty.txid.hex() in bitcoind.rpc("getrawmempool"), 30, "the penalty")

    def responded() -> bool:
        code, got = teos_client(home, "get_appointment", locator)
        return code == 0 and got["status"] == "dispute_responded"

    wait_until(responded, 30, "get_appointment to show the response")
