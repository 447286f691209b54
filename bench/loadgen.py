"""The client side of the load benchmarks: users registered and every body signed before the clock starts,
then fired by ``wrk`` (a C load generator, so the client is not the limit) through
``bench/wrk/add_appointment.lua``.

Bodies are distinct (each has its own locator), signed by ``users`` keys taken in turn, so requests in
flight come from different users as they would on a public tower. A run reports the accepted (HTTP 200)
answers per second and wrk's latency percentiles; every other answer counts as refused. wrk keeps its
connections alive where the server allows it (python-teos's gunicorn closes them after each answer).

Used by ``bench/load.py`` (this tower against python-teos) and ``bench/load_servers.py`` (serving options).
Needs ``wrk`` on PATH (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.appointment import Appointment
from common.client import PYTHON_TEOS_USER_AGENT, TowerClient
from common.crypto import generate_secret_key, sign
from common.messages import add_appointment_body
from common.types import Dialect, Locator

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "add_appointment.lua"


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured (times in seconds and milliseconds)."""

    seconds: float
    requests: int
    ok: int
    refused: int
    reused: int  # bodies sent a second time because a wrk thread ran out of them
    socket_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    first_error: str

    @property
    def rate(self) -> float:
        """Accepted appointments per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def line(self, label: str) -> str:
        problems = []
        if self.refused:
            problems.append(f"refused {self.refused} (first: {self.first_error})")
        if self.socket_errors or self.timeouts:
            problems.append(f"socket errors {self.socket_errors}, timeouts {self.timeouts}")
        if self.reused:
            problems.append(f"bodies ran out {self.reused} times: later requests were updates")
        return (
            f"{label:<24} {self.rate:8.0f} appointments/s  accepted {self.ok}/{self.requests} in "
            f"{self.seconds:.1f} s  p50 {self.p50_ms:6.1f} ms  p90 {self.p90_ms:6.1f} ms"
            f"  p99 {self.p99_ms:6.1f} ms"
            + ("  " + "; ".join(problems) if problems else "")
        )


def user_agent(dialect: Dialect) -> str | None:
    """The User-Agent each client family sends (the rust-teos plugin's reqwest sends none)."""
    return PYTHON_TEOS_USER_AGENT if dialect is Dialect.PYTHON else None


def register(url: str, secret_key: bytes, dialect: Dialect, times: int = 1) -> None:
    """Registers the user of ``secret_key`` ``times`` times (each adds slots); ``common.http.HttpError``
    unless HTTP 200."""
    client = TowerClient.at(url, dialect, secret_key)
    try:
        for _ in range(times):
            client.register()
    finally:
        client.close()


def _sign_chunk(args: tuple[list[bytes], int, int, int, int]) -> list[bytes]:
    keys, start, stop, blob_size, seed = args
    out = []
    for i in range(start, stop):
        key = keys[i % len(keys)]
        locator = Locator(seed.to_bytes(8, "big") + i.to_bytes(8, "big"))
        appointment = Appointment(locator, os.urandom(blob_size), 20)
        signature = sign(appointment.serialize(), key)
        out.append(json.dumps(add_appointment_body(appointment, signature)).encode())
    return out


def sign_bodies(keys: Sequence[bytes], count: int, blob_size: int) -> list[bytes]:
    """``count`` add_appointment bodies with distinct locators, body ``i`` signed by ``keys[i % len]``."""
    seed = int.from_bytes(os.urandom(8), "big")
    workers = max(1, os.cpu_count() or 1)
    step = -(-count // workers)
    chunks = [(list(keys), s, min(s + step, count), blob_size, seed) for s in range(0, count, step)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_sign_chunk, chunks)
    return [body for part in parts for body in part]


def prepare(
    url: str, path: Path, *, users: int, bodies: int, blob_size: int, dialect: Dialect, registrations: int = 1
) -> Path:
    """Registers ``users`` fresh users at ``url`` and writes ``bodies`` signed bodies to ``path``."""
    keys = [generate_secret_key() for _ in range(users)]
    for key in keys:
        register(url, key, dialect, registrations)
    signed = sign_bodies(keys, bodies, blob_size)
    path.write_bytes(b"\n".join(signed) + b"\n")
    return path


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk not found on PATH (Debian/Ubuntu: apt-get install wrk)")
    return found


def run_wrk(
    url: str,
    bodies: Path,
    *,
    connections: int = 16,
    seconds: float = 20.0,
    threads: int = 1,
    dialect: Dialect = Dialect.RUST,
) -> LoadResult:
    """Fires the bodies at ``url``/add_appointment from ``connections`` connections for ``seconds``."""
    out = subprocess.run(
        [
            wrk_binary(), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
            "--timeout", "30s",
            "-s", str(LUA_SCRIPT), url, "--", str(bodies), str(threads), user_agent(dialect) or "",
        ],
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    match = re.search(r"^WRK_RESULT (\{.*\})$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed (exit {out.returncode}): {out.stderr.strip() or out.stdout[-500:]}")
    r = json.loads(match.group(1))
    return LoadResult(
        seconds=r["seconds"], requests=r["requests"], ok=r["ok"], refused=r["refused"], reused=r["reused"],
        socket_errors=r["socket_errors"], timeouts=r["timeouts"], p50_ms=r["p50_ms"], p90_ms=r["p90_ms"],
        p99_ms=r["p99_ms"], max_ms=r["max_ms"], first_error=r["first_error"],
    )  # fmt: skip
