"""The Carrier: hands penalty transactions to bitcoind and says what became of them.

Bitcoin Core's answers to ``sendrawtransaction`` (as observed on Bitcoin Core v31), mapped to a
``BroadcastStatus`` in a ``BroadcastResult``:

- the txid back (also when the transaction is already in the mempool): ``ACCEPTED``;
- -27 ``Transaction outputs already in utxo set``: the penalty is confirmed: ``IN_CHAIN``;
- -25 ``bad-txns-inputs-missingorspent``: either the penalty is confirmed and all its outputs are spent, or
  its inputs do not exist (the dispute transaction left the chain, or someone else spent the output).
  ``getrawtransaction`` is asked before concluding ``MISSING_INPUTS``;
- -26 (conflict with a mempool transaction paying more, insufficient fee, ...): ``REJECTED``;
- -22 (decode failed): ``INVALID``;
- bitcoind not answering, or answering something unreadable (another txid, an error page, garbage):
  ``UNREACHABLE`` (try again later).

The Carrier holds no state; the Responder decides what to do with each status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from common.types import BlockHash, Txid
from teos.chain.bitcoind import (
    RPC_DESERIALIZATION_ERROR,
    RPC_VERIFY_ALREADY_IN_CHAIN,
    RPC_VERIFY_ERROR,
    TRANSIENT_ERRORS,
    RPCError,
    TxInfo,
)

log = logging.getLogger(__name__)


class BroadcastStatus(Enum):
    ACCEPTED = "accepted"  # in the mempool
    IN_CHAIN = "in_chain"  # already confirmed
    MISSING_INPUTS = "missing_inputs"
    REJECTED = "rejected"  # policy: conflict, fee, ...
    INVALID = "invalid"  # not a transaction
    UNREACHABLE = "unreachable"

    @property
    def delivered(self) -> bool:
        return self in (BroadcastStatus.ACCEPTED, BroadcastStatus.IN_CHAIN)


@dataclass(frozen=True)
class BroadcastResult:
    """What became of one broadcast (not to be confused with the receipts the tower signs for users)."""

    txid: Txid
    status: BroadcastStatus
    code: int | None = None  # bitcoind's error code, if any
    message: str = ""


class BroadcastRPC(Protocol):
    """The two calls the Carrier makes (``BitcoindClient`` satisfies it)."""

    def send_raw_transaction(self, raw_tx: bytes) -> Txid: ...

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None: ...


class Carrier:
    """Broadcasts penalties and classifies bitcoind's answers (see the module docstring)."""

    def __init__(self, rpc: BroadcastRPC) -> None:
        self._rpc = rpc

    def send(self, raw_tx: bytes, txid: Txid) -> BroadcastResult:
        """Broadcasts ``raw_tx`` (whose id is ``txid``) and classifies bitcoind's answer."""
        try:
            answered = self._rpc.send_raw_transaction(raw_tx)
            if answered != txid:  # not an answer to this broadcast: ask again later
                message = f"bitcoind answered something unreadable to sendrawtransaction: txid {answered}"
                return BroadcastResult(txid, BroadcastStatus.UNREACHABLE, message=message)
            return BroadcastResult(txid, BroadcastStatus.ACCEPTED)
        except TRANSIENT_ERRORS as e:
            return BroadcastResult(txid, BroadcastStatus.UNREACHABLE, message=str(e))
        except RPCError as e:
            return self._classify(txid, e)

    def _classify(self, txid: Txid, e: RPCError) -> BroadcastResult:
        if e.code == RPC_VERIFY_ALREADY_IN_CHAIN:
            return BroadcastResult(txid, BroadcastStatus.IN_CHAIN, e.code, e.message)
        if e.code == RPC_DESERIALIZATION_ERROR:
            return BroadcastResult(txid, BroadcastStatus.INVALID, e.code, e.message)
        if e.code == RPC_VERIFY_ERROR:
            # "missing or spent" is also what a confirmed transaction whose outputs are all spent gets.
            try:
                info = self._rpc.get_raw_transaction(txid)
            except TRANSIENT_ERRORS as te:
                return BroadcastResult(txid, BroadcastStatus.UNREACHABLE, e.code, str(te))
            except RPCError:
                info = None
            if info is not None:
                status = BroadcastStatus.IN_CHAIN if info.confirmations > 0 else BroadcastStatus.ACCEPTED
                return BroadcastResult(txid, status, e.code, e.message)
            return BroadcastResult(txid, BroadcastStatus.MISSING_INPUTS, e.code, e.message)
        return BroadcastResult(txid, BroadcastStatus.REJECTED, e.code, e.message)

    def in_mempool_or_chain(self, txid: Txid) -> bool:
        """Whether bitcoind knows ``txid`` (mempool, or the chain with -txindex)."""
        try:
            return self._rpc.get_raw_transaction(txid) is not None
        except RPCError:
            return False
