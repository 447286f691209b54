"""The tower key file: created 0600 on first start, stable, never lost silently, replaced on demand.

(The migration of the copy older versions kept in the database: tests/daemon/test_private_datadir.py.)"""

import stat
from pathlib import Path

import pytest

from common import crypto
from teos.daemon import FatalError, check_network, load_or_create_key
from teos.storage import keys
from teos.storage.store import Store


def test_created_private_and_stable(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "teos_sk.der"
    first = load_or_create_key(path, store, overwrite=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path, store, overwrite=False) == first
    assert store.get(keys.META_TOWER_KEY) is None  # the secret is in the file alone
    assert store.get(keys.META_TOWER_ID) == crypto.public_key(first).raw  # a valid secp256k1 scalar


def test_lost_file_is_fatal_and_names_the_way_out(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "teos_sk.der"
    first = load_or_create_key(path, store, overwrite=False)
    path.unlink()
    with pytest.raises(FatalError, match="missing.*" + crypto.public_key(first).hex() + ".*--overwritekey"):
        load_or_create_key(path, store, overwrite=False)
    assert not path.exists()


def test_overwrite_replaces_file_and_database(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "teos_sk.der"
    first = load_or_create_key(path, store, overwrite=False)
    second = load_or_create_key(path, store, overwrite=True)
    assert second != first
    assert load_or_create_key(path, store, overwrite=False) == second
    assert store.get(keys.META_TOWER_ID) == crypto.public_key(second).raw


def test_corrupt_file_is_fatal_and_names_the_way_out(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "teos_sk.der"
    path.write_bytes(b"not a key")
    with pytest.raises(FatalError, match="--overwritekey"):
        load_or_create_key(path, store, overwrite=False)


def test_database_of_another_network_is_refused(store: Store) -> None:
    check_network(store, "regtest")
    check_network(store, "regtest")
    with pytest.raises(FatalError, match="regtest"):
        check_network(store, "main")
