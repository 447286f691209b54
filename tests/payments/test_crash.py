"""kill -9 right after payments are acknowledged: the channel state and the slots survive, and a grant
whose payment was accepted but not yet applied when the process died is applied once at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.ledger import GatekeeperLedger
from teos.payments.store import ChannelStore
from teos.storage import keys
from teos.storage.atomic import LevelDBAtomicStore
from teos.storage.store import Store
from tests.payments.crash_child import PRICE, SLOTS, gatekeeper
from tests.payments.support import TOWER_KEY, FakeChain, make_params, user_id

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_kill_9_after_acknowledged_payments(tmp_path: Path) -> None:
    db = tmp_path / "db"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.payments.crash_child", str(db)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            nonce, slots = (int(x) for x in line.split()[1:])
            acked.append((nonce, slots))
            if nonce >= 25:
                os.kill(child.pid, signal.SIGKILL)  # right after an acknowledgement, mid-way through the next
                break
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    last_nonce, last_slots = acked[-1]
    assert last_slots == last_nonce * SLOTS

    store = Store(db)
    store.open()
    try:
        params = make_params(value=10_000_000, expiry=1_100)
        channels = ChannelStore(LevelDBAtomicStore(store))
        gk = gatekeeper(store)
        ledger = GatekeeperLedger(gk)
        snap = channels.get(params.channel_id)
        assert snap is not None
        nonce = snap.state.nonce
        assert nonce in (last_nonce, last_nonce + 1)  # the next payment's CAS may have landed
        assert snap.state.amount == nonce * PRICE
        handler = PaymentHandler(
            PaymentConfig(price=PRICE, min_funding_confirmations=1), channels, FakeChain(), ledger,
            FixedPrice(PRICE), TOWER_KEY, SLOTS, 10,
        )  # fmt: skip
        handler.reconcile()
        markers = [k for k, _ in store.iterate(keys.grants_of_channel(params.channel_id.raw))]
        assert markers == [keys.grant(params.channel_id.raw, n) for n in range(1, nonce + 1)]
        user = gk.get_user(user_id(0))
        assert user is not None and user.available_slots == nonce * SLOTS  # every payment granted once
        assert user.subscription_expiry == 100 + nonce * 10
        assert handler.reconcile() == 0
    finally:
        store.close()
