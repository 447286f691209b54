"""The LevelDB store: atomic batches, group commit, reads by prefix and range, one process at a time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from teos.storage.store import Batch, StorageError, Store


def put(store: Store, *items: tuple[bytes, bytes]) -> None:
    batch = Batch()
    for key, value in items:
        batch.put(key, value)
    store.commit(batch)


def test_a_batch_is_applied_in_order_and_whole(store: Store) -> None:
    batch = Batch()
    batch.put(b"a1", b"x")
    batch.put(b"a2", b"y")
    batch.delete(b"a1")
    batch.put(b"a3", b"z")
    assert len(batch) == 4
    store.commit(batch)
    assert list(store.iterate(b"a")) == [(b"a2", b"y"), (b"a3", b"z")]


def test_what_is_committed_survives_a_reopen(tmp_path: Path) -> None:
    first = Store(tmp_path / "db")
    first.open()
    put(first, (b"k", b"v"))
    first.close()
    again = Store(tmp_path / "db")
    again.open()
    try:
        assert again.get(b"k") == b"v"
    finally:
        again.close()


def test_a_second_process_or_store_cannot_open_the_same_database(store: Store) -> None:
    other = Store(store.path)
    with pytest.raises(StorageError, match="cannot open"):
        other.open()


def test_a_closed_store_refuses_reads(tmp_path: Path) -> None:
    s = Store(tmp_path / "db")
    s.open()
    s.close()
    with pytest.raises(StorageError, match="not open"):
        s.get(b"k")


def test_concurrent_committers_all_land(store: Store) -> None:
    def writer(n: int) -> None:
        for i in range(50):
            put(store, (b"w" + bytes([n]) + i.to_bytes(2, "big"), b"1"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.count(b"w") == 8 * 50


def test_submitted_batches_reach_the_disk_in_submission_order(store: Store) -> None:
    tickets = []
    for value in (b"1", b"2", b"3"):
        batch = Batch()
        batch.put(b"counter", value)
        tickets.append(store.submit(batch))
    for ticket in tickets:
        ticket.wait()
    assert store.get(b"counter") == b"3"


def test_reads_by_prefix_range_and_count(store: Store) -> None:
    put(store, (b"a\x01", b"1"), (b"a\x02", b"2"), (b"b\x01", b"3"), (b"b\x05", b"4"))
    assert store.count(b"a") == 2 and store.count(b"c") == 0
    assert store.has_prefix(b"b") and not store.has_prefix(b"c")
    assert list(store.iterate_range(b"a\x02", b"b\x05")) == [(b"a\x02", b"2"), (b"b\x01", b"3")]


def test_iterate_prefixes_seeks_each_prefix_once_in_order(store: Store) -> None:
    put(store, (b"p\x01a", b"1"), (b"p\x01b", b"2"), (b"p\x02a", b"3"), (b"p\x03a", b"4"), (b"q", b"5"))
    found = list(store.iterate_prefixes([b"p\x03", b"p\x01", b"p\x09", b"p\x01"]))
    assert found == [(b"p\x01a", b"1"), (b"p\x01b", b"2"), (b"p\x03a", b"4")]
    assert list(store.iterate_prefixes([])) == []


def test_after_commit_runs_once_the_batch_is_written_and_only_then(store: Store) -> None:
    ran: list[str] = []
    batch = Batch()
    batch.put(b"k", b"v")
    batch.after_commit(lambda: ran.append("first"))
    batch.after_commit(lambda: ran.append("second"))
    assert ran == []  # staged, not written
    store.commit(batch)
    assert ran == ["first", "second"] and store.get(b"k") == b"v"
    store.commit(batch)  # a batch committed again does not run them again
    assert ran == ["first", "second"]
    unsynced = Batch()
    unsynced.after_commit(lambda: ran.append("unsynced"))
    store.commit(unsynced, sync=False)
    assert ran[-1] == "unsynced"


def test_after_commit_runs_for_each_member_of_a_group_and_travels_with_extend(store: Store) -> None:
    ran: list[int] = []
    inner = Batch()
    inner.after_commit(lambda: ran.append(0))
    outer = Batch()
    outer.extend(inner)
    tickets = [store.submit(outer)]
    for i in range(1, 4):
        b = Batch()
        b.put(b"g%d" % i, b"x")
        b.after_commit(lambda i=i: ran.append(i))  # type: ignore[misc]
        tickets.append(store.submit(b))
    for t in tickets:
        t.wait()
    assert sorted(ran) == [0, 1, 2, 3]


def test_after_commit_does_not_run_when_the_write_fails(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.open()
    ran: list[bool] = []
    batch = Batch()
    batch.put(b"k", b"v")
    batch.after_commit(lambda: ran.append(True))
    store.close()  # every write now fails
    with pytest.raises(StorageError):
        store.commit(batch)
    assert ran == []


def test_a_failing_after_commit_step_is_logged_and_the_write_stands(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    batch = Batch()
    batch.put(b"k", b"v")
    batch.after_commit(boom)
    store.commit(batch)
    assert store.get(b"k") == b"v" and "after-commit step failed" in caplog.text
