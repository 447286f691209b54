"""The in-memory locator index: never a false negative, exact through adds, removals, failed writes,
folds and restarts, on a real LevelDB. Checked against a model (a multiset of locators) after every step."""

from __future__ import annotations

import array
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.types import Locator
from teos.storage import keys
from teos.storage.index import (
    APPOINTMENTS,
    BUCKETS,
    JOURNAL,
    LOW_BITS,
    SUMMARY_BITS,
    USERS,
    Delta,
    FingerprintSet,
    IndexCorrupt,
    LocatorIndex,
    encode_bucket,
    fingerprint,
)
from teos.storage.store import Batch, Store
from tests.support.wait import wait_until


def _locators(n: int) -> list[bytes]:
    return [os.urandom(16) for _ in range(n)]


def _write(
    store: Store, index: LocatorIndex, added: list[bytes] | None = None, removed: list[bytes] | None = None,
    counts: dict[str, int] | None = None,
) -> None:
    """One change the way its writers make it: staged in a batch, which applies it once written."""
    batch = Batch()
    index.stage(batch, added or [], removed or [], counts)
    store.commit(batch, sync=False)


def _open(path: Path) -> Store:
    store = Store(path)
    store.open()
    return store


# -- the pure parts ------------------------------------------------------------------------------------


def test_fingerprint_set_is_a_multiset() -> None:
    s = FingerprintSet()
    s.add(0x00010002)
    s.add(0x00010002)
    s.add(0xFFFF0000)
    assert len(s) == 3 and s.count(0x00010002) == 2 and 0xFFFF0000 in s
    assert s.discard(0x00010002) and s.count(0x00010002) == 1
    assert not s.discard(0x00010003)
    assert s.fingerprints() == [0x00010002, 0xFFFF0000]


def test_fingerprint_mixes_every_byte_of_the_locator() -> None:
    key = int.from_bytes(os.urandom(16), "big") | 1
    base = os.urandom(16)
    flipped = [base[:i] + bytes([base[i] ^ 0x80]) + base[i + 1 :] for i in range(16)]
    prints = {fingerprint(key, loc) for loc in [base, *flipped]}
    assert len(prints) == 17  # each byte moves the fingerprint (all but certainly: a 2**-32 chance each)


def test_locators_sharing_a_prefix_spread_over_buckets() -> None:
    """A user choosing locators that differ only in their last bytes cannot fill one bucket."""
    key = int.from_bytes(os.urandom(16), "big") | 1
    buckets = Counter(fingerprint(key, b"\xaa" * 14 + i.to_bytes(2, "big")) >> LOW_BITS for i in range(20000))
    assert max(buckets.values()) < 10  # ~0.3 per bucket on average


def test_delta_round_trips_and_rejects_garbage() -> None:
    delta = Delta((1, 2**32 - 1), (7,), (("users", 3), ("trackers", -1)))
    assert Delta.decode(delta.encode()) == delta
    assert Delta.decode(Delta().encode()) == Delta()
    for bad in (b"", delta.encode()[:-1], delta.encode() + b"\x00"):
        with pytest.raises(IndexCorrupt):
            Delta.decode(bad)


# -- persisted ------------------------------------------------------------------------------------------


def test_candidates_has_no_false_negative_and_few_false_positives(tmp_path: Path) -> None:
    store = _open(tmp_path / "db")
    index = LocatorIndex(store)
    watched = _locators(5000)
    index.start(lambda: watched)
    try:
        others = _locators(20000)
        found = index.candidates(watched + others)
        assert set(watched) <= set(found)
        assert len(found) - len(watched) < 5  # 20000 x 5000 / 2**32 ~ 0.02 expected
        assert len(index) == 5000
    finally:
        index.stop()
        store.close()


def test_restart_reads_the_same_index_with_and_without_folding(tmp_path: Path) -> None:
    store = _open(tmp_path / "db")
    index = LocatorIndex(store, fold_every=10**9)
    index.start(lambda: [], lambda: {"users": 0})
    kept = _locators(300)
    for loc in kept:
        _write(store, index, added=[loc], counts={"users": 1})
    _write(store, index, removed=kept[:100], counts={"users": -100})
    expected = sorted(index.fingerprints())
    assert sum(1 for _ in store.iterate(JOURNAL)) == 301
    index.stop(fold=False)  # as after a crash: the journal is replayed at the next start
    again = LocatorIndex(store)
    again.start(lambda: pytest.fail("must not rebuild"))
    assert sorted(again.fingerprints()) == expected and again.count("users") == 200
    assert set(again.candidates(kept[100:])) == set(kept[100:])
    again.stop()  # folds
    assert sum(1 for _ in store.iterate(JOURNAL)) == 0
    third = LocatorIndex(store)
    third.start()
    assert sorted(third.fingerprints()) == expected and third.count("users") == 200
    third.stop()
    store.close()


def test_a_batch_never_written_changes_nothing(tmp_path: Path) -> None:
    """A failed write, or a batch its builder abandons (the engine retrying a block), is never applied."""
    store = _open(tmp_path / "db")
    index = LocatorIndex(store)
    watched = _locators(10)
    index.start(lambda: watched, lambda: {"n": 10})
    before = index.fingerprints()
    batch = Batch()
    index.stage(batch, added=_locators(3), removed=watched[:2], counts={"n": 1})
    assert len(batch) == 1  # its journal record, dropped with the batch
    assert index.fingerprints() == before and index.count("n") == 10
    assert index.candidates(watched) == watched
    index.stop()
    reopened = LocatorIndex(store)
    reopened.start()
    assert reopened.fingerprints() == before and reopened.count("n") == 10
    reopened.stop()
    store.close()


def test_removing_what_is_not_there_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _open(tmp_path / "db")
    index = LocatorIndex(store)
    kept = _locators(1)
    index.start(lambda: kept)
    _write(store, index, removed=_locators(1))
    assert "does not hold" in caplog.text
    assert index.candidates(kept) == kept
    index.stop()
    store.close()


def test_concurrent_batches_committed_in_any_order_fold_exactly(tmp_path: Path) -> None:
    """Records are deltas: batches staged in one order and committed in another, some folds in between,
    still rebuild the same index."""
    store = _open(tmp_path / "db")
    index = LocatorIndex(store, fold_every=10**9)
    index.start()
    staged = []
    locs = _locators(200)
    for loc in locs:
        batch = Batch()
        staged.append((batch, index.stage(batch, added=[loc])))
    for batch, _ in reversed(staged[100:]):
        store.commit(batch, sync=False)
    index.fold()  # folds the 100 written ones; the others are "in flight"
    for batch, _ in staged[:100]:
        store.commit(batch, sync=False)
    _write(store, index, removed=locs[:50])
    expected = sorted(index.fingerprints())
    index.fold()
    reopened = LocatorIndex(store)
    reopened.start()
    assert sorted(reopened.fingerprints()) == expected and len(reopened) == 150
    reopened.stop()
    index.stop()
    store.close()


def test_the_folder_thread_folds_in_the_background(tmp_path: Path) -> None:
    store = _open(tmp_path / "db")
    index = LocatorIndex(store, fold_every=50)
    index.start()
    for loc in _locators(120):
        _write(store, index, added=[loc])
    wait_until(lambda: sum(1 for _ in store.iterate(JOURNAL)) < 50, timeout=30, message="fold")
    index.stop()
    store.close()


def test_many_threads_staging_and_looking_up(tmp_path: Path) -> None:
    """Lookups running while other threads add and remove never miss a locator that stays watched."""
    store = _open(tmp_path / "db")
    index = LocatorIndex(store, fold_every=500)
    stable = _locators(2000)
    index.start(lambda: stable)
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        mine: list[bytes] = []
        for _ in range(300):
            if mine and len(mine) % 3 == 0:
                _write(store, index, removed=[mine.pop()])
            else:
                loc = os.urandom(16)
                _write(store, index, added=[loc])
                mine.append(loc)

    def reader() -> None:
        while not stop.is_set():
            if len(index.candidates(stable)) != len(stable):
                errors.append("a watched locator was missed")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer) for _ in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors
    expected = sorted(index.fingerprints())
    index.stop()
    reopened = LocatorIndex(store)
    reopened.start()
    assert sorted(reopened.fingerprints()) == expected
    reopened.stop()
    store.close()


def test_an_index_of_an_earlier_format_is_built_again(tmp_path: Path) -> None:
    """Version 1 stored no summary: its snapshots, journal and counters give way to a build from the keys."""
    store = _open(tmp_path / "db")
    locators = _locators(50)
    batch = Batch()
    for i, loc in enumerate(locators):
        batch.put(keys.appointment(Locator(loc), i % 3), b"body")
        batch.put(keys.user_appointment(i % 3, Locator(loc)), b"")
    batch.put(b"fm", b"\x01" + bytes(15) + b"\x01" + bytes(8))  # version 1, key 1, nothing folded
    batch.put(b"fs" + bytes(2), encode_bucket(array.array("I", [7, 8, 9])))
    batch.put(b"fj" + bytes(7) + b"\x05", Delta((1, 2), (), (("users", 40),)).encode())
    batch.put(b"fcusers", bytes(7) + b"\x63")
    store.commit(batch)
    index = LocatorIndex(store)
    index.start()
    assert sorted(index.fingerprints()) == sorted(index.fingerprint(loc) for loc in locators)
    assert index.summary_is_exact() and set(index.candidates(locators)) == set(locators)
    assert index.count(APPOINTMENTS) == 50 and index.count(USERS) == 0  # counted from the keys
    assert not list(store.iterate_keys(JOURNAL))
    index.stop()
    store.close()


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from([0, 1, 0xFFFF]),  # bucket
            st.sampled_from([0, 1, 511]),  # summary bit in the bucket
            st.sampled_from([0, 1, 2, (1 << 23) - 1]),  # the rest of the low part
        ),
        max_size=60,
    )
)
@settings(max_examples=60, deadline=None)
def test_the_summary_is_exact_through_adds_and_removals_sharing_bits(
    ops: list[tuple[bool, int, int, int]],
) -> None:
    """Fingerprints crowded onto a few summary bits (and repeated): each bit stays set exactly while some
    fingerprint has it, and membership follows a model."""
    s = FingerprintSet()
    model: Counter[int] = Counter()
    for add, bucket, top, rest in ops:
        h = (bucket << LOW_BITS) | (top << (LOW_BITS - SUMMARY_BITS)) | rest
        if add:
            s.add(h)
            model[h] += 1
        else:
            assert s.discard(h) == (model[h] > 0)
            model[h] = max(0, model[h] - 1)
        assert s.summary_is_exact()
        assert sorted(s.fingerprints()) == sorted(model.elements())


def test_an_unknown_version_is_refused(tmp_path: Path) -> None:
    store = _open(tmp_path / "db")
    index = LocatorIndex(store)
    index.start()
    index.stop()
    batch = Batch()
    batch.put(b"fm", b"\x09" + bytes(24))
    store.commit(batch, sync=False)
    with pytest.raises(IndexCorrupt):
        LocatorIndex(store).start()
    store.close()


# -- a model-based run -------------------------------------------------------------------------------------


class IndexMachine(RuleBasedStateMachine):
    """Random adds, removals, failed writes, folds and restarts against a Counter of locators."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(os.environ.get("TMPDIR", "/tmp")) / f"teos-index-{os.getpid()}-{id(self)}"
        self.store = _open(self.path)
        self.index = LocatorIndex(self.store, fold_every=7)
        self.index.start()
        self.model: Counter[bytes] = Counter()
        self.users = 0
        self.pool = [os.urandom(16) for _ in range(12)] + [b"\x00" * 16]

    @rule(data=st.data(), n=st.integers(1, 4))
    def add(self, data: st.DataObject, n: int) -> None:
        locs = [data.draw(st.sampled_from(self.pool)) for _ in range(n)]
        _write(self.store, self.index, added=locs, counts={"users": 1})
        self.model.update(locs)
        self.users += 1

    @precondition(lambda self: sum(self.model.values()) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        loc = data.draw(st.sampled_from(sorted(self.model.elements())))
        _write(self.store, self.index, removed=[loc], counts={"users": -1})
        self.model[loc] -= 1
        self.users -= 1

    @rule(data=st.data())
    def abandoned_batch(self, data: st.DataObject) -> None:
        present = sorted(self.model.elements())
        removed = [data.draw(st.sampled_from(present))] if present else []
        self.index.stage(Batch(), added=[data.draw(st.sampled_from(self.pool))], removed=removed,
                         counts={"users": 5})  # fmt: skip

    @rule(data=st.data())
    def written_then_crash_before_apply(self, data: st.DataObject) -> None:
        """The batch is on disk but the process dies before applying it: the restart has it."""
        loc = data.draw(st.sampled_from(self.pool))
        batch = Batch()
        self.index.stage(batch, added=[loc], counts={"users": 1})
        written = Batch()
        written.ops = list(batch.ops)  # its after-commit step never runs
        self.store.commit(written, sync=False)
        self.model[loc] += 1
        self.users += 1
        self.crash_and_restart()

    @rule()
    def fold(self) -> None:
        self.index.fold()

    @rule()
    def crash_and_restart(self) -> None:
        self.index.stop(fold=False)  # the journal stays as a crash leaves it
        self.index = LocatorIndex(self.store, fold_every=7)
        self.index.start()

    @rule()
    def clean_restart(self) -> None:
        self.index.stop()
        self.index = LocatorIndex(self.store, fold_every=7)
        self.index.start()

    @invariant()
    def matches_the_model(self) -> None:
        expected = sorted(self.index.fingerprint(loc) for loc in self.model.elements())
        assert sorted(self.index.fingerprints()) == expected
        assert self.index.summary_is_exact()
        assert len(self.index) == len(expected)
        assert self.index.count("users") == self.users
        present = [loc for loc in self.pool if self.model[loc] > 0]
        assert set(present) <= set(self.index.candidates(self.pool))

    def teardown(self) -> None:
        self.index.stop()
        self.store.close()
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


IndexMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
)
test_index_against_a_model = IndexMachine.TestCase


def test_every_bucket_is_reachable() -> None:
    assert BUCKETS == 65536
    key = int.from_bytes(os.urandom(16), "big") | 1
    seen = {fingerprint(key, os.urandom(16)) >> LOW_BITS for _ in range(200_000)}
    assert len(seen) > 0.9 * BUCKETS
