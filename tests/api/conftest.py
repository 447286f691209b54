from __future__ import annotations

from collections.abc import Iterator

import pytest

from teos.storage.store import Store
from tests.api.support import Tower
from tests.support.users import chain, config, gatekeeper

__all__ = ["chain", "config", "gatekeeper", "tower"]


@pytest.fixture(params=["local", "remote"])
def tower(store: Store, request: pytest.FixtureRequest) -> Iterator[Tower]:
    """A public API app over a real store: python-teos's observed defaults (100 slots, tip 11). Every
    test using it runs twice: with the state in the app's process, and through the worker channel
    (``teos.api.ipc``) as teosd's API workers reach it."""
    built = Tower.build(store, remote=request.param == "remote")
    try:
        yield built
    finally:
        built.close()
