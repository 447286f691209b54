"""Files only their owner may read: the tower key, the admin cookie, a client's key and receipts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private_file(path: Path, data: bytes, *, dir_mode: int = 0o700) -> None:
    """Writes ``data`` to ``path`` atomically with mode 0600: never readable by others, even briefly,
    and never seen half-written (a temporary file opened with O_EXCL, fsynced, renamed, the directory
    fsynced). Missing parent directories are created with ``dir_mode``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
