"""Building and running teos's image with rootful podman, for the packaging tests.

No Docker engine runs on the project's machines and no container registry can be reached, so the tests use
Debian's podman and a base image made locally by ``scripts/container-setup`` (a debootstrapped Debian
bookworm root with python3 and python3-venv, imported as ``localhost/teos-base:bookworm``); the Dockerfile
takes it as ``--build-arg BASE``. ``$TEOS_CONTAINER_BASE`` names another base (e.g. ``python:3.11-slim``
where it has been pulled).

What these machines need, and why:
- explicit ``--ulimit``s for runs: podman's default open-file and process limits for rootful containers
  exceed this sandbox's hard limits, which root may not raise here, and runc then refuses to start.
- ``--network host`` for builds and runs: pip reaches PyPI, and every test socket stays on 127.0.0.1 (no
  bridge network, no private-range address).
- the host's CA bundle mounted over the image's during the build: where HTTPS is inspected by a proxy, pip
  (told by the Dockerfile to use the system store) must trust its CA. Mounts are not part of the image.
- ``--runtime runc --cgroup-manager=cgroupfs``: what podman picks here anyway (no systemd, no crun), said
  explicitly so that a machine with either behaves the same.
- ``--isolation chroot`` for builds: RUN steps need no OCI runtime (some of these machines were seen to need
  it; where both work, both take the same time).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BASE = "localhost/teos-base:bookworm"
IMAGE_TAG = "localhost/teos:test"
SETUP = "scripts/container-setup"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]
CA_BUNDLE_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"


class ContainerError(AssertionError):
    """A podman command failed where the test needed it to succeed (an AssertionError: a test failure)."""


def base_image() -> str:
    return os.environ.get("TEOS_CONTAINER_BASE") or DEFAULT_BASE


def podman(*args: str, timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``podman <args>`` with this machine's options; with ``check``, raises ContainerError on failure."""
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ContainerError(
            f"podman {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    return done


def container_required() -> bool:
    """True where the image tests must fail instead of skipping (CI sets TEOS_REQUIRE_CONTAINER=1 after
    running scripts/container-setup, so that a broken set-up cannot pass as a skip)."""
    return os.environ.get("TEOS_REQUIRE_CONTAINER", "") not in ("", "0")


def unavailable_reason() -> str | None:
    """Why the image cannot be built and run here (a skip message that says what to do), or None."""
    if shutil.which("podman") is None:
        return f"podman is not installed: run `{SETUP}` (as root) to install it and make the base image"
    if os.geteuid() != 0:
        return f"the container tests need root (rootful podman); run them as root after `{SETUP}`"
    base = base_image()
    if podman("image", "exists", base).returncode != 0:
        if base == DEFAULT_BASE:
            return f"the local base image {base} is missing: run `{SETUP}` (as root) to make it"
        return f"the base image {base} ($TEOS_CONTAINER_BASE) is not in podman's store: pull or import it"
    probe = podman("run", "--rm", *run_options(), "--entrypoint", "true", base, timeout=60)
    if probe.returncode != 0:
        return (f"podman cannot run a container here ({probe.stderr.strip()[-400:]}); "
                f"`{SETUP}` installs what it needs")  # fmt: skip
    return None


def run_options() -> list[str]:
    """Options every ``podman run`` here needs: host network (loopback only) and limits within ours."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = min(65536, hard if hard != resource.RLIM_INFINITY else 65536)
    return ["--network", "host", "--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts ($PIP_CERT, else the usual variables, else the system's)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    system = Path(CA_BUNDLE_IN_IMAGE)
    return system if system.is_file() else None


def pypi_unreachable() -> str | None:
    """Why https://pypi.org cannot be reached from here (the build's pip needs it), or None."""
    bundle = host_ca_bundle()
    context = ssl.create_default_context(cafile=str(bundle) if bundle else None)
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=20, context=context) as reply:
            reply.read(1)
    except (OSError, urllib.error.URLError) as e:
        return f"https://pypi.org is unreachable from this machine ({e}); the image build installs from it"
    return None


@dataclass(frozen=True)
class BuiltImage:
    image_id: str
    base: str
    seconds: float
    log: str


def build_image(root: Path, workdir: Path) -> BuiltImage:
    """Builds the Dockerfile in ``root`` on ``base_image()``; the layer cache makes rebuilds cheap."""
    iidfile = workdir / "image-id"
    args = ["build", "--isolation", "chroot", "--network", "host", "--format", "docker",
            "--build-arg", f"BASE={base_image()}", "--iidfile", str(iidfile), "--tag", IMAGE_TAG]  # fmt: skip
    bundle = host_ca_bundle()
    if bundle is not None:
        args += ["--volume", f"{bundle}:{CA_BUNDLE_IN_IMAGE}:ro"]
    started = time.monotonic()
    done = podman(*args, str(root), timeout=1200)
    seconds = time.monotonic() - started
    log = done.stdout + done.stderr
    (workdir / "build.log").write_text(log)
    if done.returncode != 0:
        raise ContainerError(f"podman build failed ({done.returncode}); its log ends:\n{log[-3000:]}")
    return BuiltImage(iidfile.read_text().strip(), base_image(), seconds, log)


def inspect_image(image_id: str) -> dict[str, Any]:
    done = podman("image", "inspect", image_id, check=True)
    result: dict[str, Any] = json.loads(done.stdout)[0]
    return result


class Container:
    """A detached container of the image (host network); ``remove`` kills it, drops its anonymous volume."""

    def __init__(
        self, image_id: str, args: list[str], env: dict[str, str], entrypoint: str | None = None
    ) -> None:
        self.image_id = image_id
        self.args = args
        self.env = env
        self.entrypoint = entrypoint
        self.name = f"teos-test-{uuid.uuid4().hex[:12]}"

    def start(self) -> None:
        options = [f"--env={k}={v}" for k, v in self.env.items()]
        if self.entrypoint:
            options += ["--entrypoint", self.entrypoint]
        # The healthcheck's timer needs systemd, absent here; the tests run the check themselves.
        podman("run", "--detach", "--name", self.name, *run_options(), "--health-interval", "disable",
               *options, self.image_id, *self.args, check=True)  # fmt: skip

    def restart(self) -> None:
        podman("start", self.name, check=True)

    def exec(
        self, *command: str, user: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        who = ["--user", user] if user else []
        return podman("exec", *who, self.name, *command, timeout=timeout)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Runs the image's HEALTHCHECK command now, as the engine would (exit 0: healthy)."""
        return podman("healthcheck", "run", self.name, timeout=60)

    def state(self) -> dict[str, Any]:
        done = podman("container", "inspect", self.name, check=True)
        state: dict[str, Any] = json.loads(done.stdout)[0]["State"]
        return state

    def signal(self, name: str) -> None:
        podman("kill", "--signal", name, self.name, check=True)

    def wait_exit(self, timeout: float) -> int:
        """Waits for the container to exit and returns its exit code (teosd's exit status, as PID 1)."""
        done = podman("wait", self.name, timeout=timeout, check=True)
        return int(done.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        done = podman("logs", self.name, timeout=60)
        return done.stdout + done.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", "--volumes", self.name, timeout=120)  # SIGKILL what still runs
