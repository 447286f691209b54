from __future__ import annotations

import pytest

from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, Filler


@pytest.fixture
def filler(store: Store) -> Filler:
    return Filler(store)


@pytest.fixture
def engine_status() -> FakeEngineStatus:
    return FakeEngineStatus()
