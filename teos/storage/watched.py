"""Writing appointments under watch: the one path that keeps ``a|`` entries and ``l|`` markers in step.

The Watcher only looks for ``a|locator|*`` where the exact-key marker ``l|locator`` exists (see keys.py),
so an ``a|`` entry written without its marker would never be found. Every writer uses ``put_watched``.
"""

from __future__ import annotations

from common.types import Locator, Uuid
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch


def put_watched(batch: Batch, record: AppointmentRecord) -> None:
    """Adds to ``batch`` the appointment under watch and its locator marker."""
    batch.put(keys.appointment(record.locator, record.uuid), record.encode())
    batch.put(keys.locator_marker(record.locator), b"")


def delete_watched(batch: Batch, locator: Locator, uuid: Uuid) -> None:
    """Adds to ``batch`` the removal of one appointment from watch (its marker is the Watcher's to drop)."""
    batch.delete(keys.appointment(locator, uuid))
