"""Appointments under watch and users' appointment lists: the one place that reads and writes ``w|``, ``h|``
and ``r|`` entries, and keeps the locator index (``teos.storage.index``) in step with ``w|``.

Layout (``teos.storage.keys``): an appointment under watch is ``w | locator | usernum`` holding its body
(``AppointmentRecord.encode_body``); a user's appointments, watched or responded, are ``h | usernum |
locator``; ``r | usernum`` says whose number it is. The Watcher looks in LevelDB only for the locators the
index names, so an ``w|`` entry written without its index entry would never be found (and an index entry
left behind would cost a seek per block that mentions its locator): every writer of ``w|`` entries goes
through ``put_watched`` and ``delete_watched``, in the batch that makes the change; the index applies it
once that batch is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from common.types import Locator, UserId
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, CodecError, UserRecord
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


class KeyReader(Protocol):
    """Point reads (``Store`` satisfies this and the two below)."""

    def get(self, key: bytes) -> bytes | None: ...


class SeekReader(KeyReader, Protocol):
    def iterate_prefixes(self, prefixes: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]: ...


class Reader(KeyReader, Protocol):
    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...


# -- under watch ---------------------------------------------------------------------------------------


def put_watched(
    batch: Batch, record: AppointmentRecord, usernum: int, index: IndexJournal, *, new: bool
) -> None:
    """Adds to ``batch`` the appointment under watch. ``new``: no ``w|`` entry exists for its locator and
    user yet (an update of a watched appointment is not new: the index already holds it)."""
    batch.put(keys.appointment(record.locator, usernum), record.encode_body())
    if new:
        index.stage(batch, added=[record.locator.raw])


def delete_watched(batch: Batch, locator: Locator, usernum: int, index: IndexJournal) -> None:
    """Adds to ``batch`` the removal of one appointment that is under watch (its ``w|`` entry exists)."""
    batch.delete(keys.appointment(locator, usernum))
    index.stage(batch, removed=[locator.raw])


def get_watched(store: KeyReader, locator: Locator, user: UserRecord) -> AppointmentRecord | None:
    """``user``'s appointment under watch at ``locator``, or None."""
    if user.usernum is None:
        return None
    raw = store.get(keys.appointment(locator, user.usernum))
    return AppointmentRecord.decode_body(raw, locator, user.user_id) if raw is not None else None


def is_watched(store: KeyReader, locator: Locator, usernum: int) -> bool:
    return store.get(keys.appointment(locator, usernum)) is not None


def watched_at(
    store: SeekReader, locators: Iterable[bytes]
) -> Iterator[tuple[bytes, AppointmentRecord | None, int]]:
    """Every appointment under watch at each of ``locators`` (16 raw bytes each), as (key, record, user
    number): the locators' ``w|`` prefixes seeked in sorted order through one iterator. An entry that
    does not decode, or whose user number names nobody, comes with record None (its caller logs it)."""
    user_ids: dict[int, UserId | None] = {}
    for key, value in store.iterate_prefixes(keys.APPOINTMENT + loc for loc in locators):
        try:
            locator, usernum = keys.parse_appointment(key)
        except ValueError:
            yield key, None, -1
            continue
        if usernum not in user_ids:
            user_ids[usernum] = user_of_number(store, usernum)
        user_id = user_ids[usernum]
        try:
            record = AppointmentRecord.decode_body(value, locator, user_id) if user_id is not None else None
        except (CodecError, ValueError):
            record = None
        yield key, record, usernum


# -- users ---------------------------------------------------------------------------------------------


def usernum_of(store: KeyReader, user_id: UserId) -> int | None:
    """The number of a registered user, or None."""
    raw = store.get(keys.user(user_id))
    if raw is None:
        return None
    try:
        return UserRecord.decode(raw).usernum
    except (CodecError, ValueError):
        return None


def user_of_number(store: KeyReader, usernum: int) -> UserId | None:
    raw = store.get(keys.user_number(usernum))
    return UserId(raw) if raw is not None and len(raw) == UserId.SIZE else None


def number_user(batch: Batch, usernum: int, user_id: UserId) -> None:
    batch.put(keys.user_number(usernum), user_id.raw)


def forget_number(batch: Batch, usernum: int) -> None:
    batch.delete(keys.user_number(usernum))


def holds(store: KeyReader, usernum: int, locator: Locator) -> bool:
    """Whether the user holds an appointment (watched or responded) at ``locator``."""
    return store.get(keys.user_appointment(usernum, locator)) is not None


def add_held(batch: Batch, usernum: int, locator: Locator) -> None:
    batch.put(keys.user_appointment(usernum, locator), b"")


def remove_held(batch: Batch, usernum: int, locator: Locator) -> None:
    batch.delete(keys.user_appointment(usernum, locator))


def held(store: Reader, usernum: int) -> list[Locator]:
    """The locators of the user's appointments (watched or responded), in locator order."""
    prefix = keys.user_appointments(usernum)
    return [keys.locator_of_user_appointment_key(k) for k, _ in store.iterate(prefix)]


def find_watched(store: KeyReader, user_id: UserId, locator: Locator) -> AppointmentRecord | None:
    """The appointment ``user_id`` has under watch at ``locator``, or None (also for an unknown user)."""
    usernum = usernum_of(store, user_id)
    if usernum is None:
        return None
    raw = store.get(keys.appointment(locator, usernum))
    return AppointmentRecord.decode_body(raw, locator, user_id) if raw is not None else None


def user_holds(store: KeyReader, user_id: UserId, locator: Locator) -> bool:
    """Whether ``user_id`` holds an appointment (watched or responded) at ``locator``."""
    usernum = usernum_of(store, user_id)
    return usernum is not None and holds(store, usernum, locator)
