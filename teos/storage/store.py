"""LevelDB (plyvel) store with group commit.

The database is the source of truth. Writes are made as atomic batches; ``commit`` returns only once the
batch is on disk (synced). Concurrent committers share one synced write: the first to arrive becomes the
leader, takes every batch queued so far, writes them as one LevelDB batch with ``sync=True`` and wakes the
others. Durability therefore costs one fsync per group, not per request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import plyvel

log = logging.getLogger(__name__)


# LevelDB's cache of uncompressed blocks (anonymous memory once filled). The Watcher reads LevelDB only for
# the index's candidates, and the API reads a few keys per request; the OS's page cache holds the files.
# 8 MiB instead of 32 keeps the tower within ~100 MB at ten million appointments.
BLOCK_CACHE_BYTES = 8 << 20


class StorageError(RuntimeError):
    """The database could not be opened or written."""


class Batch:
    """An ordered list of puts and deletes, applied atomically by ``Store.commit``.

    ``after_commit(fn)`` registers what to do in memory once the batch is written (the locator index and
    its counters, ``teos.storage.index``): ``Store`` calls each function, in order, after a successful
    write and before ``commit`` (or ``Ticket.wait``) returns; a batch that fails, or that is never
    committed, runs none of them.
    """

    __slots__ = ("_after", "ops")

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []
        self._after: list[Callable[[], None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def extend(self, other: Batch) -> None:
        self.ops.extend(other.ops)
        self._after.extend(other._after)

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def committed(self) -> None:
        """Runs the ``after_commit`` functions (once); the store calls it after the write."""
        after, self._after = self._after, []
        for fn in after:
            try:
                fn()
            except Exception:  # the write stands; what failed in memory is logged, never raised
                log.exception("after-commit step failed")

    def __len__(self) -> int:
        return len(self.ops)


class _Group:
    """Batches written together by one synced LevelDB write. Its members wait on its own condition (on
    the store's lock), so a finished write wakes only the callers it concerns, and one caller of the next
    group to lead it."""

    __slots__ = ("batches", "done", "error", "written")

    def __init__(self, lock: threading.Lock) -> None:
        self.batches: list[Batch] = []
        self.written = threading.Condition(lock)
        self.done = False
        self.error: BaseException | None = None


class Ticket:
    """A batch queued with ``Store.submit``; ``wait()`` returns once it is on disk."""

    __slots__ = ("_batch", "_group", "_store")

    def __init__(self, store: Store, group: _Group, batch: Batch) -> None:
        self._store = store
        self._group = group
        self._batch = batch

    def wait(self) -> None:
        """Blocks until the batch is synced; raises StorageError if its write failed."""
        self._store._wait(self._group)
        self._batch.committed()


class Store:
    """A LevelDB database at ``path``. ``open()`` before use, ``close()`` when done."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: plyvel.DB | None = None
        self._lock = threading.Lock()
        self._group = _Group(self._lock)  # the group accepting batches
        self._writing = False  # a group is being written (by one of its callers, its leader)
        self._idle = threading.Condition(self._lock)  # notified when a write ends (for close)

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        if self._db is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = plyvel.DB(
                str(self.path), create_if_missing=True, bloom_filter_bits=10, lru_cache_size=BLOCK_CACHE_BYTES
            )
        except plyvel.Error as e:  # e.g. another process holds the lock
            raise StorageError(f"cannot open database at {self.path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            while self._writing:
                self._idle.wait()
            db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def db(self) -> plyvel.DB:
        if self._db is None:
            raise StorageError("database is not open")
        return self._db

    # -- reads -----------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""
        with self.db.iterator(prefix=prefix) as it:
            yield from it

    def iterate_range(self, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) with start <= key < stop, in key order."""
        with self.db.iterator(start=start, stop=stop) as it:
            yield from it

    def iterate_keys(self, prefix: bytes) -> Iterator[bytes]:
        """Every key starting with ``prefix``, in key order (values are never read)."""
        with self.db.iterator(prefix=prefix, include_value=False) as it:
            yield from it

    def compact(self, start: bytes = b"", stop: bytes = b"\xff") -> None:
        """Rewrites the keys in [start, stop) (by default all: every key starts with an ASCII prefix,
        keys.py) so that deleted and overwritten values leave its files (LevelDB otherwise keeps them in
        its log and tables until it compacts them on its own): benchmarks measure a settled database, and
        a migration gives back the space of what it deleted. The bounds are explicit: plyvel passes an
        empty range, not the whole database, when none is given."""
        self.db.compact_range(start=start, stop=stop)

    def count(self, prefix: bytes) -> int:
        """Number of keys starting with ``prefix`` (walks keys only, never values)."""
        with self.db.iterator(prefix=prefix, include_value=False) as it:
            return sum(1 for _ in it)

    def iterate_prefixes(self, prefixes: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under each of ``prefixes``, prefixes in sorted order, through one iterator
        that seeks from prefix to prefix (with its blocks cached): cheaper than an iterator per prefix
        when the prefixes are many and each holds few keys, as the Watcher's per-block lookups are."""
        it = self.db.raw_iterator(fill_cache=True)
        try:
            for prefix in sorted(set(prefixes)):
                it.seek(prefix)
                while it.valid():
                    key = it.key()
                    if not key.startswith(prefix):
                        break
                    yield key, it.value()
                    it.next()
        finally:
            it.close()

    def has_prefix(self, prefix: bytes) -> bool:
        with self.db.iterator(prefix=prefix, include_value=False) as it:
            for _ in it:
                return True
        return False

    # -- writes ----------------------------------------------------------------------------------

    def commit(self, batch: Batch, sync: bool = True) -> None:
        """Applies ``batch`` atomically; with ``sync`` returns only once it is on disk.

        Concurrent callers are grouped into one synced LevelDB write (group commit). Raises
        StorageError if the write failed (nothing of the batch is then applied).
        """
        if not sync:
            self._write([batch], sync=False)
            batch.committed()
            return
        self.submit(batch).wait()

    def submit(self, batch: Batch) -> Ticket:
        """Queues ``batch`` for the next synced group write and returns at once.

        Batches are written in the order they were submitted, so a caller that must order its writes
        (e.g. a counter) holds its own lock only around ``submit`` and calls ``Ticket.wait`` outside it.
        """
        with self._lock:
            group = self._group
            group.batches.append(batch)
            return Ticket(self, group, batch)

    def _wait(self, group: _Group) -> None:
        """Returns once ``group`` is written. The first of its callers to find no write going on leads it:
        it takes the group (later batches start the next one), writes it synced, and wakes the group's
        other callers and one caller of the next group, who leads that one."""
        with self._lock:
            while not group.done:
                if self._writing:
                    group.written.wait()
                    continue
                self._writing = True
                self._group = _Group(self._lock)  # our group is the one accepting batches: close it
                self._lock.release()
                try:
                    self._write(group.batches, sync=True)
                except BaseException as e:  # handed to every member of the group
                    group.error = e
                finally:
                    self._lock.acquire()
                self._writing = False
                group.done = True
                group.written.notify_all()
                self._group.written.notify()  # a caller of the next group, if any waits, leads it
                self._idle.notify_all()
        if group.error is not None:
            raise StorageError(f"database write failed: {group.error}") from group.error

    def _write(self, batches: list[Batch], sync: bool) -> None:
        with self.db.write_batch(transaction=True, sync=sync) as wb:
            for batch in batches:
                for key, value in batch.ops:
                    if value is None:
                        wb.delete(key)
                    else:
                        wb.put(key, value)
