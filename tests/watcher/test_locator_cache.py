"""The block locators the Watcher and the locator cache use: both dialects' locator of every txid."""

from __future__ import annotations

import os

from common.dialects import locator_from_txid
from common.types import Dialect, Txid, Txids
from teos.watcher.locator_cache import block_locators, locator_key


def test_block_locators_are_each_dialects_locator_of_each_txid() -> None:
    txids = [Txid(os.urandom(32)) for _ in range(500)]
    expected = {
        locator_key(dialect, locator_from_txid(txid, dialect)): txid.raw
        for txid in txids
        for dialect in (Dialect.PYTHON, Dialect.RUST)
    }
    assert block_locators(txids) == expected
    assert block_locators(Txids.from_raw(t.raw for t in txids)) == expected  # as a block from bitcoind
