"""The locators under watch, in memory: a block's 8000 lookups cost the same at ten thousand appointments as
at ten million, and only candidates touch LevelDB.

What is kept. For every appointment under watch (every ``a|locator|...`` entry), a 32-bit *fingerprint* of
its locator: ``(int(locator) * K mod 2**128) >> 96`` with ``K`` a random odd 128-bit number drawn once per
database. The top 16 bits pick one of 65536 buckets; each bucket is a sorted ``array('H')`` of the low
16 bits (duplicates allowed: two users may watch one locator). That is 2 bytes per appointment (about 25 MB
at ten million, buckets included). ``candidates(locators)`` answers which of a block's locators *may* be
watched: never a false negative; a false positive (another locator with the same fingerprint) costs one
LevelDB seek, about ``n / 2**32`` per lookup (19 per 4000-tx block at ten million). The key is secret and
mixes all 16 bytes, so a user choosing locators cannot pile them into one bucket or make a block's
locators collide with them (the multiply-shift family is universal).

How it survives restarts and crashes. Every change is staged into the very batch that makes it (an
appointment written or deleted): ``stage`` adds one *journal* record, the change as deltas, to the batch,
and the change is applied in memory only once that batch is written (``apply``). A batch that fails, or
that its builder abandons (the engine retries a block from scratch after any error), is never applied and
leaves no record, so memory and disk cannot drift apart. Deltas commute, so concurrent batches may commit
and be applied in any order. Between a batch's write and its ``apply`` the index may lack an appointment
just added; callers cover that window as they covered it before the index existed (the API looks at the
locator cache again after its write, and the engine thread applies its own changes before the next
block). Removals applied late only cost a LevelDB seek on a stale fingerprint. From time to time the journal
is *folded*: a single folder reads the committed records and the bucket snapshots they touch, writes the new
snapshots and deletes those records in one batch (records of batches still in flight are simply folded next
time). At start the snapshots and the remaining records rebuild the index exactly: about 20 MB of
reads at ten million appointments. The same journal carries named counters (users, trackers, ...), so
status figures are kept in the batch of the change they count and cost nothing to read.

Key layout (all under ``f``; see ``teos.storage.keys``):

    f | m                     -> version(1) | fingerprint key K (16, big-endian) | folded-up-to seq (8 BE)
    f | s | bucket (2 BE)     -> the bucket's fingerprints, sorted, u16 little-endian each
    f | c | name (ascii)      -> i64 BE: a counter's value as of the folded records
    f | j | seq (8 BE)        -> a journal record: u32 n, n x u32 added fingerprints, u32 n, n x u32 removed,
                                 u8 n, n x (u8 length, name, i64 delta); big-endian
"""

from __future__ import annotations

import array
import logging
import secrets
import struct
import sys
import threading
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from teos.storage.store import Batch, Store

log = logging.getLogger(__name__)

PREFIX = b"f"
META = PREFIX + b"m"
SNAPSHOT = PREFIX + b"s"
COUNTER = PREFIX + b"c"
JOURNAL = PREFIX + b"j"
VERSION = 1

BUCKETS = 1 << 16
_MASK128 = (1 << 128) - 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")

FOLD_EVERY = 20_000  # journal records written before the folder is woken
FOLD_CHUNK = 50_000  # records folded per batch


class IndexCorrupt(RuntimeError):
    """The stored index cannot be read (unknown version, corrupt record)."""


def fingerprint(key: int, locator: bytes) -> int:
    """The 32-bit fingerprint of a 16-byte locator under ``key`` (see the module docstring)."""
    return ((int.from_bytes(locator, "big") * key) & _MASK128) >> 96


class FingerprintSet:
    """A multiset of 32-bit fingerprints in 65536 sorted ``array('H')`` buckets. Not thread-safe."""

    __slots__ = ("_buckets", "_size")

    def __init__(self) -> None:
        self._buckets = [array.array("H") for _ in range(BUCKETS)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, h: int) -> None:
        insort(self._buckets[h >> 16], h & 0xFFFF)
        self._size += 1

    def discard(self, h: int) -> bool:
        """Removes one occurrence of ``h``; False if there was none."""
        b = self._buckets[h >> 16]
        low = h & 0xFFFF
        i = bisect_left(b, low)
        if i < len(b) and b[i] == low:
            del b[i]
            self._size -= 1
            return True
        return False

    def count(self, h: int) -> int:
        b = self._buckets[h >> 16]
        low = h & 0xFFFF
        i = bisect_left(b, low)
        n = 0
        while i + n < len(b) and b[i + n] == low:
            n += 1
        return n

    def __contains__(self, h: object) -> bool:
        return isinstance(h, int) and self.count(h) > 0

    def bucket(self, index: int) -> array.array[int]:
        return self._buckets[index]

    def buckets(self) -> list[array.array[int]]:
        """The buckets themselves (for a caller's tight loop; do not modify)."""
        return self._buckets

    def load_bucket(self, index: int, data: bytes) -> None:
        """Replaces bucket ``index`` with its stored form (sorted u16 little-endian, as written by
        ``encode_bucket``; LevelDB's checksums guard it, so the order is not checked again)."""
        if len(data) % 2:
            raise IndexCorrupt(f"bucket {index} has an odd length")
        b = decode_bucket(data)
        self._size += len(b) - len(self._buckets[index])
        self._buckets[index] = b

    def fingerprints(self) -> list[int]:
        """Every fingerprint (with repeats), sorted: for checks against a full walk."""
        return [(i << 16) | low for i, b in enumerate(self._buckets) for low in b]


def decode_bucket(data: bytes) -> array.array[int]:
    b = array.array("H")
    b.frombytes(data)
    if sys.byteorder == "big":
        b.byteswap()
    return b


def encode_bucket(b: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        b = array.array("H", b)
        b.byteswap()
    return b.tobytes()


@dataclass(frozen=True)
class Delta:
    """One batch's changes: fingerprints added and removed, counter deltas."""

    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()

    def encode(self) -> bytes:
        parts = [_U32.pack(len(self.added)), *(_U32.pack(h) for h in self.added),
                 _U32.pack(len(self.removed)), *(_U32.pack(h) for h in self.removed),
                 bytes([len(self.counts)])]  # fmt: skip
        for name, value in self.counts:
            raw = name.encode("ascii")
            parts += [bytes([len(raw)]), raw, _I64.pack(value)]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Delta:
        try:
            pos = 0
            (n,) = _U32.unpack_from(data, pos)
            added = struct.unpack_from(f">{n}I", data, pos + 4)
            pos += 4 + 4 * n
            (n,) = _U32.unpack_from(data, pos)
            removed = struct.unpack_from(f">{n}I", data, pos + 4)
            pos += 4 + 4 * n
            counts = []
            n = data[pos]
            pos += 1
            for _ in range(n):
                size = data[pos]
                name = data[pos + 1 : pos + 1 + size].decode("ascii")
                (value,) = _I64.unpack_from(data, pos + 1 + size)
                counts.append((name, value))
                pos += 1 + size + 8
        except (struct.error, IndexError, UnicodeDecodeError) as e:
            raise IndexCorrupt(f"bad journal record: {e}") from None
        if pos != len(data):
            raise IndexCorrupt("bad journal record: trailing bytes")
        return cls(tuple(added), tuple(removed), tuple(counts))


def _journal_key(seq: int) -> bytes:
    return JOURNAL + _U64.pack(seq)


def _snapshot_key(bucket: int) -> bytes:
    return SNAPSHOT + bucket.to_bytes(2, "big")


def _counter_key(name: str) -> bytes:
    return COUNTER + name.encode("ascii")


def _encode_meta(key: int, folded: int) -> bytes:
    return bytes([VERSION]) + key.to_bytes(16, "big") + _U64.pack(folded)


class LocatorIndex:
    """The persisted index and counters (see the module docstring).

    ``start(existing, initial_counts)`` loads it; on a database that has none yet it is built once from
    ``existing()`` (the locator of every watched appointment, one per ``a|`` entry) and
    ``initial_counts()``, and stored. ``stage`` / ``apply`` are called by whoever writes appointments,
    with the batch they commit. ``candidates`` is what the Watcher asks. ``stop`` folds the journal so the
    next start reads snapshots only.
    """

    def __init__(self, store: Store, fold_every: int = FOLD_EVERY) -> None:
        self._store = store
        self._fold_every = fold_every
        self._lock = threading.Lock()  # the set, the counters, the sequence
        self._fold_lock = threading.Lock()  # one folder at a time
        self._set = FingerprintSet()
        self._counts: dict[str, int] = {}
        self._key = 1
        self._seq = 1
        self._unfolded = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._folder: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(
        self,
        existing: Callable[[], Iterable[bytes]] = lambda: (),
        initial_counts: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        if self._folder is not None:
            return
        meta = self._store.get(META)
        if meta is None:
            self._build(existing(), initial_counts())
        else:
            self._load(meta)
        self._stopping.clear()
        self._folder = threading.Thread(target=self._run_folder, name="index-folder", daemon=True)
        self._folder.start()

    def stop(self, fold: bool = True) -> None:
        """Stops the folder and, with ``fold``, folds what is left (the next start reads snapshots only)."""
        if self._folder is None:
            return
        self._stopping.set()
        self._wake.set()
        self._folder.join()
        self._folder = None
        if fold:
            self.fold()

    def _build(self, locators: Iterable[bytes], counts: Mapping[str, int]) -> None:
        key = secrets.randbits(128) | 1
        fresh = FingerprintSet()
        n = 0
        for locator in locators:
            fresh.add(fingerprint(key, locator))
            n += 1
        batch = Batch()
        for i in range(BUCKETS):
            if fresh.bucket(i):
                batch.put(_snapshot_key(i), encode_bucket(fresh.bucket(i)))
        for name, value in counts.items():
            batch.put(_counter_key(name), _I64.pack(value))
        batch.put(META, _encode_meta(key, 0))
        self._store.commit(batch)
        with self._lock:
            self._key, self._set, self._counts, self._seq = key, fresh, dict(counts), 1
        log.info("locator index built appointments=%d", n)

    def _load(self, meta: bytes) -> None:
        if len(meta) != 25 or meta[0] != VERSION:
            raise IndexCorrupt(f"unknown locator index version {meta[:1].hex()}")
        key = int.from_bytes(meta[1:17], "big")
        folded = _U64.unpack(meta[17:25])[0]
        fresh = FingerprintSet()
        for k, v in self._store.iterate(SNAPSHOT):
            fresh.load_bucket(int.from_bytes(k[2:], "big"), v)
        counts = {k[2:].decode("ascii"): _I64.unpack(v)[0] for k, v in self._store.iterate(COUNTER)}
        seq = folded
        records = 0
        for k, v in self._store.iterate(JOURNAL):
            seq = max(seq, _U64.unpack(k[2:])[0])
            delta = Delta.decode(v)
            for h in delta.added:
                fresh.add(h)
            for h in delta.removed:
                if not fresh.discard(h):
                    log.error("locator index: journal removes an absent fingerprint fp=%08x", h)
            for name, value in delta.counts:
                counts[name] = counts.get(name, 0) + value
            records += 1
        with self._lock:
            self._key, self._set, self._counts, self._seq = key, fresh, counts, seq + 1
            self._unfolded = records
        log.info("locator index loaded appointments=%d journal_records=%d", len(fresh), records)

    # -- reads -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._set)

    def count(self, name: str) -> int:
        """A counter's current value (0 if never counted)."""
        return self._counts.get(name, 0)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def fingerprint(self, locator: bytes) -> int:
        return fingerprint(self._key, locator)

    def candidates(self, locators: Iterable[bytes]) -> list[bytes]:
        """The locators (16 raw bytes each) that may be under watch: a superset of those that are."""
        key = self._key
        out: list[bytes] = []
        append = out.append
        with self._lock:
            buckets = self._set.buckets()
            for locator in locators:
                h = ((int.from_bytes(locator, "big") * key) & _MASK128) >> 96
                b = buckets[h >> 16]
                if b:
                    low = h & 0xFFFF
                    i = bisect_left(b, low)
                    if i < len(b) and b[i] == low:
                        append(locator)
        return out

    def fingerprints(self) -> list[int]:
        with self._lock:
            return self._set.fingerprints()

    # -- writes ----------------------------------------------------------------------------------------

    def stage(
        self,
        batch: Batch,
        added: Sequence[bytes] = (),
        removed: Sequence[bytes] = (),
        counts: Mapping[str, int] | None = None,
    ) -> Delta:
        """Adds the change's journal record to ``batch``; call ``apply`` with the result once it is written.

        ``added``/``removed`` are the locators of ``a|`` entries the batch writes (new ones only, not
        updates of an existing entry) and deletes (existing ones only). ``counts`` are counter deltas.
        """
        counted = tuple((name, value) for name, value in (counts or {}).items() if value)
        key = self._key
        delta = Delta(tuple(fingerprint(key, loc) for loc in added),
                      tuple(fingerprint(key, loc) for loc in removed), counted)  # fmt: skip
        if delta.added or delta.removed or delta.counts:
            with self._lock:
                seq = self._seq
                self._seq += 1
            batch.put(_journal_key(seq), delta.encode())
        return delta

    def apply(self, delta: Delta) -> None:
        """Applies in memory a change whose batch has been written."""
        missing = []
        with self._lock:
            for h in delta.added:
                self._set.add(h)
            for h in delta.removed:
                if not self._set.discard(h):
                    missing.append(h)
            for name, value in delta.counts:
                self._counts[name] = self._counts.get(name, 0) + value
            if delta.added or delta.removed or delta.counts:
                self._unfolded += 1
                if self._unfolded >= self._fold_every:
                    self._wake.set()
        for h in missing:
            log.error("locator index: removal of an appointment it does not hold fp=%08x", h)

    # -- folding ---------------------------------------------------------------------------------------

    def _run_folder(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.fold()
            except Exception:  # the journal only grows meanwhile; the next wake-up tries again
                log.exception("locator index: folding the journal failed")

    def fold(self) -> int:
        """Folds the committed journal records into the snapshots; returns how many were folded."""
        total = 0
        with self._fold_lock:
            while True:
                records: list[tuple[bytes, bytes]] = []
                for item in self._store.iterate(JOURNAL):
                    records.append(item)
                    if len(records) >= FOLD_CHUNK:
                        break
                if not records:
                    return total
                self._fold(records)
                total += len(records)
                with self._lock:
                    self._unfolded = max(0, self._unfolded - len(records))
                if len(records) < FOLD_CHUNK:
                    return total

    def _fold(self, records: list[tuple[bytes, bytes]]) -> None:
        changes: dict[int, tuple[list[int], list[int]]] = {}
        counts: dict[str, int] = {}
        last = 0
        for k, v in records:
            last = max(last, _U64.unpack(k[2:])[0])
            delta = Delta.decode(v)
            for h in delta.added:
                changes.setdefault(h >> 16, ([], []))[0].append(h & 0xFFFF)
            for h in delta.removed:
                changes.setdefault(h >> 16, ([], []))[1].append(h & 0xFFFF)
            for name, value in delta.counts:
                counts[name] = counts.get(name, 0) + value
        batch = Batch()
        for index, (adds, removes) in changes.items():
            stored = self._store.get(_snapshot_key(index))
            bucket = decode_bucket(stored) if stored is not None else array.array("H")
            for low in adds:
                insort(bucket, low)
            for low in removes:
                i = bisect_left(bucket, low)
                if i < len(bucket) and bucket[i] == low:
                    del bucket[i]
                else:
                    log.error("locator index: folding removes an absent fingerprint fp=%08x",
                              (index << 16) | low)  # fmt: skip
            if bucket:
                batch.put(_snapshot_key(index), encode_bucket(bucket))
            else:
                batch.delete(_snapshot_key(index))
        for name, value in counts.items():
            raw = self._store.get(_counter_key(name))
            batch.put(_counter_key(name), _I64.pack((_I64.unpack(raw)[0] if raw else 0) + value))
        meta = self._store.get(META)
        assert meta is not None
        folded = max(_U64.unpack(meta[17:25])[0], last)
        batch.put(META, meta[:17] + _U64.pack(folded))
        for k, _ in records:
            batch.delete(k)
        # Unsynced: a fold lost in a crash leaves the records it read, which the next start replays.
        self._store.commit(batch, sync=False)
