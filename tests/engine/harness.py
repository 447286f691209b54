"""Runs the engine in its own process (for crash tests): ``python -m tests.engine.harness --db PATH ...``.

Opens the store, builds a real Gatekeeper (the SlotLedger and BlockListener) and the Engine against the
given bitcoind, prints ``ready`` once started, and stops cleanly on SIGTERM. A test SIGKILLs it to crash
the tower at an arbitrary point.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from teos.chain.bitcoind import BitcoindClient, BitcoindConfig, RetryPolicy
from teos.engine import Engine, EngineConfig
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage.store import Store


@dataclass
class _ChainRef:
    """Lets the Gatekeeper read the tip from the engine built after it."""

    target: Engine | None = None

    @property
    def bitcoind_reachable(self) -> bool:
        return self.target is not None and self.target.bitcoind_reachable

    @property
    def tip_height(self) -> int:
        return self.target.tip_height if self.target is not None else 0

    def breach_in_cache(self, record):  # type: ignore[no-untyped-def]
        return self.target.breach_in_cache(record) if self.target is not None else None

    def appointment_added(self, record, dispute_txid) -> None:  # type: ignore[no-untyped-def]
        if self.target is not None:
            self.target.appointment_added(record, dispute_txid)


def build(store: Store, rpc: BitcoindConfig, zmq_url: str | None, poll: float, **overrides) -> tuple:
    chain = _ChainRef()
    gatekeeper = Gatekeeper(store, GatekeeperConfig(), chain)
    config = EngineConfig(
        btc_network="regtest", poll_interval=poll, zmq_url=zmq_url, retry_max_delay=0.5,
        startup_retry=RetryPolicy(0.1, 0.5, 20.0), **overrides,
    )  # fmt: skip
    engine = Engine(config, store, BitcoindClient(rpc), gatekeeper, [gatekeeper])
    chain.target = engine
    return gatekeeper, engine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--zmq", default=None)
    p.add_argument("--poll", type=float, default=0.2)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    store = Store(Path(args.db))
    store.open()
    gatekeeper, engine = build(
        store,
        BitcoindConfig("127.0.0.1", args.port, args.user, args.password, timeout=5),
        args.zmq,
        args.poll,
    )
    gatekeeper.start()
    engine.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    engine.stop()
    store.close()


if __name__ == "__main__":
    main()
