"""The start-up checks: whether the tower can run against this bitcoind, and where it resumes.

Run once by the composition root before the engine thread starts, in this order:

1. ``getblockchaininfo`` (retried with backoff while bitcoind is down or warming up, up to the policy's
   ``max_wait``): bitcoind must be on the configured network;
2. the stored pointer (``teos.engine.pointer``): on a first start the tower begins at bitcoind's current
   tip, which is written at once; otherwise bitcoind must still hold the blocks after the pointer (a
   pruned node that dropped them would leave breaches unseen);
3. the locator cache is refilled from the last blocks processed (a block bitcoind cannot serve, e.g.
   pruned, only makes the cache shorter).

The database's own network (``m|network``) is checked once, by the daemon, before bitcoind is asked
anything. ``run`` returns where to resume, or raises ``BootstrapError`` saying, in one line, why the tower
cannot start. Every call is retried within the policy while bitcoind is away, warming up or answering
something unreadable (``BitcoindUnreadable``), and so is any other unexpected failure of a call; only a
JSON-RPC error that will not change (e.g. ``Block not found`` for the stored pointer) ends the checks at
once. No exception other than ``BootstrapError`` leaves ``run``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from common.types import BlockHash
from teos.chain.bitcoind import (
    TRANSIENT_ERRORS,
    BitcoindError,
    BitcoindWarmingUp,
    Block,
    BlockHeader,
    Cancelled,
    ChainInfo,
    RetryPolicy,
    RPCError,
    retry_call,
)
from teos.chain.recent import BlockRef
from teos.storage.store import Batch
from teos.watcher.locator_cache import BlockLocators, block_locators

log = logging.getLogger(__name__)

T = TypeVar("T")


class BootstrapError(Exception):
    """The tower cannot start against this bitcoind; ``message`` says why (the daemon prints it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StartupConfig:
    btc_network: str  # "main", "test", "testnet4", "signet" or "regtest", as getblockchaininfo says
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_delay=0.5, max_delay=10.0, max_wait=120.0)
    )


@dataclass(frozen=True)
class Resume:
    """Where the chain side resumes: the last block processed and the stored record of recent blocks."""

    tip: BlockRef
    known: list[BlockRef]


class ChainInfoSource(Protocol):
    """bitcoind's calls the checks make (``BitcoindClient`` satisfies it)."""

    def get_blockchain_info(self) -> ChainInfo: ...

    def get_best_block_hash(self) -> BlockHash: ...

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader: ...


class BlockSource(Protocol):
    def get_block(self, block_hash: BlockHash) -> Block: ...


class CacheRefill(Protocol):
    """The locator cache as it is refilled (``LocatorCache`` satisfies it)."""

    size: int

    def add_old_block(self, block_hash: BlockHash, height: int, locators: BlockLocators) -> None: ...

    def __len__(self) -> int: ...


class ResumePoint(Protocol):
    """The stored pointer and record (``teos.engine.pointer.PointerStore`` satisfies it)."""

    def last_block(self) -> tuple[BlockRef, bool] | None: ...

    def recent(self) -> list[BlockRef]: ...

    def advance(self, batch: Batch, ref: BlockRef) -> None: ...


class Committer(Protocol):
    def commit(self, batch: Batch, sync: bool = True) -> None: ...


class Reachability(Protocol):
    def set_reachable(self, value: bool) -> None: ...


def _retryable(e: BaseException) -> bool:
    """Everything but a JSON-RPC error that asking again will not change."""
    return isinstance(e, TRANSIENT_ERRORS) or not isinstance(e, RPCError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, BitcoindError) else f"{type(e).__name__}: {text}"


class Startup:
    """The checks of the module docstring; ``run`` once, ``cancel`` from another thread to give up."""

    def __init__(
        self,
        config: StartupConfig,
        chain: ChainInfoSource,
        blocks: BlockSource,
        pointer: ResumePoint,
        store: Committer,
        cache: CacheRefill,
        reachability: Reachability,
    ) -> None:
        self.config = config
        self._chain = chain
        self._blocks = blocks
        self._pointer = pointer
        self._store = store
        self._cache = cache
        self._reachability = reachability
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> Resume:
        try:
            return self._run()
        except BootstrapError:
            raise
        except Exception as e:
            raise BootstrapError(f"start-up checks failed: {_one_line(e)}") from e

    def _run(self) -> Resume:
        info = self._rpc(self._chain.get_blockchain_info)
        if info.chain != self.config.btc_network:
            raise BootstrapError(
                f"bitcoind is on network {info.chain!r} but the tower is configured for "
                f"{self.config.btc_network!r}"
            )
        stored = self._pointer.last_block()
        if stored is None:
            tip = self._first_start()
        else:
            tip, parent_known = stored
            if info.pruned and tip.height + 1 < info.prune_height:
                raise BootstrapError(
                    f"bitcoind has pruned blocks the tower still needs: last processed height {tip.height}, "
                    f"blocks kept from height {info.prune_height}; resync bitcoind or raise its prune target"
                )
            if not parent_known:
                header = self._rpc(functools.partial(self._chain.get_block_header, tip.hash))
                tip = BlockRef(tip.hash, tip.height, header.prev_hash)
        known = self._pointer.recent()
        self._refill_cache(tip, known)
        return Resume(tip, known)

    def _rpc(self, fn: Callable[[], T]) -> T:
        """``fn()``, retried within the policy (see the module docstring); a JSON-RPC error that is not
        transient is raised as it is (callers may expect one, e.g. a pruned block)."""

        def on_error(e: BaseException, delay: float) -> None:
            self._reachability.set_reachable(False)
            if isinstance(e, TRANSIENT_ERRORS):
                log.warning("bitcoind not ready, retrying in %.1fs error=%s", delay, _one_line(e))
            else:
                log.warning("start-up call failed, retrying in %.1fs error=%s", delay, _one_line(e),
                            exc_info=e)  # fmt: skip

        try:
            result = retry_call(
                fn, self._cancel, self.config.retry, retry_on=(Exception,), on_error=on_error,
                retry_if=_retryable,
            )  # fmt: skip
        except Cancelled as e:
            raise BootstrapError("stopped while starting") from e
        except RPCError as e:
            if isinstance(e, BitcoindWarmingUp):
                raise BootstrapError(f"bitcoind is still warming up after {self._waited()}: {e}") from e
            raise
        except TRANSIENT_ERRORS as e:
            waited = self._waited()
            raise BootstrapError(f"bitcoind did not answer readably within {waited}: {_one_line(e)}") from e
        except Exception as e:
            raise BootstrapError(f"start-up call kept failing for {self._waited()}: {_one_line(e)}") from e
        self._reachability.set_reachable(True)
        return result

    def _waited(self) -> str:
        max_wait = self.config.retry.max_wait
        return f"{max_wait:.0f} s" if max_wait is not None else "ever"

    def _first_start(self) -> BlockRef:
        best = self._rpc(self._chain.get_best_block_hash)
        header = self._rpc(functools.partial(self._chain.get_block_header, best))
        ref = BlockRef(header.hash, header.height, header.prev_hash)
        batch = Batch()
        self._pointer.advance(batch, ref)
        self._store.commit(batch)
        log.info("first start: watching from the current tip height=%d block=%s", ref.height, ref.hash)
        return ref

    def _refill_cache(self, tip: BlockRef, known: list[BlockRef]) -> None:
        by_hash = {r.hash: r for r in known}
        ref: BlockRef | None = tip
        while ref is not None and len(self._cache) < self._cache.size:
            current = ref
            try:
                block = self._rpc(functools.partial(self._blocks.get_block, current.hash))
            except BitcoindError as e:  # e.g. pruned: the cache is then shorter
                log.warning("cannot rebuild locator cache beyond height=%d error=%s", current.height, e)
                break
            self._cache.add_old_block(block.hash, block.height, block_locators(block.txids))
            if block.prev_hash is None:
                break
            ref = by_hash.get(block.prev_hash) or BlockRef(block.prev_hash, block.height - 1, None)
        log.info("locator cache rebuilt blocks=%d", len(self._cache))
