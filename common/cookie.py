"""The admin API's cookie: proof that the caller can read the tower's datadir.

Bitcoin Core's convention: at start the daemon writes ``<dir>/.cookie`` holding ``__cookie__:<hex>`` (a fresh
random 32-byte secret), readable only by its owner (0600), and deletes it at stop. ``teos-cli`` reads the
file and sends it as HTTP basic auth. Whoever can read the datadir can administer the tower; nobody else
can, even on the same host, and the secret changes at every start so an old copy is worthless.

The file is created atomically (a temporary file opened with O_EXCL and mode 0600, then renamed), so it is
never readable by others, not even for an instant, and a reader never sees a half-written secret.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from common.fsutil import write_private_file

COOKIE_USER = "__cookie__"
COOKIE_FILE = ".cookie"


class CookieError(OSError):
    """The cookie file is missing or unreadable (the tower is not running, or this user cannot read it)."""


def cookie_path(directory: str | Path) -> Path:
    return Path(directory) / COOKIE_FILE


def write_cookie(directory: str | Path) -> str:
    """Writes a fresh cookie to ``<directory>/.cookie`` (mode 0600) and returns its secret (hex)."""
    secret = secrets.token_hex(32)
    write_private_file(cookie_path(directory), f"{COOKIE_USER}:{secret}".encode("ascii"))
    return secret


def remove_cookie(directory: str | Path) -> None:
    """Deletes the cookie file (nothing happens if it is already gone)."""
    with contextlib.suppress(FileNotFoundError):
        cookie_path(directory).unlink()


def read_cookie(directory: str | Path) -> tuple[str, str]:
    """The (user, secret) pair stored in ``<directory>/.cookie``; CookieError if it cannot be read."""
    path = cookie_path(directory)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        hint = "is teosd running with this datadir and network?"
        raise CookieError(f"no cookie file at {path}: {hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CookieError(f"cannot read the cookie file {path}: {e}") from None
    user, sep, secret = text.partition(":")
    if not sep or not secret:
        raise CookieError(f"malformed cookie file {path}")
    return user, secret
