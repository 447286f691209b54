"""The client side of the load benchmarks: signed requests fired over keep-alive HTTP from several processes.

Each client process registers its own users and builds every signed ``add_appointment`` body *before*
the clock starts (so the client's ECDSA work is not timed), waits on a barrier, then fires them from a few
threads, each on its own keep-alive ``http.client`` connection, recording per-request latency. The parent
takes the wall time from the first request to the last answer across all processes. Only HTTP 200 answers
count as accepted; the tower answers only once the appointment is synced to disk.

Used by ``bench/load.py`` (this tower against python-teos) and ``bench/load_servers.py`` (serving options).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from urllib.parse import urlsplit

from common.appointment import Appointment
from common.client import TowerClient
from common.crypto import generate_secret_key, sign
from common.messages import add_appointment_body
from common.types import Dialect, Locator


@dataclass(frozen=True)
class LoadResult:
    """What one run measured."""

    sent: int
    accepted: int
    seconds: float
    latencies_ms: list[float]  # of accepted requests, sorted
    first_error: str

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        index = min(len(self.latencies_ms) - 1, round(p / 100 * (len(self.latencies_ms) - 1)))
        return self.latencies_ms[index]

    def line(self, label: str) -> str:
        return (
            f"{label:<28} {self.rate:8.0f} appointments/s  accepted {self.accepted}/{self.sent}"
            f"  p50 {self.percentile(50):6.1f} ms  p90 {self.percentile(90):6.1f} ms"
            f"  p99 {self.percentile(99):6.1f} ms"
            + (f"  first error: {self.first_error}" if self.first_error else "")
        )


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def register(url: str, secret_key: bytes, dialect: Dialect) -> None:
    """Registers the user of ``secret_key`` in ``dialect`` (``common.http.HttpError`` unless HTTP 200)."""
    client = TowerClient.at(url, dialect, secret_key)
    try:
        client.register()
    finally:
        client.close()


def build_appointments(secret_key: bytes, count: int, blob_size: int, seed: int) -> list[bytes]:
    """``count`` signed add_appointment bodies with distinct locators (random blobs of ``blob_size``)."""
    bodies = []
    for i in range(count):
        locator = Locator(seed.to_bytes(8, "big") + i.to_bytes(8, "big"))
        appointment = Appointment(locator, os.urandom(blob_size), 20)
        signature = sign(appointment.serialize(), secret_key)
        bodies.append(json.dumps(add_appointment_body(appointment, signature)).encode())
    return bodies


def _client_process(
    url: str, index: int, count: int, threads: int, users: int, blob_size: int, dialect_value: str,
    barrier: Barrier, results: mp.Queue,
) -> None:
    dialect = Dialect(dialect_value)
    try:
        keys = [generate_secret_key() for _ in range(users)]
        for key in keys:
            register(url, key, dialect)
        seed = (index << 32) | int.from_bytes(os.urandom(4), "big")
        per_user = -(-count // users)
        bodies: list[bytes] = []
        for n, key in enumerate(keys):
            bodies += build_appointments(key, min(per_user, count - len(bodies)), blob_size, seed + (n << 24))
    except Exception as e:
        barrier.abort()
        results.put((0, 0, 0.0, 0.0, [], f"client {index} setup failed: {e}"))
        return
    parts = urlsplit(url)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    accepted = 0
    position = iter(range(len(bodies)))

    def worker() -> None:
        nonlocal accepted
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        mine: list[float] = []
        ok = 0
        while True:
            with lock:
                i = next(position, None)
            if i is None:
                break
            started = time.perf_counter()
            try:
                status, answer = _post(conn, "/add_appointment", bodies[i])
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
                continue
            if status == 200:
                ok += 1
                mine.append((time.perf_counter() - started) * 1000)
            elif not errors:
                errors.append(f"HTTP {status}: {answer[:200]!r}")
        conn.close()
        with lock:
            accepted += ok
            latencies.extend(mine)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    barrier.wait()
    started = time.time()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    results.put((len(bodies), accepted, started, time.time(), latencies, errors[0] if errors else ""))


def run_load(
    url: str, *, processes: int = 2, threads: int = 8, appointments: int = 10000, users_per_process: int = 4,
    blob_size: int = 200, dialect: Dialect = Dialect.RUST,
) -> LoadResult:
    """Fires ``appointments`` signed add_appointment requests at ``url`` and measures them."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes)
    results: mp.Queue = ctx.Queue()
    share = -(-appointments // processes)
    procs = [
        ctx.Process(
            target=_client_process,
            args=(url, i, share, threads, users_per_process, blob_size, dialect.value, barrier, results),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    collected = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    sent = sum(r[0] for r in collected)
    accepted = sum(r[1] for r in collected)
    starts = [r[2] for r in collected if r[2]]
    ends = [r[3] for r in collected if r[3]]
    latencies = sorted(x for r in collected for x in r[4])
    first_error = next((r[5] for r in collected if r[5]), "")
    seconds = (max(ends) - min(starts)) if starts and ends else 0.0
    return LoadResult(sent, accepted, seconds, latencies, first_error)
