"""The Docker image builds, where a Docker engine is available (the client alone is not enough)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    return probe.returncode == 0


def test_dockerfile_runs_teosd_as_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER teos" in text
    assert 'ENTRYPOINT ["teosd"]' in text  # exec form: teosd is PID 1 and gets SIGTERM
    assert "HEALTHCHECK" in text and "teos-cli" in text
    assert 'VOLUME ["/data"]' in text


@pytest.mark.skipif(not _engine_available(), reason="no Docker engine running here (docker info failed)")
def test_docker_image_builds() -> None:
    cmd = ["docker", "build", "-q", "-t", "teos-test:ci", str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
