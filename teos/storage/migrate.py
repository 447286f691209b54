"""Moving a database to the current key layout, once, at start, before anything else reads it.

Layout 1 (teosd before user numbers) kept, per appointment, ``a | locator(16) | uuid(20) ->
AppointmentRecord`` (the full record: uuid, locator and the 33-byte user id again) and ``i | user_id(33) |
uuid(20) -> locator(16)``, and users as ``u | user_id -> UserRecord`` v1. Layout 2 (``teos.storage.keys``)
numbers the users and keys their appointments by number: ``w | locator | usernum -> body`` and ``h |
usernum | locator -> b""``, with ``r | usernum -> user_id``. With 250-byte blobs that is about 370 bytes
per appointment on disk instead of 570.

``migrate`` first numbers the users (a user numbered by an interrupted migration keeps its number), then
walks the ``a|`` entries in key order, each becoming a ``w|`` entry, then the ``i|`` entries, each
becoming an ``h|`` entry: sequential reads, in batches of at most ``CHUNK`` entries, each deleting what it
moved, so that a migration cut short by a crash resumes where it stopped. An entry no registered user
claims (of a user deleted behind the tower's back), or that does not decode, is dropped and counted in
the log. The schema version (``m|schema`` = 2) is written last. The locator index and its counts are
unaffected (an appointment keeps its locator) unless something was dropped: they are then deleted, to be
rebuilt from the new layout when the index starts.

The space the old entries took is given back at the end (a compaction of their key ranges: LevelDB would
otherwise keep it until writes nearby happen to compact it). The tower does not watch while this runs
(about half a minute per million appointments here); it catches up on the blocks mined meanwhile as
after any downtime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from common.types import Locator, UserId
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, CodecError, UserRecord
from teos.storage.store import Batch, Store

log = logging.getLogger(__name__)

LEGACY_APPOINTMENT = b"a"  # a | locator(16) | uuid(20) -> AppointmentRecord
LEGACY_USER_APPOINTMENT = b"i"  # i | user_id(33) | uuid(20) -> locator(16)
CHUNK = 20_000  # appointments per batch
LOG_EVERY = 10.0  # seconds between progress lines


class MigrationError(RuntimeError):
    """The database holds a layout this version cannot read."""


def schema(store: Store) -> int:
    """The layout version of ``store`` (1 for a database that predates the version byte)."""
    raw = store.get(keys.META_SCHEMA)
    if raw is None:
        return 1
    if len(raw) != 1:
        raise MigrationError("unreadable schema version")
    return raw[0]


def migrate(store: Store) -> bool:
    """Brings ``store`` to layout ``keys.SCHEMA``; returns whether there was anything to do."""
    version = schema(store)
    if version == keys.SCHEMA:
        return False
    if version > keys.SCHEMA:
        raise MigrationError(f"the database has layout {version}, newer than this teosd reads "
                             f"({keys.SCHEMA}): run the newer version")  # fmt: skip
    started = time.monotonic()
    users = _number_users(store)
    numbers = _Numbers(store)
    watched, dropped = _move(store, LEGACY_APPOINTMENT, lambda k, v: _watched(numbers, k, v))
    held, dropped_held = _move(store, LEGACY_USER_APPOINTMENT, lambda k, v: _held(numbers, k, v))
    batch = Batch()
    if dropped or dropped_held:
        for key in list(store.iterate_keys(keys.INDEX)):
            batch.delete(key)  # the index and its counts, rebuilt from the new layout when it starts
    batch.delete(keys.META_N_USERS)  # the user count is the index's counter now
    batch.put(keys.META_SCHEMA, bytes([keys.SCHEMA]))
    store.commit(batch)  # synced: every unsynced batch before it is on disk with it
    for prefix in (LEGACY_APPOINTMENT, LEGACY_USER_APPOINTMENT):  # the space of layout 1, given back
        store.compact(prefix, bytes([prefix[0] + 1]))
    if dropped or dropped_held:
        log.warning("migration: entries of no registered user, or undecodable, dropped watched=%d held=%d",
                    dropped, dropped_held)  # fmt: skip
    log.info("database migrated to layout %d users=%d watched=%d held=%d seconds=%.1f",
             keys.SCHEMA, users, watched, held, time.monotonic() - started)  # fmt: skip
    return True


def _number_users(store: Store) -> int:
    """Gives every user without a number the next one; returns how many users there are."""
    raw = store.get(keys.META_NEXT_USERNUM)
    next_usernum = int.from_bytes(raw, "big") if raw is not None else 0
    users = 0
    batch = Batch()
    for user_key, value in store.iterate(keys.USER):
        users += 1
        try:
            user = UserRecord.decode(value)
        except (CodecError, ValueError) as e:
            log.error("migration: undecodable user key=%s error=%s", user_key.hex(), e)
            continue
        if user.usernum is not None:
            continue
        numbered = replace(user, usernum=next_usernum)
        batch.put(user_key, numbered.encode())
        batch.put(keys.user_number(next_usernum), user.user_id.raw)
        next_usernum += 1
        if len(batch) >= CHUNK:
            batch.put(keys.META_NEXT_USERNUM, next_usernum.to_bytes(8, "big"))
            store.commit(batch, sync=False)
            batch = Batch()
    batch.put(keys.META_NEXT_USERNUM, next_usernum.to_bytes(8, "big"))
    store.commit(batch, sync=False)
    return users


class _Numbers:
    """User id -> number, read from the ``u|`` entries once each (a bounded cache: a million users would
    not all be kept)."""

    def __init__(self, store: Store, size: int = 100_000) -> None:
        self._store = store
        self._size = size
        self._known: dict[bytes, int | None] = {}

    def get(self, user_id: bytes) -> int | None:
        if user_id not in self._known:
            if len(self._known) >= self._size:
                self._known.clear()
            raw = self._store.get(keys.USER + user_id)
            try:
                self._known[user_id] = UserRecord.decode(raw).usernum if raw is not None else None
            except (CodecError, ValueError):
                self._known[user_id] = None
        return self._known[user_id]


def _watched(numbers: _Numbers, key: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    """The ``w|`` entry of an ``a|`` entry, or None if it has no registered user or does not decode."""
    try:
        record = AppointmentRecord.decode(value)
    except (CodecError, ValueError) as e:
        log.error("migration: undecodable appointment dropped key=%s error=%s", key.hex(), e)
        return None
    usernum = numbers.get(record.user_id.raw)
    if usernum is None:
        return None
    return keys.appointment(record.locator, usernum), record.encode_body()


def _held(numbers: _Numbers, key: bytes, value: bytes) -> tuple[bytes, bytes] | None:
    """The ``h|`` entry of an ``i|`` entry (``i | user_id | uuid -> locator``), or None."""
    usernum = numbers.get(key[1 : 1 + UserId.SIZE])
    if usernum is None or len(value) != Locator.SIZE:
        return None
    return keys.user_appointment(usernum, Locator(value)), b""


def _move(
    store: Store, prefix: bytes, convert: Callable[[bytes, bytes], tuple[bytes, bytes] | None]
) -> tuple[int, int]:
    """Replaces each entry under ``prefix`` by what ``convert`` makes of it (nothing for None), walking
    them in key order; returns (moved, dropped)."""
    moved = dropped = 0
    last_log = time.monotonic()
    batch = Batch()
    for key, value in store.iterate(prefix):
        batch.delete(key)
        entry = convert(key, value)
        if entry is None:
            dropped += 1
        else:
            batch.put(*entry)
            moved += 1
        if len(batch) >= 2 * CHUNK:
            store.commit(batch, sync=False)
            batch = Batch()
            if time.monotonic() - last_log >= LOG_EVERY:
                last_log = time.monotonic()
                log.info("migrating the database entries=%s moved=%d", prefix.decode(), moved)
    store.commit(batch, sync=False)
    return moved, dropped
