"""The tower key: one file, ``<datadir>/<network>/teos_sk.der``, and nowhere else in plaintext.

The file holds the secp256k1 secret key in DER (the format python-teos used, so its key file can be
brought over), mode 0600, written atomically (``common.fsutil.write_private_file``). The database keeps only
the tower id (the public key, ``m|tower_id``), so teosd can tell a lost or a foreign key file from a new
tower, and it never logs the secret.

Earlier versions also kept the secret in the database (``m|tower_key``), where it ended up in LevelDB's
files, readable by whoever could read the datadir. On the first start of this version the copy is
migrated away: if the key file is missing it is first restored from the copy, then the copy is deleted
and the database compacted, so no file of the database holds the secret any more (copies of the
database taken earlier still do: delete them, or keep them as safely as the key file).

If the key file is lost after that, teosd refuses to start: the database belongs to a tower whose key is
gone. Restore ``teos_sk.der`` from a backup, or start once with ``--overwritekey`` to make a new key. The
tower id then changes: receipts signed under the old id no longer match it, and every user must register
again (the appointments already stored keep being watched until their subscriptions expire).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from coincurve import PrivateKey

from common import crypto
from common.fsutil import write_private_file
from teos.fatal import FatalError
from teos.storage import keys
from teos.storage.store import Batch, Store

log = logging.getLogger(__name__)


def _read_key_file(path: Path) -> bytes:
    try:
        secret = bytes(PrivateKey.from_der(path.read_bytes()).secret)
    except Exception as e:
        raise FatalError(f"cannot read the tower key {path}: {e}; restore it, or start with "
                         "--overwritekey to make a new one (users must then register again)") from e
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as e:
            raise FatalError(f"the tower key {path} is readable by other users (mode {mode:o}) and cannot "
                             f"be made private: {e.strerror}; chmod 600 it") from e
        log.warning("tower key file was readable by other users path=%s mode=%o; it is now 600", path, mode)
    return secret


def load_or_create_key(path: Path, store: Store, overwrite: bool) -> bytes:
    """The tower's 32-byte secret key (see the module docstring for where it lives and why)."""
    legacy = store.get(keys.META_TOWER_KEY)
    recorded_id = store.get(keys.META_TOWER_ID)
    if overwrite:
        log.warning("replacing the tower key (--overwritekey); registered users must register again")
        secret = crypto.generate_secret_key()
        write_private_file(path, PrivateKey(secret).to_der())
    elif path.exists():
        secret = _read_key_file(path)
        tower_id = crypto.public_key(secret).raw
        if recorded_id is not None and recorded_id != tower_id:
            raise FatalError(f"the tower key {path} belongs to tower {tower_id.hex()}, but the database at "
                             f"{store.path} to tower {recorded_id.hex()}: restore that tower's key file, or "
                             "start with --overwritekey to give this database a new key (users must "
                             "then register again)")
        if legacy is not None and legacy != secret:
            log.warning("the database held another tower key than %s; the file's is kept", path)
    elif legacy is not None and len(legacy) == 32:
        secret = legacy
        write_private_file(path, PrivateKey(secret).to_der())
        log.warning("tower key file missing, restored from the copy an older teosd kept in the database "
                    "path=%s", path)
    elif recorded_id is not None:
        raise FatalError(f"the tower key {path} is missing, and the database at {store.path} belongs to "
                         f"tower {recorded_id.hex()}: restore teos_sk.der from a backup, or start with "
                         "--overwritekey to make a new key (the tower id changes and users must register "
                         "again)")
    else:
        secret = crypto.generate_secret_key()
        write_private_file(path, PrivateKey(secret).to_der())
        log.info("tower key created path=%s", path)
    tower_id = crypto.public_key(secret).raw
    if legacy is not None:
        # LevelDB keeps a deleted value in its files until a compaction merges it with the deletion. A
        # compaction first moves the copy out of the in-memory table into a table file, so that the one
        # after the deletion merges the two (in one memtable flush both would be written out together).
        store.compact()
    if recorded_id != tower_id or legacy is not None:
        batch = Batch()
        batch.put(keys.META_TOWER_ID, tower_id)
        if legacy is not None:
            batch.delete(keys.META_TOWER_KEY)
        store.commit(batch)
    if legacy is not None:
        store.compact()
        log.info("tower key removed from the database; it now lives only in path=%s", path)
    return secret
