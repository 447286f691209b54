"""teos's image, built from the working tree with podman and run for real.

The image is built once per module on the local Debian base (``scripts/container-setup`` makes it; see
``tests/packaging/container.py`` for why podman and which options). Then: the entry points run in it, it
runs as the unprivileged user ``teos``, its HEALTHCHECK tells a dead tower from a live one, and teosd in a
container guards a channel against the ``bitcoind`` fixture (the simulator, and real Bitcoin Core when one
is found) over the host's loopback, keeps its files to itself, stops with exit status 0 on SIGTERM and
comes back with the same key and appointments from its volume. Without podman, root, the base image or
PyPI the tests are skipped, and the reason says what to run (they fail instead under
TEOS_REQUIRE_CONTAINER=1, as in CI).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.client import TowerClient
from common.types import Dialect, UserId
from tests.packaging.container import (
    BuiltImage,
    Container,
    ContainerError,
    build_image,
    container_required,
    inspect_image,
    podman,
    pypi_unreachable,
    run_options,
    unavailable_reason,
)
from tests.support.bitcoind import BitcoindHandle, free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
NOBODY = "65534:65534"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def skip_or_fail(reason: str) -> None:
    if container_required():
        pytest.fail(f"TEOS_REQUIRE_CONTAINER is set: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    workdir = tmp_path_factory.mktemp("image")
    try:
        built = build_image(ROOT, workdir)
    except ContainerError:
        offline = pypi_unreachable()
        if offline is not None:
            skip_or_fail(f"{offline} (run the tests where PyPI answers)")
        raise
    print(f"image {built.image_id[:12]} built on {built.base} in {built.seconds:.1f} s")
    return built


def run_once(
    image: BuiltImage, *args: str, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman run --rm`` of the image with this machine's options; returns the finished process."""
    chosen = ["--entrypoint", entrypoint] if entrypoint else []
    return podman("run", "--rm", *run_options(), *chosen, image.image_id, *args, timeout=120)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    """Containers a test starts; each one's log tail is printed (shown on failure) and it is removed."""
    started: list[Container] = []
    try:
        yield started
    finally:
        for container in started:
            tail = "\n".join(container.logs().splitlines()[-60:])
            print(f"--- last lines of {container.name}'s log:\n{tail}")
            container.remove()


def test_the_entry_points_run_in_the_image(image: BuiltImage) -> None:
    done = run_once(image, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: teosd") and "--btcrpcconnect" in done.stdout
    for tool in ("teos-cli", "teos-client", "teos-regtest"):
        done = run_once(image, "--help", entrypoint=tool)
        assert done.returncode == 0, f"{tool}: {done.stderr}"
        assert done.stdout.startswith(f"usage: {tool}"), done.stdout[:200]


def test_the_image_runs_teosd_as_teos_with_a_private_datadir(image: BuiltImage) -> None:
    inspected = inspect_image(image.image_id)
    config = inspected["Config"]
    assert config["User"] == "teos"
    assert config["Entrypoint"] == ["teosd"]  # exec form: teosd is PID 1 and gets the engine's SIGTERM
    healthcheck = inspected.get("Healthcheck") or config.get("Healthcheck")  # podman's place, Docker's
    assert healthcheck is not None, "no HEALTHCHECK in the image (built in OCI format?)"
    assert healthcheck["Test"] == ["CMD", "teos-cli", "--timeout", "5", "gettowerinfo"]
    assert "/data" in config["Volumes"]

    done = run_once(image, "-c", 'id -u; id -un; stat -c "%U:%G %a" /data', entrypoint="sh")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["10001", "teos", "teos:teos 700"]


def test_the_healthcheck_fails_while_teosd_is_not_running(
    image: BuiltImage, containers: list[Container]
) -> None:
    idle = Container(image.image_id, ["600"], env={}, entrypoint="sleep")
    containers.append(idle)
    idle.start()
    check = idle.healthcheck()
    assert check.returncode != 0, "the HEALTHCHECK passed although no teosd runs in the container"


def teos_cli(container: Container, *args: str) -> Any:
    done = container.exec("teos-cli", *args)
    assert done.returncode == 0, f"teos-cli {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


def wait_healthy(container: Container, timeout: float = 120.0) -> None:
    """Waits until the image's HEALTHCHECK passes; fails at once if the container stopped."""

    def healthy() -> bool:
        state = container.state()
        if not state["Running"]:
            raise AssertionError(f"the container exited with {state['ExitCode']} before becoming healthy")
        return container.healthcheck().returncode == 0

    wait_until(healthy, timeout=timeout, interval=0.5, message="the HEALTHCHECK did not pass")


def stop_with_sigterm(container: Container) -> int:
    container.signal("TERM")
    return container.wait_exit(timeout=90)


def check_private(container: Container) -> None:
    """Nobody but teosd's user can read anything under /data: /data itself is closed to others (so every
    file below is out of their reach, whatever its mode), the key and the cookie are 0600, and another
    user of the container is refused, not just unlikely to look."""
    done = container.exec("find", "/data", "-printf", r"%m %u %p\n")
    assert done.returncode == 0, done.stderr
    entries: dict[str, tuple[int, str]] = {}
    for line in done.stdout.splitlines():
        mode, owner, path = line.split(" ", 2)
        entries[path] = (int(mode, 8), owner)
    assert entries["/data"][0] & 0o077 == 0, f"/data is open to others: {entries['/data'][0]:o}"
    assert {owner for _, owner in entries.values()} == {"teos"}, entries
    for secret in ("/data/regtest/teos_sk.der", "/data/regtest/.cookie"):
        assert entries[secret][0] == 0o600, f"{secret} has mode {entries[secret][0]:o}"
    for command in (["ls", "/data"], ["cat", "/data/regtest/teos_sk.der"], ["cat", "/data/regtest/db/LOG"]):
        refused = container.exec(*command, user=NOBODY)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, (command, refused)


def test_teosd_in_the_container_guards_a_channel_and_stops_cleanly(
    image: BuiltImage, bitcoind: BitcoindHandle, containers: list[Container]
) -> None:
    wallet = bitcoind.wallet()
    wallet.fund()
    api_port, admin_port = free_port(), free_port()
    tower = Container(
        image.image_id,
        ["--btcrpcconnect", "127.0.0.1", "--btcrpcport", str(bitcoind.rpc_port),
         "--btcrpcuser", bitcoind.rpc_user, "--btcrpcpassword", bitcoind.rpc_password,
         "--zmqhashblock", bitcoind.zmq_url],
        # The network and the admin port as environment variables, so that the HEALTHCHECK's teos-cli
        # finds the cookie and the port teosd uses (as the Dockerfile's header advises).
        env={"TEOS_BTCNETWORK": "regtest", "TEOS_APIBIND": "127.0.0.1", "TEOS_APIPORT": str(api_port),
             "TEOS_RPCPORT": str(admin_port), "TEOS_APIWORKERS": "1"},
    )  # fmt: skip
    containers.append(tower)
    tower.start()
    wait_healthy(tower)
    info = teos_cli(tower, "gettowerinfo")
    assert info["ready"] is True and info["tip_height"] == bitcoind.rpc("getblockcount")
    tower_id = UserId.from_hex(info["tower_id"])

    # A user of the tower, on the host, registers and hands it the penalty for a revoked commitment.
    user = TowerClient("127.0.0.1", api_port, Dialect.RUST)
    user.check_registration(user.register(), tower_id)
    pair = wallet.breach_pair()
    sent = user.add_appointment(pair.commitment.txid, pair.penalty.raw)
    user.check_appointment(sent, tower_id)

    # The cheater broadcasts the revoked commitment; the tower in the container answers with the penalty.
    bitcoind.rpc("sendrawtransaction", pair.commitment.hex)
    bitcoind.mine(1)
    wait_until(lambda: pair.penalty.txid.hex() in bitcoind.rpc("getrawmempool"), timeout=60,
               message="the tower did not broadcast the penalty")  # fmt: skip

    check_private(tower)

    # docker/podman stop: SIGTERM to PID 1, which is teosd itself; it stops cleanly and exits 0.
    assert stop_with_sigterm(tower) == 0
    assert "teosd stopped status=0" in tower.logs()  # granian takes the signal once it serves: no own line

    # Started again on the same volume: the same tower, still knowing what it did.
    tower.restart()
    wait_healthy(tower)
    assert teos_cli(tower, "gettowerinfo")["tower_id"] == tower_id.hex()
    status, body = user.get_appointment(sent.locator)
    assert status == 200 and body["status"] == "dispute_responded", body
    user.close()
    assert stop_with_sigterm(tower) == 0
