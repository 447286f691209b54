from __future__ import annotations

import pytest

from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.storage.store import Store
from tests.api.support import FakeChain, Tower


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture
def config() -> GatekeeperConfig:
    return GatekeeperConfig(subscription_slots=100, subscription_duration=1000, expiry_delta=6)


@pytest.fixture
def gatekeeper(store: Store, config: GatekeeperConfig, chain: FakeChain) -> Gatekeeper:
    gk = Gatekeeper(store, config, chain)
    gk.start()
    return gk


@pytest.fixture
def tower(store: Store) -> Tower:
    """A public API app over a real store: python-teos's observed defaults (100 slots, tip 11)."""
    return Tower.build(store)
