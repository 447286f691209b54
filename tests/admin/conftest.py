from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, Filler


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db")
    s.open()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def filler(store: Store) -> Filler:
    return Filler(store)


@pytest.fixture
def engine_status() -> FakeEngineStatus:
    return FakeEngineStatus()
