"""Loads the BIP known-answer vectors the repository carries (``tests/vectors/bip143.json``, ``bip174.json``).

Like the dialect vectors, a missing file is an error, not a skip (see ``tests/vectors/README.md``).
"""

from __future__ import annotations

import json
from typing import Any

from tests.common.vectors import vectors_dir


def load(name: str) -> dict[str, Any]:
    path = vectors_dir() / name
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data
