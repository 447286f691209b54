"""Run by test_crash.py as a subprocess: opens a channel in a LevelDB database and pays on it forever
(through the real Gatekeeper), printing ``ACK <nonce> <slots>`` after each payment is acknowledged, until
the parent kills it with SIGKILL."""

from __future__ import annotations

import sys
from pathlib import Path

from common.channel_wire import make_open_request, make_pay_request
from common.types import Dialect
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.ledger import GatekeeperLedger
from teos.payments.store import ChannelStore
from teos.storage.atomic import LevelDBAtomicStore
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.payments.support import TOWER_KEY, USER_SECRET, FakeChain, make_params, user_id
from tests.support.users import FakeChainView

PRICE = 1_000
SLOTS = 7


def gatekeeper(store: Store) -> Gatekeeper:
    """The real Gatekeeper over the database (the tip is fixed: grants start and extend from 100)."""
    index = LocatorIndex(store)
    index.start()
    gk = Gatekeeper(
        store, GatekeeperConfig(subscription_slots=SLOTS, subscription_duration=10), FakeChainView(), index
    )
    gk.start()
    return gk


def main(path: str) -> None:
    store = Store(Path(path))
    store.open()
    params = make_params(value=10_000_000, expiry=1_100)
    chain = FakeChain(tip=100)
    chain.fund(params)
    handler = PaymentHandler(
        PaymentConfig(price=PRICE, min_funding_confirmations=1),
        ChannelStore(LevelDBAtomicStore(store)),
        chain,
        GatekeeperLedger(gatekeeper(store)),
        FixedPrice(PRICE),
        TOWER_KEY,
        SLOTS,
        10,
    )
    handler.open_channel(make_open_request(params, USER_SECRET))
    nonce = 0
    while True:
        nonce += 1
        result = handler.pay(
            make_pay_request(params, nonce, nonce * PRICE, user_id(0), Dialect.RUST, USER_SECRET)
        )
        print(f"ACK {result.state.nonce} {result.outcome.available_slots}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
