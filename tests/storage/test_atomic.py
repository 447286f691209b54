"""The atomic store seam, for both back-ends: a model-based check of each operation, concurrent CAS with
no lost updates, linearisability of random concurrent histories, scan snapshots, limits and durability."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from teos.storage import keys
from teos.storage.atomic import AtomicStore, LevelDBAtomicStore, MemoryAtomicStore
from teos.storage.store import Store

BACKENDS = ["memory", "leveldb"]


@contextmanager
def open_backend(kind: str) -> Iterator[AtomicStore]:
    """A fresh store of ``kind`` (a LevelDB one in its own temporary directory, removed afterwards)."""
    if kind == "memory":
        yield MemoryAtomicStore()
        return
    path = Path(tempfile.mkdtemp(prefix="atomic-"))
    store = Store(path / "db")
    store.open()
    try:
        yield LevelDBAtomicStore(store)
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


# -- sequential behaviour against a dict model ------------------------------------------------------------

KEYS = st.sampled_from([b"a", b"ab", b"b", b"ba", b"c"])
VALUES = st.sampled_from([b"", b"0", b"1", b"2", b"\x00\xff"])


class _Model(RuleBasedStateMachine):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._cm = open_backend(self.kind)
        self.store = self._cm.__enter__()
        self.model: dict[bytes, bytes] = {}

    def teardown(self) -> None:
        self._cm.__exit__(None, None, None)

    @rule(key=KEYS)
    def get(self, key: bytes) -> None:
        assert self.store.get(key) == self.model.get(key)

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        self.store.put(key, value)
        self.model[key] = value

    @rule(key=KEYS, value=VALUES)
    def put_if_absent(self, key: bytes, value: bytes) -> None:
        expected = key not in self.model
        assert self.store.put_if_absent(key, value) is expected
        if expected:
            self.model[key] = value

    @rule(key=KEYS, expected=VALUES, new=VALUES)
    def compare_and_swap(self, key: bytes, expected: bytes, new: bytes) -> None:
        hit = self.model.get(key) == expected
        assert self.store.compare_and_swap(key, expected, new) is hit
        if hit:
            self.model[key] = new

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        self.store.delete(key)
        self.model.pop(key, None)

    @rule(prefix=st.sampled_from([b"", b"a", b"b", b"ab", b"z"]))
    def get_by_prefix(self, prefix: bytes) -> None:
        expected = sorted((k, v) for k, v in self.model.items() if k.startswith(prefix))
        assert self.store.get_by_prefix(prefix) == expected

    @invariant()
    def everything_matches(self) -> None:
        assert self.store.get_by_prefix(b"") == sorted(self.model.items())


class _MemoryModel(_Model):
    kind = "memory"


class _LevelDBModel(_Model):
    kind = "leveldb"


TestMemoryAgainstModel = _MemoryModel.TestCase
TestMemoryAgainstModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestLevelDBAgainstModel = _LevelDBModel.TestCase
TestLevelDBAgainstModel.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)


# -- concurrency: no lost updates ---------------------------------------------------------------------------


def _run_threads(n: int, target: Callable[[int], None]) -> None:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as e:  # surfaced below: a thread must not fail silently
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker thread hung"
    assert not errors, errors


@pytest.mark.parametrize("kind", BACKENDS)
def test_concurrent_cas_increments_lose_nothing(kind: str) -> None:
    """16 threads each add 1 twenty times by read + CAS + retry; every win came from a distinct value."""
    threads, per_thread = 16, 20
    with open_backend(kind) as store:
        assert store.put_if_absent(b"counter", b"0")
        wins: list[int] = []
        wins_lock = threading.Lock()

        def worker(_: int) -> None:
            done = 0
            while done < per_thread:
                current = store.get(b"counter")
                assert current is not None
                if store.compare_and_swap(b"counter", current, str(int(current) + 1).encode()):
                    with wins_lock:
                        wins.append(int(current))
                    done += 1

        _run_threads(threads, worker)
        total = threads * per_thread
        assert store.get(b"counter") == str(total).encode()
        assert sorted(wins) == list(range(total))  # each value was swapped away exactly once


@pytest.mark.parametrize("kind", BACKENDS)
def test_put_if_absent_has_one_winner(kind: str) -> None:
    with open_backend(kind) as store:
        winners: list[int] = []

        def worker(i: int) -> None:
            if store.put_if_absent(b"k", str(i).encode()):
                winners.append(i)

        _run_threads(12, worker)
        assert len(winners) == 1
        assert store.get(b"k") == str(winners[0]).encode()


@pytest.mark.parametrize("kind", BACKENDS)
def test_scan_is_a_snapshot(kind: str) -> None:
    """A writer bumps ``a`` then ``b`` to the same version, in that order; a scan must never see ``b``
    ahead of ``a`` (which a scan reading keys one at a time, without a snapshot, could)."""
    with open_backend(kind) as store:
        store.put(b"a", b"0")
        store.put(b"b", b"0")
        stop = threading.Event()
        scanning = threading.Event()
        seen: list[tuple[int, int]] = []

        def writer() -> None:
            assert scanning.wait(timeout=30)
            for version in range(1, 120):
                assert store.compare_and_swap(b"a", str(version - 1).encode(), str(version).encode())
                time.sleep(0)  # let the scanner in between the two writes
                assert store.compare_and_swap(b"b", str(version - 1).encode(), str(version).encode())
            stop.set()

        def scanner() -> None:
            while not stop.is_set():
                snapshot = dict(store.get_by_prefix(b""))
                seen.append((int(snapshot[b"a"]), int(snapshot[b"b"])))
                scanning.set()

        threads = [threading.Thread(target=writer), threading.Thread(target=scanner)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(seen) > 1
        assert all(b <= a <= b + 1 for a, b in seen)


# -- linearisability of random concurrent histories -------------------------------------------------------


@dataclass
class Op:
    thread: int
    name: str
    args: tuple[bytes, ...]
    start: int = 0
    end: int = 0
    result: Any = None


@dataclass
class _Search:
    ops: list[Op]
    seen: set[tuple[frozenset[int], tuple[tuple[bytes, bytes], ...]]] = field(default_factory=set)


def _apply(model: dict[bytes, bytes], op: Op) -> Any:
    if op.name == "get":
        return model.get(op.args[0])
    if op.name == "put":
        model[op.args[0]] = op.args[1]
        return None
    if op.name == "put_if_absent":
        if op.args[0] in model:
            return False
        model[op.args[0]] = op.args[1]
        return True
    if op.name == "cas":
        if model.get(op.args[0]) != op.args[1]:
            return False
        model[op.args[0]] = op.args[2]
        return True
    if op.name == "delete":
        model.pop(op.args[0], None)
        return None
    if op.name == "scan":
        return sorted((k, v) for k, v in model.items() if k.startswith(op.args[0]))
    raise AssertionError(op.name)


def linearizable(ops: list[Op]) -> bool:
    """Wing & Gong's search: is there an order of ``ops``, consistent with real time (an op that returned
    before another was called comes first), in which a sequential dict gives every recorded result?"""
    search = _Search(ops)

    def step(remaining: frozenset[int], model: dict[bytes, bytes]) -> bool:
        if not remaining:
            return True
        memo = (remaining, tuple(sorted(model.items())))
        if memo in search.seen:
            return False
        search.seen.add(memo)
        earliest_end = min(ops[i].end for i in remaining)
        for i in remaining:
            op = ops[i]
            if op.start > earliest_end:
                continue  # some other pending op finished before this one began
            trial = dict(model)
            if _apply(trial, op) == op.result and step(remaining - {i}, trial):
                return True
        return False

    return step(frozenset(range(len(ops))), {})


def _execute(store: AtomicStore, op: Op) -> Any:
    if op.name == "get":
        return store.get(op.args[0])
    if op.name == "put":
        return store.put(op.args[0], op.args[1])
    if op.name == "put_if_absent":
        return store.put_if_absent(op.args[0], op.args[1])
    if op.name == "cas":
        return store.compare_and_swap(op.args[0], op.args[1], op.args[2])
    if op.name == "delete":
        return store.delete(op.args[0])
    return store.get_by_prefix(op.args[0])


SMALL_KEYS = st.sampled_from([b"x", b"y"])
SMALL_VALUES = st.sampled_from([b"1", b"2", b"3"])
OPS = st.one_of(
    st.tuples(st.just("get"), st.tuples(SMALL_KEYS)),
    st.tuples(st.just("put"), st.tuples(SMALL_KEYS, SMALL_VALUES)),
    st.tuples(st.just("put_if_absent"), st.tuples(SMALL_KEYS, SMALL_VALUES)),
    st.tuples(st.just("cas"), st.tuples(SMALL_KEYS, SMALL_VALUES, SMALL_VALUES)),
    st.tuples(st.just("delete"), st.tuples(SMALL_KEYS)),
    st.tuples(st.just("scan"), st.tuples(st.just(b""))),
)
HISTORIES = st.lists(st.lists(OPS, min_size=1, max_size=4), min_size=2, max_size=4)


def _check_history(kind: str, plan: list[list[tuple[str, tuple[bytes, ...]]]]) -> None:
    with open_backend(kind) as store:
        history = [[Op(t, name, args) for name, args in ops] for t, ops in enumerate(plan)]

        def worker(t: int) -> None:
            for op in history[t]:
                op.start = time.monotonic_ns()
                op.result = _execute(store, op)
                op.end = time.monotonic_ns()

        _run_threads(len(plan), worker)
        flat = [op for ops in history for op in ops]
        assert linearizable(flat), [(o.thread, o.name, o.args, o.result) for o in flat]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORIES)
def test_memory_histories_are_linearizable(plan: list[list[tuple[str, tuple[bytes, ...]]]]) -> None:
    _check_history("memory", plan)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORIES)
def test_leveldb_histories_are_linearizable(plan: list[list[tuple[str, tuple[bytes, ...]]]]) -> None:
    _check_history("leveldb", plan)


def test_the_checker_refuses_a_lost_update() -> None:
    """Two CAS from one value that both report success cannot be linearised (the checker is not vacuous)."""
    a = Op(0, "cas", (b"x", b"1", b"2"), start=10, end=20, result=True)
    b = Op(1, "cas", (b"x", b"1", b"3"), start=11, end=21, result=True)
    setup = Op(2, "put", (b"x", b"1"), start=0, end=5, result=None)
    assert not linearizable([setup, a, b])
    b.result = False
    assert linearizable([setup, a, b])
    stale = Op(3, "get", (b"x",), start=30, end=31, result=b"1")  # after both returned: must see 2
    assert not linearizable([setup, a, b, stale])


# -- limits and durability ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_sizes_are_refused_before_anything_is_written(kind: str) -> None:
    with open_backend(kind) as store:
        for bad_key in (b"", b"k" * 256):
            with pytest.raises(ValueError):
                store.put(bad_key, b"v")
        with pytest.raises(ValueError):
            store.put(b"k", b"v" * ((1 << 20) + 1))
        with pytest.raises(ValueError):
            store.compare_and_swap(b"k", b"", "not bytes")  # type: ignore[arg-type]
        assert store.get_by_prefix(b"") == []


def test_leveldb_values_survive_reopening_and_stay_in_their_namespace(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.open()
    atomic = LevelDBAtomicStore(store)
    atomic.put(b"s1", b"one")
    assert atomic.compare_and_swap(b"s1", b"one", b"two")
    store.close()
    store.open()
    try:
        assert LevelDBAtomicStore(store).get(b"s1") == b"two"
        assert store.get(keys.ATOMIC + b"s1") == b"two"
        assert [k for k, _ in store.iterate(b"")] == [keys.ATOMIC + b"s1"]
    finally:
        store.close()
