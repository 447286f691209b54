"""teosd end to end: the real daemon (subprocess, LevelDB on disk, granian workers on 127.0.0.1) over real
HTTP, against the ``bitcoind`` fixture (the simulator, and Bitcoin Core when one is installed)."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from common.client import TowerClient
from common.types import Dialect, Locator, Txid
from teos.devtools import wait_until
from teos.storage import keys
from teos.storage.store import Batch, Store
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd

pytestmark = pytest.mark.e2e


def breach_pair(bitcoind: BitcoindHandle) -> tuple[bytes, Txid, bytes, Txid]:
    """A real signed commitment (not yet broadcast) and the penalty spending it, from the regtest wallet."""
    pair = bitcoind.wallet().breach_pair()
    return pair.commitment.raw, pair.commitment.txid, pair.penalty.raw, pair.penalty.txid


def client(daemon: Teosd, dialect: Dialect) -> TowerClient:
    return TowerClient("127.0.0.1", daemon.api_port, dialect)


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_every_endpoint_with_verified_receipts(
    bitcoind: BitcoindHandle, teosd: Teosd, dialect: Dialect
) -> None:
    tower_id = teosd.tower_id()
    user = client(teosd, dialect)
    assert user.ping() == 200

    registration = user.register()
    user.check_registration(registration, tower_id)
    assert registration["user_id"] == user.user_id.hex()
    assert registration["available_slots"] == 10000

    _, dispute_txid, penalty_raw, _ = breach_pair(bitcoind)
    sent = user.add_appointment(dispute_txid, penalty_raw)
    user.check_appointment(sent, tower_id)
    assert sent.response["available_slots"] == 9999

    status, found = user.get_appointment(sent.locator)
    assert status == 200 and found["status"] == "being_watched"
    assert found["appointment"]["locator"] == sent.locator.hex()

    info = user.get_subscription_info()
    listed = info["appointments"] if dialect is Dialect.PYTHON else info["locators"]
    assert listed == [sent.locator.hex()] and info["available_slots"] == 9999

    status, missing = user.get_appointment(Locator(os.urandom(16)))
    assert status == 404
    if dialect is Dialect.PYTHON:
        assert missing["status"] == "not_found"
    else:
        assert missing["error_code"] == 36


def _mempool(bitcoind: BitcoindHandle) -> list[str]:
    return list(bitcoind.rpc("getrawmempool"))


def test_breach_is_punished_and_the_penalty_confirmed(bitcoind: BitcoindHandle, teosd: Teosd) -> None:
    user = client(teosd, Dialect.RUST)
    user.register()
    commitment_raw, commitment_txid, penalty_raw, penalty_txid = breach_pair(bitcoind)
    sent = user.add_appointment(commitment_txid, penalty_raw)

    # The channel partner broadcasts the revoked commitment and it is mined.
    bitcoind.rpc("sendrawtransaction", commitment_raw.hex())
    bitcoind.mine(1)
    wait_until(lambda: penalty_txid.hex() in _mempool(bitcoind), 30, "the penalty in the mempool")

    def responded() -> dict[str, Any] | None:
        status, body = user.get_appointment(sent.locator)
        return body if status == 200 and body["status"] == "dispute_responded" else None

    body = wait_until(responded, 15, "get_appointment to show dispute_responded")
    assert body["appointment"]["penalty_txid"] == penalty_txid.hex()
    assert body["appointment"]["dispute_txid"] == commitment_txid.hex()

    block_hash = bitcoind.mine(1)[0]
    assert penalty_txid.hex() in bitcoind.rpc("getblock", block_hash)["tx"]


def test_acknowledged_appointment_survives_sigkill(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory, tmp_path: Path
) -> None:
    daemon = teosd_factory(bitcoind)
    tower_id = daemon.tower_id()
    key_file = tmp_path / "teos" / "regtest" / "teos_sk.der"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_bytes = key_file.read_bytes()

    user = client(daemon, Dialect.PYTHON)
    user.register()
    _, dispute_txid, penalty_raw, _ = breach_pair(bitcoind)
    sent = user.add_appointment(dispute_txid, penalty_raw)
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)

    again = teosd_factory(bitcoind, api_port=daemon.api_port)
    assert again.tower_id() == tower_id and key_file.read_bytes() == key_bytes
    user.close()
    status, found = user.get_appointment(sent.locator)
    assert status == 200 and found["status"] == "being_watched"


def test_sigterm_stops_cleanly_and_fast(bitcoind: BitcoindHandle, teosd: Teosd) -> None:
    client(teosd, Dialect.RUST).register()
    started = time.monotonic()
    teosd.signal(signal.SIGTERM)
    assert teosd.wait(10) == 0
    assert time.monotonic() - started < 10
    assert "teosd stopped status=0" in teosd.log_path.read_text()


def test_second_teosd_on_the_same_datadir_is_refused(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    teosd_factory(bitcoind)
    second = teosd_factory(bitcoind, wait=False)
    assert second.wait(30) == 1
    assert "another teosd" in second.log_path.read_text()


def test_wrong_network_is_refused(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> None:
    daemon = teosd_factory(bitcoind, extra=["--btcnetwork", "testnet"], wait=False)
    assert daemon.wait(30) == 1
    log = daemon.log_path.read_text()
    assert "regtest" in log and "'test'" in log


def test_database_of_a_newer_layout_is_refused(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory, tmp_path: Path
) -> None:
    """A database a later teosd migrated is not read by this one (it would misread the keys)."""
    datadir = tmp_path / "teos"
    store = Store(datadir / "regtest" / "db")
    store.open()
    batch = Batch()
    batch.put(keys.META_SCHEMA, bytes([keys.SCHEMA + 1]))
    store.commit(batch)
    store.close()
    daemon = teosd_factory(bitcoind, datadir=datadir, wait=False)
    assert daemon.wait(30) == 1
    assert "newer than this teosd reads" in daemon.log_path.read_text()


def test_precedence_flag_over_env_over_file(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory, tmp_path: Path
) -> None:
    datadir = tmp_path / "teos"
    datadir.mkdir()
    (datadir / "teos.conf").write_text("[teos]\nsubscriptionslots = 11\nmintoselfdelay = 30\n")
    env = {"TEOS_SUBSCRIPTIONSLOTS": "22"}
    daemon = teosd_factory(bitcoind, datadir=datadir)
    assert client(daemon, Dialect.RUST).register()["available_slots"] == 11  # the file over the default
    assert daemon.stop() == 0
    daemon = teosd_factory(bitcoind, datadir=datadir, env=env)
    assert client(daemon, Dialect.RUST).register()["available_slots"] == 22  # env over the file
    assert daemon.stop() == 0
    daemon = teosd_factory(bitcoind, datadir=datadir, env=env, extra=["--subscriptionslots", "33"])
    assert client(daemon, Dialect.RUST).register()["available_slots"] == 33  # the flag over env
