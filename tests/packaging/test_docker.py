"""The Dockerfile as text, and its build by a Docker engine where one runs (the client alone is not enough).

The image is built and run for real with podman in ``test_container.py``; these checks hold the promises
that test cannot see from inside: the default base stays the official Python image (what ``docker build .``
uses), and the layers stay in a cache-friendly order.
"""

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


def test_dockerfile_defaults_to_the_official_python_image_and_installs_dependencies_first() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "ARG BASE=python:3.11-slim" in lines
    assert "FROM ${BASE}" in lines
    order = [next(i for i, line in enumerate(lines) if line.startswith(prefix)) for prefix in (
        "COPY requirements.txt", "RUN pip install -r", "COPY teos", "RUN pip install --no-deps", "USER teos",
        'VOLUME ["/data"]',
    )]  # fmt: skip
    assert order == sorted(order), "dependencies before the code, the code before USER and VOLUME"


@pytest.mark.skipif(not _engine_available(), reason="no Docker engine running here (docker info failed)")
def test_docker_image_builds() -> None:
    cmd = ["docker", "build", "-q", "-t", "teos-test:ci", str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
