"""Loads the known-answer vectors the repository carries (``tests/vectors/``, see its README).

The directory can be overridden with TEOS_VECTORS_DIR (to check a newer copy). A missing file is an
error, not a skip: without the vectors the byte formats would go untested.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.types import Dialect

FILES = {Dialect.PYTHON: "python-teos.json", Dialect.RUST: "rust-teos.json"}


def vectors_dir() -> Path:
    override = os.environ.get("TEOS_VECTORS_DIR")
    if override:
        candidates = [Path(override)]
    else:
        candidates = [Path(__file__).resolve().parents[1] / "vectors"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in FILES.values()):
            return candidate
    raise FileNotFoundError(
        "known-answer vectors not found; looked in "
        + ", ".join(str(c) for c in candidates)
        + " for "
        + ", ".join(FILES.values())
        + " (set TEOS_VECTORS_DIR to the folder that holds them)"
    )


def load(dialect: Dialect) -> dict[str, Any]:
    with open(vectors_dir() / FILES[dialect], encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def cases(section: str) -> list[Any]:
    """pytest params ``(dialect, entry, tower)`` for every entry of ``section`` in both files."""
    import pytest

    params = []
    for dialect in Dialect:
        data = load(dialect)
        for index, entry in enumerate(data.get(section, [])):
            test_id = f"{FILES[dialect].removesuffix('.json')}-{index}"
            params.append(pytest.param(dialect, entry, data["tower"], id=test_id))
    return params
