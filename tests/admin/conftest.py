from __future__ import annotations

import pytest

from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, Filler


@pytest.fixture
def filler(store: Store, index: LocatorIndex) -> Filler:
    return Filler(store, index)


@pytest.fixture
def engine_status() -> FakeEngineStatus:
    return FakeEngineStatus()
