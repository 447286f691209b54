"""Fixtures shared by every part's tests.

- ``bitcoind``: a started :class:`tests.support.BitcoindHandle`, parametrized over ``"simulator"`` (the
  teos-regtest simulator in a subprocess) and ``"bitcoin-core"`` (real ``bitcoind -regtest``, found via
  $BITCOIND, PATH or scripts/build-bitcoind's cache; skipped with the reason when absent, a failure when
  TEOS_REQUIRE_BITCOIN_CORE is set, as in CI). Fresh datadir per test; stopped at teardown.
- ``simulator``: the simulator only, for tests that need its ``sim_*`` fault knobs.
- ``bitcoind_factory``: ``factory(kind="simulator", extra_args=())`` for tests that need extra node
  options or more than one node; every node it starts is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.support.bitcoind import BitcoindHandle, bitcoin_core_required, make_handle


def _start(kind: str, datadir: Path, extra_args: tuple[str, ...] = ()) -> BitcoindHandle:
    try:
        handle = make_handle(kind, datadir, extra_args)
    except LookupError as e:
        if bitcoin_core_required():
            pytest.fail(f"TEOS_REQUIRE_BITCOIN_CORE is set: {e}")
        pytest.skip(str(e))
    handle.start()
    return handle


@pytest.fixture(params=["simulator", "bitcoin-core"])
def bitcoind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BitcoindHandle]:
    handle = _start(request.param, tmp_path / f"bitcoind-{request.param}")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[BitcoindHandle]:
    handle = _start("simulator", tmp_path / "bitcoind-simulator")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def bitcoind_factory(tmp_path: Path) -> Iterator[Callable[..., BitcoindHandle]]:
    started: list[BitcoindHandle] = []

    def factory(kind: str = "simulator", extra_args: tuple[str, ...] = ()) -> BitcoindHandle:
        handle = _start(kind, tmp_path / f"bitcoind-{kind}-{len(started)}", extra_args)
        started.append(handle)
        return handle

    try:
        yield factory
    finally:
        for handle in started:
            handle.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real LevelDB store in the test's temporary directory, closed at teardown."""
    s = Store(tmp_path / "db")
    s.open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def index(store: Store) -> Iterator[LocatorIndex]:
    """The locator index and counters over ``store``, started; stopped before the store closes."""
    i = LocatorIndex(store)
    i.start()
    try:
        yield i
    finally:
        i.stop()
