"""A tower's chain side in its own process, for crash tests: ``python -m tests.engine.harness --db PATH``.

Opens the store, builds a real Gatekeeper (the SlotLedger and BlockListener) and the chain side against
the given bitcoind, wired as teosd wires them (``teos.daemon.build_chain_side``), prints ``ready`` once
started, and stops cleanly on SIGTERM. A test SIGKILLs it to crash the tower at an arbitrary point.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teos.chain.bitcoind import BitcoindClient, BitcoindConfig, RetryPolicy
from teos.chain.tip import ChainTip
from teos.daemon import ChainSide, build_chain_side
from teos.engine import EngineConfig
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage.index import LocatorIndex
from teos.storage.store import Store


@dataclass
class Parts:
    index: LocatorIndex
    gatekeeper: Gatekeeper
    chain: ChainSide

    def start(self) -> None:
        self.index.start()
        self.gatekeeper.start()
        self.chain.start()

    def stop(self) -> None:
        self.chain.stop()
        self.index.stop()


def build(
    store: Store, rpc: BitcoindConfig, zmq_url: str | None, poll: float, **overrides: Any
) -> Parts:
    """The locator index, a Gatekeeper and a chain side over ``store``, against the bitcoind at ``rpc``
    (nothing started: ``Parts.start``)."""
    tip = ChainTip()
    index = LocatorIndex(store)
    gatekeeper = Gatekeeper(store, GatekeeperConfig(), tip, index)
    config = EngineConfig(
        btc_network="regtest", poll_interval=poll, zmq_url=zmq_url, retry_max_delay=0.5,
        startup_retry=RetryPolicy(0.1, 0.5, 20.0), **overrides,
    )  # fmt: skip
    chain = build_chain_side(config, store, BitcoindClient(rpc), tip, gatekeeper, index, [gatekeeper])
    return Parts(index, gatekeeper, chain)


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
    parts = build(
        store,
        BitcoindConfig("127.0.0.1", args.port, args.user, args.password, timeout=5),
        args.zmq,
        args.poll,
    )
    parts.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    parts.stop()
    store.close()


if __name__ == "__main__":
    main()
