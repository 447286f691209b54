"""Putting appointments under watch and taking them off: the one path that keeps the ``a|`` entries and the
locator index (``teos.storage.index``) in step.

The Watcher looks in LevelDB only for the locators the index names, so an ``a|`` entry written without
its index entry would never be found (and an index entry left behind would cost a seek per block that
mentions its locator). Every writer of ``a|`` entries goes through these two functions, in the batch that
makes the change; the index applies it once that batch is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from common.types import Locator, Uuid
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch


class IndexJournal(Protocol):
    """How a change reaches the locator index and its counters (``LocatorIndex`` satisfies it)."""

    def stage(
        self,
        batch: Batch,
        added: Sequence[bytes] = (),
        removed: Sequence[bytes] = (),
        counts: Mapping[str, int] | None = None,
    ) -> object: ...


def put_watched(batch: Batch, record: AppointmentRecord, index: IndexJournal, *, new: bool) -> None:
    """Adds to ``batch`` the appointment under watch. ``new``: no ``a|`` entry exists for its locator and
    uuid yet (an update of a watched appointment is not new: the index already holds it)."""
    batch.put(keys.appointment(record.locator, record.uuid), record.encode())
    if new:
        index.stage(batch, added=[record.locator.raw])


def delete_watched(batch: Batch, locator: Locator, uuid: Uuid, index: IndexJournal) -> None:
    """Adds to ``batch`` the removal of one appointment that is under watch (its ``a|`` entry exists)."""
    batch.delete(keys.appointment(locator, uuid))
    index.stage(batch, removed=[locator.raw])
