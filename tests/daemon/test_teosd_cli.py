"""teosd's command line: ``--help`` and the configuration errors that stop it (exit status and message)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_help_documents_the_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "teos", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "--btcrpccookie" in result.stdout and "--zmqhashblock" in result.stdout


def _teosd_exit(datadir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TEOS_")}
    result = subprocess.run(
        [sys.executable, "-m", "teos", "--datadir", str(datadir), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("conf", "args", "env", "expected"),
    [
        ("[teos]\nnosuchkey = 1\n", [], {}, "unknown key 'nosuchkey'"),
        ("[teos]\napiport\n", [], {}, "malformed"),
        ("apiport = 99999\n", [], {}, "invalid value for apiport"),
        ("", ["--btcnetwork", "moon"], {}, "unknown network"),
        ("", [], {"TEOS_EXPIRYDELTA": "-3"}, "TEOS_EXPIRYDELTA"),
    ],
)
def test_configuration_errors_exit_non_zero_naming_the_problem(
    tmp_path: Path, conf: str, args: list[str], env: dict[str, str], expected: str
) -> None:
    (tmp_path / "teos.conf").write_text(conf)
    status, stderr = _teosd_exit(tmp_path, *args, env=env)
    assert status != 0
    assert expected in stderr
