"""The narrow view of bitcoind the payment checks need, and an adapter over any JSON-RPC callable.

``get_tx_out`` answers as ``gettxout <txid> <n> true`` does: the output if it is unspent (an output
created by a mempool transaction has 0 confirmations; one spent by a mempool transaction is gone).
``tip_height`` is the height the confirmations are counted against. Anything that keeps the answer from
coming (bitcoind down, warming up, a malformed reply) raises ChainUnavailable; the caller then refuses
with SERVICE_UNAVAILABLE and charges nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from common.types import Txid

COIN = 100_000_000


class ChainUnavailable(Exception):
    """bitcoind could not answer (or answered something unusable)."""


@dataclass(frozen=True)
class TxOutInfo:
    value: int  # satoshis
    script_pubkey: bytes
    confirmations: int  # 0: created by a mempool transaction


class FundingChain(Protocol):
    def get_tx_out(self, txid: Txid, vout: int) -> TxOutInfo | None: ...

    def tip_height(self) -> int: ...


def btc_to_sats(value: object) -> int:
    """An RPC amount in BTC (a JSON number) as satoshis, exactly; ValueError if it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise ValueError("amount is not a number")
    try:
        sats = Decimal(str(value)) * COIN
    except InvalidOperation:
        raise ValueError("amount is not a number") from None
    if sats != sats.to_integral_value() or sats < 0:
        raise ValueError("amount is not a whole number of satoshis")
    return int(sats)


class RpcFundingChain:
    """``FundingChain`` over ``rpc(method, *params)`` (teos.chain.bitcoind's client, or a test handle)."""

    def __init__(self, rpc: Callable[..., Any], tip: Callable[[], int] | None = None) -> None:
        self.rpc = rpc
        self.tip = tip

    def _call(self, method: str, *params: Any) -> Any:
        try:
            return self.rpc(method, *params)
        except Exception as exc:  # any transport or RPC failure: the chain cannot answer now
            raise ChainUnavailable(f"{method} failed: {exc}") from exc

    def get_tx_out(self, txid: Txid, vout: int) -> TxOutInfo | None:
        reply = self._call("gettxout", txid.hex(), vout, True)
        if reply is None:
            return None
        try:
            return TxOutInfo(
                value=btc_to_sats(reply["value"]),
                script_pubkey=bytes.fromhex(reply["scriptPubKey"]["hex"]),
                confirmations=int(reply["confirmations"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainUnavailable(f"unusable gettxout reply: {exc}") from exc

    def tip_height(self) -> int:
        if self.tip is not None:
            return self.tip()
        height = self._call("getblockcount")
        if not isinstance(height, int) or isinstance(height, bool) or height < 0:
            raise ChainUnavailable(f"unusable getblockcount reply: {height!r}")
        return height


class BoundedFundingChain:
    """A ``FundingChain`` that lets at most ``max_calls`` ``gettxout`` run at once, waiting ``wait`` seconds
    for a turn and answering ChainUnavailable (a 503, nothing charged) after that.

    Opening a channel and paying both cost a ``gettxout``, and those requests come from the network:
    bounded here, they can never fill bitcoind's RPC work queue (16 by default) and keep the engine, which
    shares that queue, from reading blocks. The tip is the engine's and costs nothing."""

    def __init__(self, chain: FundingChain, max_calls: int = 2, wait: float = 2.0) -> None:
        self.chain = chain
        self.wait = wait
        self._slots = threading.BoundedSemaphore(max_calls)

    def get_tx_out(self, txid: Txid, vout: int) -> TxOutInfo | None:
        if not self._slots.acquire(timeout=self.wait):
            raise ChainUnavailable("too many funding checks in progress")
        try:
            return self.chain.get_tx_out(txid, vout)
        finally:
            self._slots.release()

    def tip_height(self) -> int:
        return self.chain.tip_height()
