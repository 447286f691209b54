"""Which transaction of a block spends a channel's funding output.

Two ways the engine learns it, cheapest first (``teos.payments.runner``):

- the claim: its txid is known in advance, so a block's txid list (which the engine already has) says
  whether the claim is in it;
- anything else: before expiry nothing but the claim can spend a funding output (the other branch needs
  the chain past ``expiry``), so only blocks above a live channel's expiry are read in full, here, to find
  a refund (or any other spend) of its outpoint.

``spends_in_block`` walks a serialized block (``getblock <hash> 0``) reading only the inputs' outpoints and
skipping scripts, outputs and witnesses, and hashes the stripped serialization of just the transactions
that spend a wanted outpoint. Anything malformed raises ``TxDecodeError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from common.tx import Reader, TxDecodeError, sha256d
from common.types import Txid

K = TypeVar("K")

HEADER_SIZE = 80


def spends_in_block(raw_block: bytes, wanted: Mapping[tuple[Txid, int], K]) -> dict[K, Txid]:
    """For each wanted outpoint spent by a transaction of ``raw_block``: its key in ``wanted`` and the
    spending transaction's txid."""
    r = Reader(bytes(raw_block))
    r.read(HEADER_SIZE)
    n_tx = r.count(51)
    found: dict[K, Txid] = {}
    by_raw = {txid.raw + vout.to_bytes(4, "little"): key for (txid, vout), key in wanted.items()}
    for _ in range(n_tx):
        start = r.pos
        r.read(4)  # version
        io_start = r.pos  # the stripped serialization goes on from here (input count included)
        n_in = r.count(41)
        segwit = n_in == 0
        if segwit:
            if r.u8() != 1:
                raise TxDecodeError("unknown transaction optional data")
            io_start = r.pos
            n_in = r.count(41)
        hits: list[K] = []
        for _ in range(n_in):
            outpoint = r.read(36)
            key = by_raw.get(outpoint)
            if key is not None:
                hits.append(key)
            r.read(r.count(1))  # scriptSig
            r.read(4)  # sequence
        for _ in range(r.count(9)):
            r.read(8)
            r.read(r.count(1))
        io_end = r.pos
        if segwit:
            for _ in range(n_in):
                for _ in range(r.count(1)):
                    r.read(r.count(1))
        r.read(4)  # locktime
        if hits:
            data = r.data
            stripped = data[start : start + 4] + data[io_start:io_end] + data[r.pos - 4 : r.pos]
            txid = Txid(sha256d(stripped))
            for key in hits:
                found[key] = txid
    if r.remaining:
        raise TxDecodeError("trailing data after block")
    return found
