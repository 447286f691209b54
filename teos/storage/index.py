"""The locators under watch, in memory: a block's 8000 lookups cost the same at ten thousand appointments as
at ten million, and only candidates touch LevelDB.

What is kept. For every appointment under watch (every ``w|locator|...`` entry), a 48-bit *fingerprint* of
its locator: ``(int(locator) * K mod 2**128) >> 80`` with ``K`` a random odd 128-bit number drawn once per
database. The top 16 bits pick one of 65536 buckets; each bucket is a sorted ``array('I')`` of the low
32 bits (duplicates allowed: two users may watch one locator). That is 4 bytes per appointment (about 44 MB
at ten million, buckets included). In front of the buckets sits a *summary*: one bit per value of a
fingerprint's top 25 bits (4 MB), set while some fingerprint has them. Most lookups stop at that bit (at
ten million, three in four), so a lookup costs one memory access where the bucket's search costs several,
and a block's 8000 lookups cost nearly the same at every size (``bench/engine_bench.py``).

``candidates(locators)`` answers which of a block's locators *may* be watched: never a false negative; a
false positive (another locator with the same fingerprint) costs one LevelDB seek, about ``n / 2**48`` per
lookup (0.0003 per 4000-tx block at ten million). Why 48 bits: a seek at ten million appointments costs a
millisecond or more (it reads a block in every level of LevelDB), and with 32-bit fingerprints (2 bytes
stored) the 19 false positives of each block cost more than the rest of the block together. The key is
secret and mixes all 16 bytes, so a user choosing locators cannot pile them into one bucket or make a
block's locators collide with them (the multiply-shift family is universal).

How it survives restarts and crashes. Every change is staged into the very batch that makes it (an
appointment written or deleted): ``stage`` adds one *journal* record, the change as deltas, to the batch,
and the change is applied in memory only once that batch is written (``Batch.after_commit``). A batch that
fails, or that its builder abandons (the engine retries a block from scratch after any error), is never
applied and leaves no record, so memory and disk cannot drift apart. Deltas commute, so concurrent batches
may commit and be applied in any order. Between a batch's write and its ``apply`` the index may lack an
appointment just added; callers cover that window as they covered it before the index existed (the API looks
at the locator cache again after its write, and the engine thread applies its own changes before the next
block). Removals applied late only cost a LevelDB seek on a stale fingerprint. From time to time the journal
is *folded*: a single folder reads the committed records and the bucket snapshots they touch, writes the new
snapshots and deletes those records in one batch (records of batches still in flight are simply folded next
time). At start the snapshots and the remaining records rebuild the index exactly: about 20 MB of reads at
ten million appointments. The same journal carries named counters (users, trackers, ...), so status figures
are kept in the batch of the change they count and cost nothing to read.

Key layout (all under ``f``; see ``teos.storage.keys``):

    f | m                     -> version(1) | fingerprint key K (16, big-endian) | folded-up-to seq (8 BE)
    f | s | bucket (2 BE)     -> the bucket's summary (64 bytes: its 512 bits of the summary), then its
                                 fingerprints' low 32 bits, sorted, u32 little-endian each
    f | c | name (ascii)      -> i64 BE: a counter's value as of the folded records
    f | legacy                -> b"": the ``l|`` markers and ``m|n_appointments`` of an older database are
                                 still to be deleted (written with the build, deleted once they are)
    f | j | seq (8 BE)        -> a journal record: u32 n, n x u64 added fingerprints, u32 n, n x u64 removed,
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from teos.storage import keys
from teos.storage.store import Batch, Store

log = logging.getLogger(__name__)

PREFIX = keys.INDEX
META = PREFIX + b"m"
SNAPSHOT = PREFIX + b"s"
COUNTER = PREFIX + b"c"
JOURNAL = PREFIX + b"j"
LEGACY = PREFIX + b"legacy"  # present while what the index replaces is still to be deleted
VERSION = 2  # 1: snapshots without the summary (rebuilt from the key layout at start)

BUCKETS = 1 << 16
LOW_BITS = 32  # stored per entry, below the 16 bits of the bucket
_LOW = (1 << LOW_BITS) - 1
_SHIFT = 128 - 16 - LOW_BITS
_TYPE = "I"
SUMMARY_BITS = 9  # of the low part, per bucket: 512 bits, 64 bytes
_SEGMENT = 1 << (SUMMARY_BITS - 3)
_SUMMARY_SHIFT = LOW_BITS - SUMMARY_BITS  # fingerprint >> this: its summary bit (top 25 bits)
assert array.array(_TYPE).itemsize == 4
_MASK128 = (1 << 128) - 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")

# The counters the tower keeps (``count(name)``), each changed in the batch of the change it counts.
USERS = "users"  # registered users (``u|`` entries): the Gatekeeper
APPOINTMENTS = "appointments"  # appointments held for users, watched or responded (``h|``): the Gatekeeper
TRACKERS = "trackers"  # penalties followed (``t|``): the Responder
# (appointments under watch, ``w|`` entries, are ``len(index)``.)

FOLD_EVERY = 20_000  # journal records written before the folder is woken
FOLD_CHUNK = 50_000  # records folded per batch


class IndexCorrupt(RuntimeError):
    """The stored index cannot be read (unknown version, corrupt record)."""


def fingerprint(key: int, locator: bytes) -> int:
    """The 48-bit fingerprint of a 16-byte locator under ``key`` (see the module docstring)."""
    return ((int.from_bytes(locator, "big") * key) & _MASK128) >> _SHIFT


class FingerprintSet:
    """A multiset of 48-bit fingerprints in 65536 sorted ``array('I')`` buckets, and their summary (a bit
    per value of the top 25 bits, set while a fingerprint has them). Not thread-safe."""

    __slots__ = ("_buckets", "_size", "_summary")

    def __init__(self) -> None:
        self._buckets = [array.array(_TYPE) for _ in range(BUCKETS)]
        self._summary = bytearray(BUCKETS * _SEGMENT)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, h: int) -> None:
        insort(self._buckets[h >> LOW_BITS], h & _LOW)
        t = h >> _SUMMARY_SHIFT
        self._summary[t >> 3] |= 1 << (t & 7)
        self._size += 1

    def discard(self, h: int) -> bool:
        """Removes one occurrence of ``h``; False if there was none. Its summary bit is cleared unless
        another fingerprint shares it: those sit next to it in the sorted bucket."""
        b = self._buckets[h >> LOW_BITS]
        low = h & _LOW
        i = bisect_left(b, low)
        if i < len(b) and b[i] == low:
            del b[i]
            self._size -= 1
            top = low >> _SUMMARY_SHIFT
            if not (
                (i > 0 and b[i - 1] >> _SUMMARY_SHIFT == top)
                or (i < len(b) and b[i] >> _SUMMARY_SHIFT == top)
            ):
                t = h >> _SUMMARY_SHIFT
                self._summary[t >> 3] &= ~(1 << (t & 7)) & 0xFF
            return True
        return False

    def count(self, h: int) -> int:
        b = self._buckets[h >> LOW_BITS]
        low = h & _LOW
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

    def summary(self) -> bytearray:
        """The summary itself (for a caller's tight loop; do not modify): fingerprint ``h``'s bit is bit
        ``t & 7`` of byte ``t >> 3``, with ``t = h >> 23``."""
        return self._summary

    def load_bucket(self, index: int, data: bytes) -> None:
        """Replaces bucket ``index`` with its stored form (``encode_snapshot``: its summary segment, then
        sorted u32 little-endian; LevelDB's checksums guard it, so neither is checked again)."""
        if len(data) < _SEGMENT or (len(data) - _SEGMENT) % 4:
            raise IndexCorrupt(f"bucket {index} is not a summary and a whole number of entries")
        b = decode_bucket(data[_SEGMENT:])
        self._size += len(b) - len(self._buckets[index])
        self._buckets[index] = b
        self._summary[index * _SEGMENT : (index + 1) * _SEGMENT] = data[:_SEGMENT]

    def summary_is_exact(self) -> bool:
        """Whether the summary is what the buckets say (for tests: it is kept, not recomputed)."""
        expected = bytearray(len(self._summary))
        for i, b in enumerate(self._buckets):
            if b:
                expected[i * _SEGMENT : (i + 1) * _SEGMENT] = bucket_summary(b)
        return expected == self._summary

    def fingerprints(self) -> list[int]:
        """Every fingerprint (with repeats), sorted: for checks against a full walk."""
        return [(i << LOW_BITS) | low for i, b in enumerate(self._buckets) for low in b]


def decode_bucket(data: bytes) -> array.array[int]:
    b = array.array(_TYPE)
    b.frombytes(data)
    if sys.byteorder == "big":
        b.byteswap()
    return b


def encode_bucket(b: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        b = array.array(_TYPE, b)
        b.byteswap()
    return b.tobytes()


def bucket_summary(b: Iterable[int]) -> bytes:
    """A bucket's 64 bytes of the summary, from its fingerprints' low parts."""
    segment = bytearray(_SEGMENT)
    for low in b:
        t = low >> _SUMMARY_SHIFT
        segment[t >> 3] |= 1 << (t & 7)
    return bytes(segment)


def encode_snapshot(b: array.array[int]) -> bytes:
    """A bucket as stored: its summary segment, then its entries (``FingerprintSet.load_bucket``)."""
    return bucket_summary(b) + encode_bucket(b)


@dataclass(frozen=True)
class Delta:
    """One batch's changes: fingerprints added and removed, counter deltas."""

    added: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()

    def encode(self) -> bytes:
        parts = [_U32.pack(len(self.added)), *(_U64.pack(h) for h in self.added),
                 _U32.pack(len(self.removed)), *(_U64.pack(h) for h in self.removed),
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
            added = struct.unpack_from(f">{n}Q", data, pos + 4)
            pos += 4 + 8 * n
            (n,) = _U32.unpack_from(data, pos)
            removed = struct.unpack_from(f">{n}Q", data, pos + 4)
            pos += 4 + 8 * n
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


def _drop_stored(store: Store) -> None:
    """Deletes the stored index, its journal and its counters (to be built again from the key layout)."""
    batch = Batch()
    for key in store.iterate_keys(PREFIX):
        if key != LEGACY:
            batch.delete(key)
    store.commit(batch)


def _watched_locators(store: Store) -> Iterator[bytes]:
    """The locator of every ``w|`` entry (one per appointment under watch)."""
    for key in store.iterate_keys(keys.APPOINTMENT):
        yield key[1:17]


def _layout_counts(store: Store) -> dict[str, int]:
    """The counters of a database that predates them, counted once from its keys."""
    return {
        USERS: store.count(keys.USER),
        APPOINTMENTS: store.count(keys.USER_APPOINTMENT),
        TRACKERS: store.count(keys.TRACKER),
    }


def _drop_legacy(store: Store, chunk: int = 100_000) -> None:
    """Deletes what the index replaces: the ``l|`` markers and the ``m|n_appointments`` counter, then the
    ``f|legacy`` flag that says this is still to do (so a crash midway does it again at the next start,
    and a start without the flag never scans for markers: a range of deleted keys is slow to walk)."""
    batch = Batch()
    dropped = 0
    for key in store.iterate_keys(keys.LOCATOR_MARKER):
        batch.delete(key)
        dropped += 1
        if len(batch) >= chunk:
            store.commit(batch, sync=False)
            batch = Batch()
    batch.delete(keys.META_N_APPOINTMENTS)
    batch.delete(LEGACY)
    store.commit(batch)
    if dropped:
        store.compact(keys.LOCATOR_MARKER, bytes([keys.LOCATOR_MARKER[0] + 1]))  # their space, given back
        log.info("legacy locator markers deleted n=%d", dropped)


class LocatorIndex:
    """The persisted index and counters (see the module docstring).

    ``start(existing, initial_counts)`` loads it; on a database that has none yet it is built once from
    ``existing()`` (the locator of every watched appointment, one per ``w|`` entry) and
    ``initial_counts()``, and stored. ``stage`` / ``apply`` are called by whoever writes appointments,
    with the batch they commit (the batch applies it once written). ``candidates`` is what the Watcher
    asks. ``stop`` folds the journal so the
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
        existing: Callable[[], Iterable[bytes]] | None = None,
        initial_counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """Loads the index, or builds it on a database that has none (by default from the key layout:
        the ``w|`` entries, and the counts of ``u|``, ``h|`` and ``t|``; the legacy ``l|`` markers and
        ``m|n_appointments`` counter it replaces are then deleted)."""
        if self._folder is not None:
            return
        meta = self._store.get(META)
        if meta is not None and meta[:1] and meta[0] < VERSION:
            log.info("locator index of an earlier format: rebuilt version=%d", meta[0])
            _drop_stored(self._store)
            meta = None
        if meta is None:
            self._build(
                existing() if existing is not None else _watched_locators(self._store),
                initial_counts() if initial_counts is not None else _layout_counts(self._store),
            )
        else:
            self._load(meta)
        if self._store.get(LEGACY) is not None:  # written with the build, deleted once this is done
            _drop_legacy(self._store)
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
                batch.put(_snapshot_key(i), encode_snapshot(fresh.bucket(i)))
        for name, value in counts.items():
            batch.put(_counter_key(name), _I64.pack(value))
        batch.put(META, _encode_meta(key, 0))
        batch.put(LEGACY, b"")
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
                    log.error("locator index: journal removes an absent fingerprint fp=%012x", h)
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
        """The locators that may be under watch: a superset of those that are. Each is 16 raw bytes,
        optionally after a one-byte tag (the block locators' dialect code): only the last 16 bytes count,
        since the product is taken mod 2**128. This is the Watcher's hot loop (8000 calls a block)."""
        key, mask, shift, low_bits, low_mask = self._key, _MASK128, _SHIFT, LOW_BITS, _LOW
        summary_shift = _SUMMARY_SHIFT
        from_bytes, bisect = int.from_bytes, bisect_left
        out: list[bytes] = []
        append = out.append
        with self._lock:
            buckets, summary = self._set.buckets(), self._set.summary()
            for locator in locators:
                h = ((from_bytes(locator, "big") * key) & mask) >> shift
                t = h >> summary_shift
                if summary[t >> 3] >> (t & 7) & 1:
                    b = buckets[h >> low_bits]
                    low = h & low_mask
                    i = bisect(b, low)
                    if i < len(b) and b[i] == low:
                        append(locator)
        return out

    def fingerprints(self) -> list[int]:
        with self._lock:
            return self._set.fingerprints()

    def summary_is_exact(self) -> bool:
        """Whether the summary in front of the buckets is what they hold (for tests)."""
        with self._lock:
            return self._set.summary_is_exact()

    # -- writes ----------------------------------------------------------------------------------------

    def stage(
        self,
        batch: Batch,
        added: Sequence[bytes] = (),
        removed: Sequence[bytes] = (),
        counts: Mapping[str, int] | None = None,
    ) -> Delta:
        """Adds the change's journal record to ``batch``; it is applied in memory once the batch is written.

        ``added``/``removed`` are the locators of ``w|`` entries the batch writes (new ones only, not
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
            batch.after_commit(lambda: self.apply(delta))
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
            log.error("locator index: removal of an appointment it does not hold fp=%012x", h)

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
                changes.setdefault(h >> LOW_BITS, ([], []))[0].append(h & _LOW)
            for h in delta.removed:
                changes.setdefault(h >> LOW_BITS, ([], []))[1].append(h & _LOW)
            for name, value in delta.counts:
                counts[name] = counts.get(name, 0) + value
        batch = Batch()
        for index, (adds, removes) in changes.items():
            stored = self._store.get(_snapshot_key(index))
            bucket = decode_bucket(stored[_SEGMENT:]) if stored is not None else array.array(_TYPE)
            for low in adds:
                insort(bucket, low)
            for low in removes:
                i = bisect_left(bucket, low)
                if i < len(bucket) and bucket[i] == low:
                    del bucket[i]
                else:
                    log.error("locator index: folding removes an absent fingerprint fp=%012x",
                              (index << LOW_BITS) | low)  # fmt: skip
            if bucket:
                batch.put(_snapshot_key(index), encode_snapshot(bucket))
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
