"""Issue 13, F3: the tower secret exists in one 0600 file and nowhere else; the datadir is teosd's alone.

Before: with umask 022 the datadir, ``<network>/`` and ``db/`` were 0755 and LevelDB's files 0644, and
``db/000003.log`` held the raw tower secret (``m|tower_key``): another local user read it out.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from coincurve import PrivateKey

from common import crypto
from teos.config import load_config
from teos.daemon import FatalError
from teos.hardening import restrict_umask, secure_datadir
from teos.storage import keys
from teos.storage.store import Batch, Store
from teos.towerkey import load_or_create_key
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_holding(directory: Path, secret: bytes) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file() and secret in p.read_bytes()]


@pytest.fixture(params=["fresh", "aged"])
def legacy_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, bytes]]:
    """A database as teosd wrote it before: the secret under ``m|tower_key``, on disk in LevelDB's log
    ("fresh") or, after 12 MB of later writes, in a table file some levels down ("aged")."""
    store = Store(tmp_path / "db")
    store.open()
    secret = crypto.generate_secret_key()
    batch = Batch()
    batch.put(keys.META_TOWER_KEY, secret)
    for i in range(100):
        batch.put(keys.META + b"filler" + bytes([i]), os.urandom(100))
    store.commit(batch)
    if request.param == "aged":
        for _ in range(30):
            batch = Batch()
            for _ in range(2000):
                batch.put(keys.APPOINTMENT + os.urandom(36), os.urandom(200))
            store.commit(batch)
        assert not (tmp_path / "db" / "000003.log").exists()  # the log holding it was flushed to a table
    assert files_holding(tmp_path / "db", secret)  # the finding itself
    try:
        yield store, secret
    finally:
        store.close()


def test_the_copy_in_an_old_database_is_deleted_from_every_file(
    tmp_path: Path, legacy_db: tuple[Store, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store, secret = legacy_db
    path = tmp_path / "teos_sk.der"
    path.write_bytes(PrivateKey(secret).to_der())
    path.chmod(0o600)
    with caplog.at_level(logging.INFO):
        assert load_or_create_key(path, store, overwrite=False) == secret
    assert store.get(keys.META_TOWER_KEY) is None
    assert store.get(keys.META_TOWER_ID) == crypto.public_key(secret).raw
    assert files_holding(tmp_path / "db", secret) == []
    assert secret.hex() not in caplog.text
    store.close()
    store.open()  # and after a restart of the database
    assert store.get(keys.META_TOWER_KEY) is None and files_holding(tmp_path / "db", secret) == []


def test_a_missing_file_is_restored_from_the_old_copy_before_it_goes(
    tmp_path: Path, legacy_db: tuple[Store, bytes]
) -> None:
    store, secret = legacy_db
    path = tmp_path / "teos_sk.der"
    assert load_or_create_key(path, store, overwrite=False) == secret
    assert bytes(PrivateKey.from_der(path.read_bytes()).secret) == secret
    assert mode(path) == 0o600
    assert store.get(keys.META_TOWER_KEY) is None and files_holding(tmp_path / "db", secret) == []
    path.unlink()  # lost again, now with no copy anywhere: teosd refuses rather than change its id
    with pytest.raises(FatalError, match="--overwritekey"):
        load_or_create_key(path, store, overwrite=False)


def test_a_key_file_of_another_tower_is_refused(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "teos_sk.der"
    load_or_create_key(path, store, overwrite=False)
    path.unlink()
    other = crypto.generate_secret_key()
    path.write_bytes(PrivateKey(other).to_der())
    with pytest.raises(FatalError, match="belongs to tower " + crypto.public_key(other).hex()):
        load_or_create_key(path, store, overwrite=False)


def test_a_key_file_readable_by_others_is_made_private(tmp_path: Path, store: Store) -> None:
    path = tmp_path / "teos_sk.der"
    secret = load_or_create_key(path, store, overwrite=False)
    path.chmod(0o644)
    assert load_or_create_key(path, store, overwrite=False) == secret
    assert mode(path) == 0o600


def test_umask_077_makes_new_files_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        restrict_umask()
        (tmp_path / "f").write_text("x")
        (tmp_path / "d").mkdir()
        assert (mode(tmp_path / "f"), mode(tmp_path / "d")) == (0o600, 0o700)
    finally:
        os.umask(old)


def test_a_new_datadir_is_created_private(tmp_path: Path) -> None:
    config = load_config(["--datadir", str(tmp_path / "a" / "teos"), "--btcnetwork", "regtest"], {})
    secure_datadir(config)
    for d in (config.datadir, config.network_dir, config.db_path):
        assert mode(d) == 0o700, d


def test_an_open_datadir_and_its_files_are_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(["--datadir", str(tmp_path / "teos"), "--btcnetwork", "regtest"], {})
    config.db_path.mkdir(parents=True, mode=0o755)
    for d in (config.datadir, config.network_dir, config.db_path):
        d.chmod(0o755)
    (config.db_path / "000003.log").write_bytes(b"x")
    (config.db_path / "000003.log").chmod(0o644)
    (config.datadir / "teos.conf").write_text("btcrpcpassword = p\n")
    (config.datadir / "teos.conf").chmod(0o644)
    with caplog.at_level(logging.WARNING):
        secure_datadir(config)
    for d in (config.datadir, config.network_dir, config.db_path):
        assert mode(d) == 0o700, d
    assert mode(config.db_path / "000003.log") == 0o600
    assert mode(config.datadir / "teos.conf") == 0o600
    assert "made private" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_an_open_datadir_of_another_user_is_refused(tmp_path: Path) -> None:
    config = load_config(["--datadir", str(tmp_path / "teos"), "--btcnetwork", "regtest"], {})
    config.datadir.mkdir(mode=0o755)
    config.datadir.chmod(0o755)
    os.chown(config.datadir, 65534, 65534)
    with pytest.raises(FatalError, match="belongs to uid 65534"):
        secure_datadir(config)


@pytest.mark.e2e
def test_teosd_keeps_its_datadir_private_and_the_secret_in_the_key_file_alone(
    tmp_path: Path, bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    datadir = tmp_path / "teos"
    datadir.mkdir(mode=0o755)
    datadir.chmod(0o755)  # as a umask-022 shell makes it
    teosd: Teosd = teosd_factory(bitcoind, datadir=datadir, env={"TEOS_LOGFILE": "teosd-own.log"})
    network = datadir / "regtest"
    for d in (datadir, network, network / "db"):
        assert mode(d) == 0o700, d
    assert {mode(p) for p in (network / "db").iterdir() if p.is_file()} == {0o600}
    assert mode(network / "teos_sk.der") == 0o600 and mode(datadir / "teosd-own.log") == 0o600
    secret = bytes(PrivateKey.from_der((network / "teos_sk.der").read_bytes()).secret)
    assert stat.S_ISSOCK((network / "worker.sock").stat().st_mode)  # the worker channel (F5), in here too
    assert mode(network / "worker.sock") == 0o600
    teosd.stop()
    assert not (network / "worker.sock").exists()
    assert files_holding(network / "db", secret) == []
    for log in (datadir / "teosd-own.log", teosd.log_path):
        text = log.read_bytes()
        assert secret not in text and secret.hex().encode() not in text
