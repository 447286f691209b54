"""Keeping teosd's files to its own user: umask 077, and a private datadir checked at every start.

With the default umask (022) the datadir, ``<network>/`` and ``db/`` were created 0755 and LevelDB's files
0644, so every local user could read the database (which then held the tower's secret key) and the
configuration (which may hold the bitcoind RPC password). The systemd unit's ``UMask=0077`` hid this; a
manual run, or the README's ``~/.teos``, did not.

Now teosd sets umask 077 before it creates anything (``restrict_umask``), and ``secure_datadir`` checks
the datadir, the network directory and ``db/`` before the database opens: each is created 0700 if
missing; one that others may read or enter is made 0700, and so are the files teosd owns in it that
others may read (LevelDB's files, the key file, ``teos.conf``, the log file), each change logged. If teosd
cannot do that (the directory belongs to another user, a read-only filesystem), it refuses to start and
says why.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from teos.config import Config
from teos.fatal import FatalError

log = logging.getLogger(__name__)

UMASK = 0o077


def restrict_umask() -> None:
    """Files and directories teosd (and its API workers) create from now on are its user's alone."""
    os.umask(UMASK)


def _make_private(path: Path, private_mode: int) -> None:
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    euid = os.geteuid()
    if st.st_uid != euid:
        raise FatalError(f"{path} is open to other users (mode {mode:o}) and belongs to uid {st.st_uid}, not "
                         f"to teosd's user ({euid}): give it to uid {euid}, or chmod {private_mode:o} it")
    try:
        os.chmod(path, private_mode)
    except OSError as e:
        raise FatalError(f"{path} is open to other users (mode {mode:o}) and cannot be made private: "
                         f"{e.strerror}; chmod {private_mode:o} it") from e
    log.warning("made private path=%s mode=%o was=%o", path, private_mode, mode)


def _private_dir(path: Path) -> None:
    if not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True)
        except OSError as e:
            raise FatalError(f"cannot create {path}: {e.strerror}") from e
        os.chmod(path, 0o700)  # whatever the umask was
        return
    if not path.is_dir():
        raise FatalError(f"{path} is not a directory")
    _make_private(path, 0o700)


def _private_files(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.is_file() and not path.is_symlink():
            _make_private(path, 0o600)


def secure_datadir(config: Config) -> None:
    """Creates or checks the datadir, ``<network>/`` and ``db/`` (see the module docstring)."""
    for directory in (config.datadir, config.network_dir, config.db_path):
        _private_dir(directory)
    files = [*config.db_path.iterdir(), config.key_path, config.datadir / "teos.conf"]
    if config.log_file is not None:
        files.append(config.log_file)
    _private_files(files)
