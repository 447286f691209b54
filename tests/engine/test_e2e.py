"""The engine against a bitcoind (the simulator, and real Bitcoin Core when present) with a real LevelDB,
the real Gatekeeper as ledger, and real signed commitment/penalty pairs from the regtest wallet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from common import crypto
from common.appointment import compute_uuid
from common.dialects import locator_from_txid
from common.types import Dialect, Txid
from teos.chain.bitcoind import BitcoindConfig
from teos.engine import Engine
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord
from teos.storage.store import Store
from teos.storage.watched import find_watched, user_holds
from tests.engine.harness import Parts, build
from tests.support.bitcoind import REPO_ROOT, BitcoindHandle
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


class Tower:
    """A store + Gatekeeper + chain side in this process, started and stopped by the test."""

    def __init__(
        self, node: BitcoindHandle, path: Path, poll: float = 0.2, zmq: bool = True, **overrides: Any
    ) -> None:
        self.node, self.path, self.poll, self.zmq, self.overrides = node, path, poll, zmq, overrides
        self._store: Store | None = None
        self._parts: Parts | None = None

    @property
    def store(self) -> Store:
        assert self._store is not None, "start() first"
        return self._store

    @property
    def gatekeeper(self) -> Any:
        """The Gatekeeper (typed Any: the tests read fields of the user records it may return None for)."""
        assert self._parts is not None, "start() first"
        return self._parts.gatekeeper

    @property
    def engine(self) -> Engine:
        assert self._parts is not None, "start() first"
        return self._parts.chain.engine

    def rpc_config(self) -> BitcoindConfig:
        return BitcoindConfig(
            "127.0.0.1", self.node.rpc_port, self.node.rpc_user, self.node.rpc_password, timeout=5
        )

    def start(self) -> Tower:
        self._store = Store(self.path)
        self._store.open()
        self._parts = build(
            self._store,
            self.rpc_config(),
            self.node.zmq_url if self.zmq else None,
            self.poll,
            **self.overrides,
        )
        self._parts.start()
        return self

    def stop(self) -> None:
        if self._parts is not None:
            self._parts.stop()
            self.store.close()
            self._parts = None

    def synced(self, timeout: float = 15) -> None:
        tip = self.node.rpc("getblockcount")
        wait_until(lambda: self.engine.tip_height >= tip, timeout, message=f"engine not at height {tip}")
        self.engine.call(lambda: None, timeout=timeout)  # the block's broadcasts follow its tip: let them end

    def tracker(self, record: AppointmentRecord) -> Any:
        """The record's tracker, or None (typed Any: the tests read fields of it and compare it to None)."""
        raw = self.store.get(keys.tracker(record.uuid))
        return TrackerRecord.decode(raw) if raw is not None else None

    def watched(self, record: AppointmentRecord) -> bool:
        return find_watched(self.store, record.user_id, record.locator) is not None


def appoint(
    tower: Tower, pair_dispute: Txid, penalty_raw: bytes, dialect: Dialect, blob: bytes | None = None
) -> AppointmentRecord:
    """Registers a user and stores an appointment through the real Gatekeeper."""
    secret = crypto.generate_secret_key()
    user_id = crypto.public_key(secret)
    tower.gatekeeper.register(user_id, dialect)
    locator = locator_from_txid(pair_dispute, dialect)
    record = AppointmentRecord(
        uuid=compute_uuid(locator, user_id), locator=locator,
        encrypted_blob=blob if blob is not None else crypto.encrypt(penalty_raw, pair_dispute, dialect),
        to_self_delay=20, user_id=user_id, user_signature="x", start_block=tower.engine.tip_height,
        dialect=dialect,
    )  # fmt: skip
    tower.gatekeeper.add_appointment(record)
    return record


def in_mempool(node: BitcoindHandle, txid: Txid) -> bool:
    return txid.hex() in node.rpc("getrawmempool")


def confirmations(node: BitcoindHandle, txid: Txid, block_hash: str) -> int:
    try:
        return int(node.rpc("getrawtransaction", txid.hex(), True, block_hash).get("confirmations", 0))
    except Exception:
        return 0


@pytest.fixture
def tower(bitcoind: BitcoindHandle, tmp_path: Path) -> Iterator[Tower]:
    t = Tower(bitcoind, tmp_path / "db")
    yield t
    t.stop()


def test_breach_in_both_dialects_is_responded_until_irrevocable(
    tower: Tower, bitcoind: BitcoindHandle
) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(4)
    tower.start()
    pairs = [wallet.breach_pair(), wallet.breach_pair()]
    records = [
        appoint(tower, pairs[0].commitment.txid, pairs[0].penalty.raw, Dialect.PYTHON),
        appoint(tower, pairs[1].commitment.txid, pairs[1].penalty.raw, Dialect.RUST),
    ]
    slots = [tower.gatekeeper.get_user(r.user_id).available_slots for r in records]
    for p in pairs:
        wallet.send(p.commitment)
    bitcoind.mine(1)
    for p, r in zip(pairs, records, strict=True):
        wait_until(partial(in_mempool, bitcoind, p.penalty.txid), 15, message="penalty not broadcast")
        assert tower.tracker(r).penalty_txid == p.penalty.txid and not tower.watched(r)
    bitcoind.mine(1)
    tower.synced()
    assert all(tower.tracker(r).confirmed_in is not None for r in records)
    bitcoind.mine(98)
    tower.synced()
    assert all(tower.tracker(r) is not None for r in records)  # 99 confirmations
    bitcoind.mine(1)
    tower.synced()
    for r, before in zip(records, slots, strict=True):
        assert tower.tracker(r) is None
        assert tower.gatekeeper.get_user(r.user_id).available_slots == before + 1
        assert not user_holds(tower.store, r.user_id, r.locator)


def test_appointment_after_its_breach_and_breach_while_down(tower: Tower, bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(3)
    tower.start()
    late = wallet.breach_pair()
    wallet.send(late.commitment)
    bitcoind.mine(2)
    tower.synced()
    record = appoint(tower, late.commitment.txid, late.penalty.raw, Dialect.RUST)
    dispute = tower.engine.breach_in_cache(record)
    assert dispute == late.commitment.txid
    tower.engine.appointment_added(record, dispute)
    wait_until(lambda: in_mempool(bitcoind, late.penalty.txid), 15)
    assert tower.tracker(record) is not None

    down = wallet.breach_pair()
    record2 = appoint(tower, down.commitment.txid, down.penalty.raw, Dialect.PYTHON)
    tower.stop()
    wallet.send(down.commitment)
    bitcoind.mine(3)
    tower.start()
    wait_until(lambda: in_mempool(bitcoind, down.penalty.txid), 15)
    assert tower.tracker(record2).dispute_txid == down.commitment.txid


def test_invalid_blob_is_dropped_and_slots_given_back(tower: Tower, bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(2)
    tower.start()
    pair = wallet.breach_pair()
    garbage = crypto.encrypt(b"\x01" * 120, pair.commitment.txid, Dialect.PYTHON)
    record = appoint(tower, pair.commitment.txid, b"", Dialect.PYTHON, blob=garbage)
    before = tower.gatekeeper.get_user(record.user_id).available_slots
    wallet.send(pair.commitment)
    bitcoind.mine(1)
    tower.synced()
    assert not tower.watched(record) and tower.tracker(record) is None
    assert tower.gatekeeper.get_user(record.user_id).available_slots == before + 1


@pytest.mark.parametrize("depth", [1, 6, 9])
def test_reorg_removing_the_dispute_puts_the_appointment_back(
    tower: Tower, bitcoind: BitcoindHandle, depth: int
) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(3)
    tower.start()
    pair = wallet.breach_pair()
    record = appoint(tower, pair.commitment.txid, pair.penalty.raw, Dialect.RUST)
    wallet.send(pair.commitment)
    fork = bitcoind.mine(1)[0]
    wait_until(lambda: tower.tracker(record) is not None, 15)
    if depth > 1:
        bitcoind.mine(depth - 1)
    tower.synced()
    bitcoind.rpc("invalidateblock", fork)
    # A double-spend of the commitment's input, paying more, evicts commitment and penalty.
    wallet.send(wallet.conflicting(pair.commitment, fee_rate=20))
    bitcoind.mine(depth + 1, address=wallet.address())
    tower.synced()
    wait_until(lambda: tower.tracker(record) is None, 15)
    assert tower.watched(record)


def test_penalty_reorged_out_is_tracked_again(tower: Tower, bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(2)
    tower.start()
    pair = wallet.breach_pair()
    record = appoint(tower, pair.commitment.txid, pair.penalty.raw, Dialect.PYTHON)
    wallet.send(pair.commitment)
    bitcoind.mine(1)
    wait_until(lambda: in_mempool(bitcoind, pair.penalty.txid), 15)
    penalty_block = bitcoind.mine(1)[0]
    tower.synced()
    assert tower.tracker(record).confirmed_in is not None
    bitcoind.rpc("invalidateblock", penalty_block)
    wait_until(lambda: tower.tracker(record).confirmed_in is None, 15)
    assert in_mempool(bitcoind, pair.penalty.txid)
    bitcoind.mine(1, address=wallet.address())
    tower.synced()
    assert tower.tracker(record).confirmed_in is not None


def test_penalty_rejected_for_a_conflict_keeps_the_tracker(tower: Tower, bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(2)
    tower.start()
    pair = wallet.breach_pair()
    record = appoint(tower, pair.commitment.txid, pair.penalty.raw, Dialect.PYTHON)
    wallet.send(pair.commitment)
    rival = wallet.conflicting(pair.penalty, fee_rate=50)  # spends the same output, pays more
    wallet.send(rival)
    bitcoind.rpc("generateblock", wallet.address(), [pair.commitment.txid.hex()])
    tower.synced()
    wait_until(lambda: tower.tracker(record) is not None, 15)
    assert not in_mempool(bitcoind, pair.penalty.txid) and in_mempool(bitcoind, rival.txid)
    assert tower.engine.status()["n_trackers"] == 1


def test_zmq_messages_dropped_polling_finds_the_blocks(simulator: BitcoindHandle, tmp_path: Path) -> None:
    tower = Tower(simulator, tmp_path / "db", poll=0.3).start()
    try:
        wallet = simulator.wallet()
        wallet.fund(2)
        pair = wallet.breach_pair()
        record = appoint(tower, pair.commitment.txid, pair.penalty.raw, Dialect.RUST)
        simulator.rpc("sim_dropzmq", "hashblock", 10)
        wallet.send(pair.commitment)
        simulator.mine(2)
        wait_until(lambda: in_mempool(simulator, pair.penalty.txid), 15)
        assert tower.tracker(record) is not None
    finally:
        tower.stop()


def test_bitcoind_stopped_and_restarted(tower: Tower, bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(2)
    tower.start()
    pair = wallet.breach_pair()
    record = appoint(tower, pair.commitment.txid, pair.penalty.raw, Dialect.PYTHON)
    bitcoind.stop()
    wait_until(lambda: not tower.engine.bitcoind_reachable, 15)
    bitcoind.start()
    wallet.send(pair.commitment)
    bitcoind.mine(1)
    wait_until(lambda: tower.engine.bitcoind_reachable, 15)
    wait_until(lambda: in_mempool(bitcoind, pair.penalty.txid), 20)
    assert tower.tracker(record) is not None


def test_sigkill_mid_block_loses_no_breach(bitcoind: BitcoindHandle, tmp_path: Path) -> None:
    db = tmp_path / "db"
    tower = Tower(bitcoind, db).start()
    wallet = bitcoind.wallet()
    wallet.fund(8)
    pairs = [wallet.breach_pair() for _ in range(6)]
    records = [
        appoint(tower, p.commitment.txid, p.penalty.raw, Dialect.PYTHON if i % 2 else Dialect.RUST)
        for i, p in enumerate(pairs)
    ]
    tower.stop()

    def spawn() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.engine.harness", "--db", str(db), "--port", str(bitcoind.rpc_port),
             "--user", bitcoind.rpc_user, "--password", bitcoind.rpc_password, "--zmq", bitcoind.zmq_url,
             "--poll", "0.2"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    proc = spawn()
    try:
        for p in pairs:
            wallet.send(p.commitment)
            bitcoind.mine(1)
            proc.send_signal(signal.SIGKILL)  # while (or right before) it handles the block
            proc.wait(10)
            proc = spawn()
        for p in pairs:
            wait_until(partial(in_mempool, bitcoind, p.penalty.txid), 20, message="penalty missing")
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = Store(db)
    store.open()
    try:
        assert list(store.iterate(keys.APPOINTMENT)) == []
        trackers = [TrackerRecord.decode(v) for _, v in store.iterate(keys.TRACKER)]
        assert sorted(t.uuid for t in trackers) == sorted(r.uuid for r in records)
        assert {t.penalty_txid for t in trackers} == {p.penalty.txid for p in pairs}
    finally:
        store.close()
