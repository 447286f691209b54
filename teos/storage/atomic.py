"""The atomic key-value seam: six operations a payment channel's state needs, and two back-ends.

``AtomicStore`` is deliberately narrow, so that a replicated back-end (etcd, FoundationDB, a Raft log...)
can implement it later without the callers changing: single-key reads and writes, one conditional write
(``compare_and_swap``), creation that fails if the key exists (``put_if_absent``) and a prefix scan. There
are no multi-key transactions; callers that need two records to agree make one of them the commit point
and reconcile the other idempotently (see teos/payments/handler.py for how grants do this).

Semantics every back-end gives (the property tests in tests/storage/test_atomic.py check them):

- every operation is linearisable: it appears to take effect at one instant between its call and its
  return, and a read returns the last write that took effect before it;
- a write has taken effect, durably, when it returns (LevelDB: synced to disk);
- ``compare_and_swap(key, expected, new)`` writes only if the stored value is exactly ``expected`` (an
  absent key never matches), and says whether it wrote. Of several CAS from one same value, at most one
  wins: no update is lost;
- ``get_by_prefix`` returns the pairs in key order as of some instant during the call (a consistent
  snapshot), so a scan never sees half of a CAS.

Keys are 1 to 255 bytes and values at most 1 MiB in every back-end, so a caller that works on one works on
all. Sizes are refused with ValueError before anything is written.
"""

from __future__ import annotations

import threading
from typing import Protocol

from teos.storage import keys
from teos.storage.store import Batch, Store

MAX_KEY_SIZE = 255
MAX_VALUE_SIZE = 1 << 20
N_STRIPES = 256


class AtomicStore(Protocol):
    """A linearisable, durable key-value store with compare-and-swap (see the module docstring)."""

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def put_if_absent(self, key: bytes, value: bytes) -> bool:
        """Writes ``value`` only if ``key`` is absent; True if it wrote."""
        ...

    def compare_and_swap(self, key: bytes, expected: bytes, new: bytes) -> bool:
        """Replaces ``expected`` by ``new`` only if ``key`` holds exactly ``expected``; True if it wrote."""
        ...

    def delete(self, key: bytes) -> None: ...

    def get_by_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order, as of one instant."""
        ...


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or not 1 <= len(key) <= MAX_KEY_SIZE:
        raise ValueError(f"keys are 1 to {MAX_KEY_SIZE} bytes")


def check_value(value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) > MAX_VALUE_SIZE:
        raise ValueError(f"values are bytes of at most {MAX_VALUE_SIZE} bytes")


class MemoryAtomicStore:
    """An in-process back-end (tests, and a tower that does not need its channels to survive a restart).

    One lock guards a dict; every operation holds it for its whole duration, which makes each one atomic
    and linearisable at the point the lock is held."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: bytes) -> bytes | None:
        check_key(key)
        with self._lock:
            return self._data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        check_key(key)
        check_value(value)
        with self._lock:
            self._data[key] = value

    def put_if_absent(self, key: bytes, value: bytes) -> bool:
        check_key(key)
        check_value(value)
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            return True

    def compare_and_swap(self, key: bytes, expected: bytes, new: bytes) -> bool:
        check_key(key)
        check_value(expected)
        check_value(new)
        with self._lock:
            if self._data.get(key) != expected:
                return False
            self._data[key] = new
            return True

    def delete(self, key: bytes) -> None:
        check_key(key)
        with self._lock:
            self._data.pop(key, None)

    def get_by_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        with self._lock:
            return sorted((k, v) for k, v in self._data.items() if k.startswith(prefix))


class LevelDBAtomicStore:
    """The default back-end: a namespace of the tower's own LevelDB database (``keys.ATOMIC``).

    teosd's main process is the database's only writer, so atomicity needs only in-process locks: a fixed
    array of stripes chosen by a hash of the key (bounded memory whatever the number of keys). A write
    holds its key's stripe across the read it depends on and the synced write itself (``Store.commit``,
    which shares each fsync among concurrent writers), so the next operation on that key reads what the
    previous one wrote. Reads take no lock: LevelDB's reads see only whole, committed batches. A prefix
    scan iterates a LevelDB snapshot.
    """

    def __init__(self, store: Store, namespace: bytes = keys.ATOMIC) -> None:
        self.store = store
        self.namespace = namespace
        self._stripes = [threading.Lock() for _ in range(N_STRIPES)]

    def _key(self, key: bytes) -> bytes:
        check_key(key)
        return self.namespace + key

    def _stripe(self, key: bytes) -> threading.Lock:
        return self._stripes[hash(key) % N_STRIPES]

    def _write(self, key: bytes, value: bytes | None) -> None:
        batch = Batch()
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
        self.store.commit(batch, sync=True)

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(self._key(key))

    def put(self, key: bytes, value: bytes) -> None:
        full = self._key(key)
        check_value(value)
        with self._stripe(full):
            self._write(full, value)

    def put_if_absent(self, key: bytes, value: bytes) -> bool:
        full = self._key(key)
        check_value(value)
        with self._stripe(full):
            if self.store.get(full) is not None:
                return False
            self._write(full, value)
            return True

    def compare_and_swap(self, key: bytes, expected: bytes, new: bytes) -> bool:
        full = self._key(key)
        check_value(expected)
        check_value(new)
        with self._stripe(full):
            if self.store.get(full) != expected:
                return False
            self._write(full, new)
            return True

    def delete(self, key: bytes) -> None:
        full = self._key(key)
        with self._stripe(full):
            self._write(full, None)

    def get_by_prefix(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        cut = len(self.namespace)
        return [(k[cut:], v) for k, v in self.store.iterate(self.namespace + prefix)]
