"""The record of recent blocks the monitor and the engine share, and the tip both sides read."""

from __future__ import annotations

import hashlib

import pytest

from common.types import BlockHash
from teos.chain.recent import BlockRef, RecentBlocks
from teos.chain.tip import ChainTip
from tests.support.fakes import FakeChain


def ref(chain: FakeChain, height: int) -> BlockRef:
    block = chain.blocks[chain.best[height]]
    return BlockRef(block.hash, block.height, block.prev_hash)


def test_parents_come_from_the_record_else_from_headers() -> None:
    chain = FakeChain(length=10)
    recent = RecentBlocks(chain, depth=5)
    recent.seed([ref(chain, 8), ref(chain, 9)])
    assert recent.parent_of(ref(chain, 9)) == ref(chain, 8)
    chain.down = True  # the record answers without bitcoind
    assert recent.parent_of(ref(chain, 9)) == ref(chain, 8)
    chain.down = False
    assert recent.parent_of(ref(chain, 8)) == ref(chain, 7)  # not recorded: getblockheader


def test_a_stale_block_keeps_its_parent() -> None:
    chain = FakeChain(length=6)
    recent = RecentBlocks(chain)
    tip = ref(chain, 5)
    recent.add(tip)
    chain.reorg(1)
    chain.mine()
    assert recent.parent_of(tip) == ref(chain, 4)  # entries are by hash: never wrong, only unused


def test_the_record_is_bounded_by_depth() -> None:
    chain = FakeChain(length=2)
    recent = RecentBlocks(chain, depth=4)

    def made(height: int) -> BlockRef:
        return BlockRef(BlockHash(hashlib.sha256(height.to_bytes(4, "big")).digest()), height, None)

    for height in range(100):
        recent.add(made(height))
    assert recent.get(made(99).hash) == made(99) and recent.get(made(10).hash) is None


def test_the_genesis_block_has_no_parent() -> None:
    chain = FakeChain(length=1)
    with pytest.raises(RuntimeError, match="genesis"):
        RecentBlocks(chain).parent_of(ref(chain, 0))


def test_the_tip_starts_empty_and_unreachable() -> None:
    tip = ChainTip()
    assert (tip.block, tip.tip_height, tip.bitcoind_reachable) == (None, 0, False)
    block = BlockRef(BlockHash(bytes(32)), 7, None)
    tip.processed(block)
    tip.set_reachable(True)
    assert (tip.block, tip.tip_height, tip.bitcoind_reachable) == (block, 7, True)
