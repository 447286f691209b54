"""contrib/teosd.service: systemd accepts it, and its hardening stays where it was measured."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "teosd.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")


def test_unit_has_the_required_settings() -> None:
    text = UNIT.read_text()
    for line in [
        "Type=simple", "Restart=on-failure", "User=teos",
        "ExecStart=/usr/local/bin/teosd --datadir=/var/lib/teos",
        "StateDirectory=teos", "NoNewPrivileges=true", "ProtectSystem=strict", "ProtectHome=true",
        "PrivateTmp=true", "PrivateDevices=true", "ProtectKernelTunables=true", "ProtectKernelModules=true",
        "ProtectControlGroups=true", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=true", "LockPersonality=true", "MemoryDenyWriteExecute=true",
        "SystemCallFilter=@system-service", "CapabilityBoundingSet=", "UMask=0077",
    ]:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line


@needs_systemd
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists: point it at an executable that does, keep the rest.
    unit = tmp_path / "teosd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/teosd", sys.executable))
    result = subprocess.run([str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "teosd.service" not in result.stderr, result.stderr  # no warning about the unit


@needs_systemd
def test_systemd_analyze_security_exposure() -> None:
    result = subprocess.run([str(SYSTEMD_ANALYZE), "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for teosd\.service: ([0-9.]+)", result.stdout + result.stderr)
    if match is None:
        pytest.skip("this systemd-analyze has no offline security analysis")
    assert float(match.group(1)) <= 1.5, result.stdout
