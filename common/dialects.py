"""Where the two client dialects disagree on bytes derived from a dispute txid.

python-teos clients take the txid bytes as displayed (``bytes.fromhex(txid_hex)``); rust-teos clients take
Bitcoin's internal order (the display bytes reversed). Both the locator (the first 16 of those bytes) and
the blob key (SHA256 of all 32) follow the same choice, so the tower derives both from one helper here.
"""

from __future__ import annotations

import hashlib

from common.types import Dialect, Locator, Txid


def txid_bytes(txid: Txid, dialect: Dialect) -> bytes:
    """The 32 txid bytes in the order ``dialect`` hashes and truncates them."""
    return txid.display if dialect is Dialect.PYTHON else txid.internal


def locator_from_txid(txid: Txid, dialect: Dialect) -> Locator:
    """The locator a client of ``dialect`` sends for a breach by ``txid``: the first 16 txid bytes."""
    return Locator(txid_bytes(txid, dialect)[:16])


def blob_key(txid: Txid, dialect: Dialect) -> bytes:
    """The 32-byte ChaCha20-Poly1305 key a client of ``dialect`` encrypts the penalty with."""
    return hashlib.sha256(txid_bytes(txid, dialect)).digest()
