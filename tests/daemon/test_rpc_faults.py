"""teosd keeps its promise while bitcoind answers garbage, end to end.

The real teosd (subprocess, LevelDB, API workers) talks to bitcoind through the tests' faulting JSON-RPC
proxy (``tests/support/rpcproxy.py``), in front of the simulator and of real Bitcoin Core. For each of
``sendrawtransaction``, ``getblock`` and ``getbestblockhash`` the proxy breaks the answers in every way
``teos.regtest.faults`` knows (wrong types, missing fields, out-of-range values, cut bodies, an HTML 500,
Core's text/plain 503 "Work queue depth exceeded", a hang), each several times, while two breaches are
mined in different blocks. Both must be responded (the penalty reaches bitcoind and ``get_appointment``
says ``dispute_responded``) and the tower must reach bitcoind's tip afterwards.

Also here: garbage at start-up is retried, and a start-up that never gets a readable answer ends with a
one-line reason and no traceback; the watchdog ends a tower whose engine makes no progress while bitcoind's
tip is ahead (exit status non-zero, never a receipt after it noticed), and the next start resumes from the
database and answers the breach mined meanwhile.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.client import TowerClient
from common.http import BadResponse, HttpError
from common.types import Dialect, Txid
from teos.devtools import free_port
from teos.regtest import faults
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BURN_ADDRESS, BitcoindHandle
from tests.support.processes import Teosd
from tests.support.rpcproxy import RpcProxy
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

COUNT = 3  # each kind, several times
HANG = 3.0  # seconds a hanging answer holds the connection before dropping it
RPC_TIMEOUT = "2"  # teosd's --btcrpctimeout: a hang is a real timeout, not a dropped connection
TRIPPED = "watchdog: the tower stopped watching the chain"


@pytest.fixture
def proxy(bitcoind: BitcoindHandle) -> Iterator[RpcProxy]:
    with RpcProxy(bitcoind.rpc_host, bitcoind.rpc_port) as p:
        yield p


class Tower:
    """A teosd against ``endpoint`` (the proxy's front of a node, or a node), with its admin port for
    gettowerinfo and /ready."""

    def __init__(
        self,
        factory: TeosdFactory,
        endpoint: Any,
        *extra: str,
        wait: bool = True,
        datadir: Path | None = None,
        api_port: int | None = None,
    ) -> None:
        self.admin_port = free_port()
        self.daemon: Teosd = factory(
            endpoint,
            datadir=datadir,
            extra=["--rpcport", str(self.admin_port), *extra],
            wait=wait,
            api_port=api_port,
        )

    def admin(self, path: str) -> tuple[int, Any]:
        cookie = (self.daemon.datadir / "regtest" / ".cookie").read_text().strip()
        auth = base64.b64encode(cookie.encode()).decode()
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Basic {auth}"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def at_tip(self, node: BitcoindHandle) -> bool:
        """The tower processed bitcoind's best block and says it is ready."""
        self.daemon.check_alive()
        try:
            _, info = self.admin("/gettowerinfo")
            ready, _ = self.admin("/ready")
        except (OSError, http.client.HTTPException, ValueError):
            return False
        return info["last_processed_block"]["height"] == node.rpc("getblockcount") and ready == 200


def penalty_reached_bitcoind(node: BitcoindHandle, txid: Txid, depth: int = 60) -> bool:
    """In the mempool, or in one of the last ``depth`` blocks (no -txindex needed)."""
    if txid.hex() in node.rpc("getrawmempool"):
        return True
    height = node.rpc("getblockcount")
    for h in range(height, max(height - depth, 0), -1):
        if txid.hex() in node.rpc("getblock", node.rpc("getblockhash", h))["tx"]:
            return True
    return False


def responded(user: TowerClient, sent: Any) -> bool:
    status, body = user.get_appointment(sent.locator)
    return status == 200 and body.get("status") == "dispute_responded"


class Breaches:
    """Two users' appointments for two real commitment/penalty pairs, breached on demand.

    Both commitments are broadcast at once, before any fault (the test's own ``sendrawtransaction`` must
    not meet the simulator's knob); ``breach(i)`` mines commitment ``i`` alone in a new block
    (``generateblock``), so the two breaches land in different blocks whenever the test says."""

    def __init__(self, node: BitcoindHandle, tower: Tower) -> None:
        self.node = node
        self.wallet = node.wallet()
        self.wallet.fund(3)
        self.pairs = [self.wallet.breach_pair(), self.wallet.breach_pair()]
        self.users = [
            TowerClient("127.0.0.1", tower.daemon.api_port, Dialect.RUST),
            TowerClient("127.0.0.1", tower.daemon.api_port, Dialect.PYTHON),
        ]
        self.sent = []
        for user, pair in zip(self.users, self.pairs, strict=True):
            user.register()
            self.sent.append(user.add_appointment(pair.commitment.txid, pair.penalty.raw))
        for pair in self.pairs:
            self.wallet.send(pair.commitment)  # in the mempool, not mined: no breach yet
        self.mined_in: list[str] = []

    def breach(self, i: int) -> None:
        """Commitment ``i`` is mined, alone, in a block of its own."""
        block = self.node.rpc("generateblock", BURN_ADDRESS, [self.pairs[i].commitment.txid.hex()])
        self.mined_in.append(block["hash"])

    def mine(self) -> None:
        """A block without the commitments still waiting (the penalties confirm)."""
        waiting = {p.commitment.txid.hex() for i, p in enumerate(self.pairs) if i >= len(self.mined_in)}
        mempool = [t for t in self.node.rpc("getrawmempool") if t not in waiting]
        self.node.rpc("generateblock", BURN_ADDRESS, mempool)

    def all_responded(self) -> bool:
        return all(
            responded(user, sent) and penalty_reached_bitcoind(self.node, pair.penalty.txid)
            for user, sent, pair in zip(self.users, self.sent, self.pairs, strict=True)
        )


# -- garbage while running ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["getblock", "getbestblockhash"])
def test_garbage_from_the_chain_walk_loses_no_breach(
    bitcoind: BitcoindHandle, proxy: RpcProxy, teosd_factory: TeosdFactory, method: str
) -> None:
    tower = Tower(teosd_factory, proxy.front(bitcoind), "--btcrpctimeout", RPC_TIMEOUT)
    breaches = Breaches(bitcoind, tower)
    wait_until(lambda: tower.at_tip(bitcoind), 30, message="the tower at the tip before the faults")
    for i, kind in enumerate(faults.KINDS):
        proxy.inject(method, kind, count=COUNT, seconds=HANG)
        if i in (0, len(faults.KINDS) // 2):
            breaches.breach(0 if i == 0 else 1)  # mined while bitcoind answers garbage
        else:
            breaches.mine()
        wait_until(lambda: proxy.pending(method) == 0, 60, message=f"{method} answered {kind} {COUNT} times")
        wait_until(lambda: tower.at_tip(bitcoind), 60, message=f"the tower at the tip after {method} {kind}")
    assert len(set(breaches.mined_in)) == 2
    wait_until(breaches.all_responded, 60, message="both breaches responded")
    assert proxy.delivered(method) == COUNT * len(faults.KINDS)


class Knob:
    """The simulator's own fault knob (``sim_garble``), with the proxy's bookkeeping methods."""

    def __init__(self, node: BitcoindHandle) -> None:
        self.node = node

    def inject(
        self, method: str, kind: str, count: int = 1, seconds: float = faults.DEFAULT_HANG_SECONDS
    ) -> None:
        self.node.rpc("sim_garble", method, kind, count, seconds)

    def pending(self, method: str) -> int:
        return sum(rule["remaining"] for rule in self.node.rpc("sim_status")["garble"].get(method, []))

    def delivered(self, method: str) -> int:
        return int(self.node.rpc("sim_status")["garbled"].get(method, 0))


def garbage_on_sendrawtransaction(node: BitcoindHandle, tower: Tower, source: RpcProxy | Knob) -> None:
    """Every kind, COUNT times, on sendrawtransaction while two breaches are mined in different blocks."""
    method = "sendrawtransaction"
    breaches = Breaches(node, tower)
    wait_until(lambda: tower.at_tip(node), 30, message="the tower at the tip before the faults")
    for kind in faults.KINDS:
        source.inject(method, kind, count=COUNT, seconds=HANG)
    total = source.pending(method)
    breaches.breach(0)
    # The failed broadcasts are retried on their own; the second breach comes while garbage still flows.
    wait_until(lambda: source.delivered(method) >= total // 2, 120, message="half the faults delivered")
    breaches.breach(1)
    wait_until(lambda: source.pending(method) == 0, 120, message="every sendrawtransaction fault delivered")
    wait_until(breaches.all_responded, 60, message="both breaches responded")
    breaches.mine()
    wait_until(lambda: tower.at_tip(node), 60, message="the tower at the tip")
    assert len(set(breaches.mined_in)) == 2


def test_garbage_from_sendrawtransaction_loses_no_breach(
    bitcoind: BitcoindHandle, proxy: RpcProxy, teosd_factory: TeosdFactory
) -> None:
    tower = Tower(teosd_factory, proxy.front(bitcoind), "--btcrpctimeout", RPC_TIMEOUT)
    garbage_on_sendrawtransaction(bitcoind, tower, proxy)


def test_garbage_from_the_simulators_own_knob_loses_no_breach(
    simulator: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    tower = Tower(teosd_factory, simulator, "--btcrpctimeout", RPC_TIMEOUT)
    garbage_on_sendrawtransaction(simulator, tower, Knob(simulator))


# -- start-up -----------------------------------------------------------------------------------------


def test_garbage_at_start_up_is_retried(
    bitcoind: BitcoindHandle, proxy: RpcProxy, teosd_factory: TeosdFactory
) -> None:
    for kind in (faults.CUT_BODY, faults.HTML_500, faults.MISSING_FIELD):
        proxy.inject("getblockchaininfo", kind)
    for kind in (faults.WRONG_TYPE, faults.BAD_VALUE, faults.BUSY_503, faults.WRONG_FIELD_TYPE):
        proxy.inject("getbestblockhash", kind)
    tower = Tower(teosd_factory, proxy.front(bitcoind), wait=False)
    tower.daemon.wait_ready(timeout=90)
    assert proxy.pending() == 0
    wait_until(lambda: tower.at_tip(bitcoind), 30, message="the tower at the tip")
    assert "Traceback" not in tower.daemon.log_path.read_text()


def test_start_up_that_never_gets_a_readable_answer_ends_with_one_line(
    bitcoind: BitcoindHandle, proxy: RpcProxy, teosd_factory: TeosdFactory
) -> None:
    proxy.inject("getbestblockhash", faults.WRONG_TYPE, count=100_000)
    tower = Tower(teosd_factory, proxy.front(bitcoind), "--btcstartuptimeout", "3", wait=False)
    assert tower.daemon.wait(60) == 1
    log = tower.daemon.log_path.read_text()
    assert "Traceback" not in log
    fatal = [line for line in log.splitlines() if "fatal" in line]
    assert len(fatal) == 1 and "getbestblockhash" in fatal[0] and "unreadable" in fatal[0]


# -- the watchdog --------------------------------------------------------------------------------------


def test_watchdog_ends_a_stalled_tower_and_the_restart_answers_the_breach(
    bitcoind: BitcoindHandle, proxy: RpcProxy, teosd_factory: TeosdFactory
) -> None:
    tower = Tower(teosd_factory, proxy.front(bitcoind), "--watchdogtimeout", "5")
    breaches = Breaches(bitcoind, tower)
    wait_until(lambda: tower.at_tip(bitcoind), 30, message="the tower at the tip")
    # getblock hangs: bitcoind answers everything else, its tip moves ahead, the engine cannot follow.
    proxy.inject("getblock", faults.HANG, count=100_000, seconds=120)
    breaches.breach(0)

    log_path = tower.daemon.log_path
    late_receipts = []
    deadline = time.monotonic() + 90
    while tower.daemon.running and time.monotonic() < deadline:
        user = TowerClient("127.0.0.1", tower.daemon.api_port, Dialect.RUST)
        tripped_before = TRIPPED in log_path.read_text()  # read before asking: the answer may come later
        try:
            user.register()
        except HttpError as e:
            assert e.status == 503, e.body
        except (OSError, http.client.HTTPException, BadResponse):
            pass  # teosd is going away
        else:
            if tripped_before:
                late_receipts.append(user.user_id.hex())
        finally:
            user.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            tower.daemon.wait(0.2)  # paces the attempts; returns as soon as teosd exits
    assert tower.daemon.wait(10) != 0
    log = log_path.read_text()
    watchdog = [line for line in log.splitlines() if TRIPPED in line and "level=ERROR" in line]
    assert watchdog, log[-2000:]
    assert not late_receipts, "receipts signed after the watchdog noticed the stall"

    # systemd or Docker starts it again; the state resumes from the database.
    proxy.clear()
    restarted = Tower(
        teosd_factory, proxy.front(bitcoind), datadir=tower.daemon.datadir, api_port=tower.daemon.api_port
    )
    wait_until(
        lambda: responded(breaches.users[0], breaches.sent[0]),
        60,
        message="the breach mined during the stall",
    )
    assert penalty_reached_bitcoind(bitcoind, breaches.pairs[0].penalty.txid)
    wait_until(lambda: restarted.at_tip(bitcoind), 60, message="the restarted tower at the tip")
