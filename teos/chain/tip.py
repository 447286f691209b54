"""The tip: the last block the tower processed and whether bitcoind answers, shared by every thread.

One object, built first by the composition root, so that neither side of the tower needs the other.
The chain side writes it: the engine records each block once its effects are on disk (``processed``);
the monitor, the start-up checks and the engine's retries say whether bitcoind answered
(``set_reachable``). The user side reads it: the Gatekeeper (subscription start and expiry), the service
(an appointment's ``start_block``; 503 while bitcoind is away) and the admin status. Each value is one
reference read or written at a time, so no lock is needed.
"""

from __future__ import annotations

import logging

from teos.chain.recent import BlockRef

log = logging.getLogger(__name__)


class ChainTip:
    """The shared tip described in the module docstring (satisfies ``teos.interfaces.TipView``)."""

    def __init__(self) -> None:
        self._block: BlockRef | None = None
        self._reachable = False

    @property
    def block(self) -> BlockRef | None:
        """The last block processed (None until the engine has resumed)."""
        return self._block

    @property
    def tip_height(self) -> int:
        """Height of the last block processed (0 until the engine has resumed)."""
        block = self._block
        return block.height if block is not None else 0

    @property
    def bitcoind_reachable(self) -> bool:
        """Whether bitcoind answered the last call the chain side made."""
        return self._reachable

    def processed(self, block: BlockRef) -> None:
        self._block = block

    def set_reachable(self, value: bool) -> None:
        if value != self._reachable:
            log.info("bitcoind reachable=%s", value)
        self._reachable = value
