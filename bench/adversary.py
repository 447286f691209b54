"""Adversarial benchmark: can one client blind the tower, slow it, or read its key?

Starts ``teos-regtest`` and a real ``teosd`` on loopback (temporary datadirs, free ports). A legitimate
client on 127.0.0.3 measures, opening a fresh connection each time as a returning client does: ``/ping``
and ``add_appointment`` on the public API, and ``/ready`` on the admin API, ten times a second each. Then
each attack runs for a bounded time from 127.0.0.2, in its own process (``bench/attacks.py``), and the
table shows per attack the legitimate client's p50, p99 and failures (timeout: 5 s) next to the same
figures with no attack, and the peak RSS (and threads) of teosd's main process.

Attacks (the findings of issue 13):

- ``idle`` (F1): 10,000 connections that never send a byte, reopened as soon as the tower closes them;
  ``slow_headers``: a header that never ends; ``slow_bodies``: a body trickled a byte every 5 s (also
  with only 64 connections, ``slow_bodies_64``: few enough to all reach the API's threads);
- ``big_signature`` (F2): a 64 KB z-base-32 signature, 48 connections; ``flood``: the most expensive
  request the CPU profile finds (below), 48 connections;
- ``junk_methods`` (F4): made-up HTTP methods; also shows /metrics' size and whether the legitimate
  client's requests were still counted;
- ``ipc`` (F5): 1,100 connections to the worker channel that never show the token, as user nobody;
- ``registration_spam`` (F8); ``fill`` (F6, on a second tower with ``--maxappointments 3000``);
- ``big_answers`` (F7): 16 concurrent get_subscription_info of a user holding 100,000 appointments
  (written into the database before teosd starts); ``big_answers_slow``: 64 of them read 4 KiB/s;
- ``admin_idle`` (F9): 10,000 idle connections to the admin port.

Before the attacks, a CPU profile sends each kind of request one at a time and prints the CPU teosd
spends on it (main process and API workers, from /proc). After them, static checks: the datadir's modes
(F3), whether the tower secret appears in the database files (F3), whether the bitcoind RPC password is
on teosd's command line (F10).

Each attack process runs at nice 19: on the internet the attacker's CPU is not the tower's, and here both
share two cores. Nothing leaves loopback; each attack is bounded in time and connections (``--seconds``,
``--connections``); the open-file limit of this process and of the attack processes is raised to the
hard limit. The whole run takes a few minutes. Load on the machine is printed: compare runs made close
together.

    .venv/bin/python bench/adversary.py [--seconds 12] [--connections 10000] [--only idle,flood] [--tor]

With ``--tor`` the attacker and the legitimate client both connect from 127.0.0.1, as every client of a
Tor hidden service does, and teosd is started with ``--behindproxy``: only capacity and timeouts protect it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import attacks
from bench.attacks import Target, raise_nofile, request_maker, source_address
from common import crypto
from common.appointment import Appointment, compute_uuid
from common.types import Dialect, Locator
from teos.devtools import free_port, wait_until
from tests.support.bitcoind import SimulatorHandle
from tests.support.processes import Teosd, teosd_args

LEGIT = "127.0.0.3"
ATTACKER = "127.0.0.2"
TIMEOUT = 5.0  # a legitimate request slower than this counts as a failure
MINER_ADDRESS = "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202"

# Requests profiled for CPU; the ones an attacker can send without holding a big subscription.
REQUEST_KINDS = (
    "ping",
    "register",
    "add_unknown_user_200",
    "add_unknown_user_16k",
    "info_unknown_user",
    "info_64k_signature",
    "get_appointment_unknown",
    "json_64k_nested",
)


# -- /proc -------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return kids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def proc_status(pid: int, field_name: str) -> int:
    """A number from /proc/<pid>/status (``VmRSS`` in kB, ``Threads``); 0 if the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


class Sampler:
    """Samples teosd's main-process RSS and thread count every 0.2 s; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_rss = proc_status(pid, "VmRSS")
        self.peak_rss = self.start_rss
        self.peak_threads = proc_status(pid, "Threads")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, proc_status(self.pid, "VmRSS"))
            self.peak_threads = max(self.peak_threads, proc_status(self.pid, "Threads"))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the tower ----------------------------------------------------------------------------------------


def _has_option(name: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "teos", "--help"], capture_output=True, text=True, check=False
    )
    return f"--{name}" in out.stdout


@dataclass
class Tower:
    """teos-regtest and teosd in ``workdir``; ``extra`` are teosd flags."""

    workdir: Path
    extra: Sequence[str] = ()
    regtest: SimulatorHandle = field(init=False)
    teosd: Teosd = field(init=False)
    api_port: int = 0
    admin_port: int = 0

    @property
    def datadir(self) -> Path:
        return self.workdir / "teos"

    @property
    def network_dir(self) -> Path:
        return self.datadir / "regtest"

    def start_bitcoind(self) -> None:
        self.regtest = SimulatorHandle(self.workdir / "bitcoind")
        self.regtest.start()
        self.mine(101)

    def mine(self, n: int) -> None:
        self.regtest.rpc("generatetoaddress", n, MINER_ADDRESS)

    def tip(self) -> int:
        return int(self.regtest.rpc("getblockcount"))

    def start_teosd(self) -> None:
        self.api_port = free_port()
        args = teosd_args(
            self.datadir,
            self.api_port,
            "127.0.0.1",
            self.regtest.rpc_port,
            self.regtest.rpc_user,
            self.regtest.rpc_password,
            self.regtest.zmq_url,
            ["--pollinterval", "1", *self.extra],
        )
        self.admin_port = int(args[args.index("--rpcport") + 1])
        env: dict[str, str] = {}
        if _has_option("btcrpcpasswordfile"):  # keep the password off the command line when teosd can
            secret_file = self.workdir / "rpcpassword"
            secret_file.write_text(self.regtest.rpc_password)
            secret_file.chmod(0o600)
            i = args.index("--btcrpcpassword")
            args[i : i + 2] = ["--btcrpcpasswordfile", str(secret_file)]
        self.teosd = Teosd(self.datadir, args, self.api_port, env)
        self.teosd.start()
        self.teosd.wait_ready(timeout=60)

    @property
    def pid(self) -> int:
        assert self.teosd.proc is not None
        return self.teosd.proc.pid

    def cookie(self) -> str:
        return base64.b64encode((self.network_dir / ".cookie").read_text().strip().encode()).decode()

    def ipc_address(self) -> str:
        """The socket teosd's workers connect to: ``<network>/worker.sock``, or (teosd before issue 13)
        the abstract ``@teosd-<pid>-...`` listed in /proc/net/unix."""
        if (self.network_dir / "worker.sock").exists():
            return str(self.network_dir / "worker.sock")
        for line in Path("/proc/net/unix").read_text().splitlines():
            name = line.split()[-1] if len(line.split()) >= 8 else ""
            if name.startswith(f"@teosd-{self.pid}-"):
                return "\0" + name[1:]
        return ""

    def stop(self) -> None:
        for p in (getattr(self, "teosd", None), getattr(self, "regtest", None)):
            if p is not None:
                p.stop()


def populate_big_user(tower: Tower, n: int) -> bytes:
    """Writes a python-dialect user holding ``n`` appointments into the (not yet running) tower's
    database, in teosd's own layout; returns the user's secret key."""
    from teos.storage import keys
    from teos.storage.codec import AppointmentRecord, UserRecord
    from teos.storage.store import Batch, Store
    from tests.support.fakes import seed_user

    secret = crypto.generate_secret_key()
    user_id = crypto.public_key(secret)
    tip = tower.tip()
    store = Store(tower.network_dir / "db")
    store.open()
    try:
        batch = Batch()
        batch.put(keys.META_NETWORK, b"regtest")
        batch.put(keys.expiry(tip + 4320 + 6, user_id), b"")
        store.commit(batch)
        signature = crypto.sign(b"x", secret)
        records = []
        for _i in range(n):
            locator = Locator(os.urandom(16))
            records.append(AppointmentRecord(compute_uuid(locator, user_id), locator, os.urandom(100), 20,
                                             user_id, signature, tip, Dialect.PYTHON))  # fmt: skip
        seed_user(store, UserRecord(user_id, Dialect.PYTHON, 10_000_000, tip, tip + 4320), records)
    finally:
        store.close()
    return secret


# -- the legitimate client ---------------------------------------------------------------------------


@dataclass
class Series:
    """Latencies (ms) of successful requests and the failures of one kind of legitimate request."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    first_failure: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, started: float, ok: bool, why: str = "") -> None:
        with self.lock:
            if ok:
                self.latencies.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1
                self.first_failure = self.first_failure or why

    @property
    def sent(self) -> int:
        return len(self.latencies) + self.failures

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    def cell(self) -> str:
        return f"{self.percentile(50):7.1f} {self.percentile(99):7.1f} {self.failures:3d}/{self.sent:<3d}"


class Legit:
    """A returning user on 127.0.0.3: ``/ping``, ``add_appointment`` and the admin ``/ready``, each
    started every ``interval`` seconds whether the previous one has finished or not (a request that
    hangs until the timeout then counts as one failure, not as a gap in the samples), each on a fresh
    connection."""

    def __init__(self, tower: Tower, secret: bytes, interval: float = 0.1) -> None:
        self.tower = tower
        self.secret = secret
        self.interval = interval
        self.ping = Series()
        self.add = Series()
        self.admin = Series()
        self.pings_ok = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(f, s), daemon=True)
            for f, s in ((self._ping, self.ping), (self._add, self.add), (self._admin, self.admin))
        ]
        self._requests: list[threading.Thread] = []

    def _request(
        self,
        port: int,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=TIMEOUT, source_address=source_address(LEGIT)
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _ping(self) -> tuple[bool, str]:
        status, _ = self._request(self.tower.api_port, "GET", "/ping")
        if status == 200:
            self.pings_ok += 1
        return status == 200, f"HTTP {status}"

    def _add(self) -> tuple[bool, str]:
        locator = Locator(os.urandom(16))
        blob = os.urandom(100)
        sig = crypto.sign(Appointment(locator, blob, 20).serialize(), self.secret)
        body = json.dumps(
            {
                "appointment": {"locator": locator.hex(), "encrypted_blob": blob.hex(), "to_self_delay": 20},
                "signature": sig,
            }
        ).encode()
        status, raw = self._request(
            self.tower.api_port, "POST", "/add_appointment", body, {"Content-Type": "application/json"}
        )
        return status == 200, f"HTTP {status} {raw[:80]!r}"

    def _admin(self) -> tuple[bool, str]:
        status, _ = self._request(self.tower.admin_port, "GET", "/ready")
        return status == 200, f"HTTP {status}"

    @staticmethod
    def _one(call: Callable[[], tuple[bool, str]], series: Series) -> None:
        started = time.perf_counter()
        try:
            ok, why = call()
        except Exception as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        series.add(started, ok, why)

    def _loop(self, call: Callable[[], tuple[bool, str]], series: Series) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            thread = threading.Thread(target=self._one, args=(call, series), daemon=True)
            thread.start()
            self._requests.append(thread)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.perf_counter()))

    def __enter__(self) -> Legit:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in [*self._threads, *self._requests]:
            t.join(timeout=TIMEOUT + 5)


def register(tower: Tower, secret: bytes, dialect: Dialect, source: str = LEGIT) -> None:
    field_name = "public_key" if dialect is Dialect.PYTHON else "user_id"
    headers = {"Content-Type": "application/json"}
    if dialect is Dialect.PYTHON:
        headers["User-Agent"] = "python-requests/2.31.0"
    conn = http.client.HTTPConnection(
        "127.0.0.1", tower.api_port, timeout=30, source_address=source_address(source)
    )
    conn.request("POST", "/register", json.dumps({field_name: crypto.public_key(secret).hex()}), headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"registration refused: {response.status} {body[:200]!r}")


# -- measurements -----------------------------------------------------------------------------------


def cpu_profile(tower: Tower, kinds: Sequence[str], big_user_key: bytes, n: int = 200) -> dict[str, float]:
    """CPU milliseconds teosd (main + workers) spends per request of each kind, sent one at a time."""
    result: dict[str, float] = {}
    for kind in kinds:
        make = request_maker(kind, big_user_key)
        count = 1 if kind == "info_big_user" else n  # one: teosd answers a user's big list once per 10 s
        requests = [make(i) for i in range(count)]
        conn = http.client.HTTPConnection(
            "127.0.0.1", tower.api_port, timeout=60, source_address=source_address(LEGIT)
        )
        time.sleep(0.3)
        before = cpu_seconds(tower.pid)
        for method, path, body, headers in requests:
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", tower.api_port, timeout=60, source_address=source_address(LEGIT)
                    )
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(
                    "127.0.0.1", tower.api_port, timeout=60, source_address=source_address(LEGIT)
                )
        time.sleep(0.3)  # let the forwarded metrics of these requests be counted too
        result[kind] = (cpu_seconds(tower.pid) - before) * 1000 / count
        conn.close()
    return result


def admin_cpu_profile(tower: Tower, n: int = 5) -> dict[str, float]:
    """CPU milliseconds teosd spends per admin request (gettowerinfo with the cookie, /metrics)."""
    result: dict[str, float] = {}
    for name, path, auth in (
        ("admin gettowerinfo", "/gettowerinfo", True),
        ("admin /metrics", "/metrics", False),
    ):
        time.sleep(0.3)
        before = cpu_seconds(tower.pid)
        for _ in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", tower.admin_port, timeout=60)
            headers = {"Authorization": f"Basic {tower.cookie()}"} if auth else {}
            conn.request("GET", path, headers=headers)
            conn.getresponse().read()
            conn.close()
        result[name] = (cpu_seconds(tower.pid) - before) * 1000 / n
    return result


def metrics_text(tower: Tower) -> tuple[str, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", tower.admin_port, timeout=60)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return text, time.perf_counter() - started


def legit_ping_count(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("teos_http_requests_total{")
            and 'endpoint="/ping"' in line
            and 'method="GET"' in line
            and 'status="200"' in line
            and 'app="public"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Row:
    name: str
    ping: Series
    add: Series
    admin: Series
    rss_start_mb: float
    rss_peak_mb: float
    threads_peak: int
    note: str


def run_attack(
    tower: Tower, name: str, target: Target, seconds: float, legit_key: bytes
) -> tuple[Row, dict[str, Any]]:
    """Runs attack ``name`` (or nothing, for ``baseline``) while the legitimate client measures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with Sampler(tower.pid) as sampler, Legit(tower, legit_key) as legit:
        deadline = time.time() + seconds
        proc = None
        if name != "baseline":
            attack_name = name.split(":")[0].split(" ")[0]
            proc = ctx.Process(target=attacks.run, args=(attack_name, target, deadline, queue), daemon=True)
            proc.start()
        while time.time() < deadline:
            time.sleep(0.2)
    stats: dict[str, Any] = {}
    if proc is not None:
        with contextlib.suppress(Exception):
            stats = queue.get(timeout=60)
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    tower.teosd.check_alive()
    row = Row(
        name,
        legit.ping,
        legit.add,
        legit.admin,
        sampler.start_rss / 1024,
        sampler.peak_rss / 1024,
        sampler.peak_threads,
        _summary(stats),
    )
    row_stats = {"pings_ok": legit.pings_ok, **stats}
    return row, row_stats


def _summary(stats: dict[str, Any]) -> str:
    if not stats:
        return ""
    parts = []
    for key, value in stats.items():
        if isinstance(value, dict):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    return " ".join(parts)


def recover(tower: Tower) -> str:
    """Waits (up to 120 s) until the tower answers /ping again after an attack; says how long it took."""
    started = time.monotonic()

    def up() -> bool:
        tower.teosd.check_alive()
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(
                "127.0.0.1", tower.api_port, timeout=2, source_address=source_address(LEGIT)
            )
            try:
                conn.request("GET", "/ping")
                return conn.getresponse().status == 200
            finally:
                conn.close()
        return False

    try:
        wait_until(up, 120, "teosd to answer /ping after the attack")
    except TimeoutError:
        return "NOT answering /ping 120 s after the attack"
    time.sleep(1.0)
    waited = time.monotonic() - started
    return f"answered /ping again after {waited:.0f} s" if waited > 3 else ""


def static_checks(tower: Tower) -> list[str]:
    """F3 and F10: modes of the datadir, the secret in the database, the password on the command line."""
    from coincurve import PrivateKey

    lines = []
    for path in (tower.datadir, tower.network_dir, tower.network_dir / "db"):
        lines.append(f"mode {oct(path.stat().st_mode & 0o777)} {path.relative_to(tower.workdir)}")
    modes = sorted(
        {oct(p.stat().st_mode & 0o777) for p in (tower.network_dir / "db").iterdir() if p.is_file()}
    )
    lines.append(f"modes of the files in db/: {', '.join(modes)}")
    secret = bytes(PrivateKey.from_der((tower.network_dir / "teos_sk.der").read_bytes()).secret)
    found = [p.name for p in (tower.network_dir / "db").iterdir() if p.is_file() and secret in p.read_bytes()]
    lines.append(f"tower secret in db files: {', '.join(found) if found else 'none'}")
    log = tower.teosd.log_path.read_bytes()
    lines.append(f"tower secret in the log: {'yes' if secret.hex().encode() in log else 'no'}")
    cmdline = Path(f"/proc/{tower.pid}/cmdline").read_bytes().split(b"\0")
    visible = tower.regtest.rpc_password.encode() in cmdline
    lines.append(f"bitcoind RPC password on teosd's command line: {'yes' if visible else 'no'}")
    return lines


def print_table(rows: list[Row]) -> None:
    """The table as Markdown: per legitimate request p50 / p99 in ms and failed/sent."""

    def cell(series: Series) -> str:
        return f"{series.percentile(50):.1f} / {series.percentile(99):.1f} ({series.failures}/{series.sent})"

    print()
    print(
        "| attack | ping p50 / p99 ms (failed/sent) | add_appointment | admin /ready | main RSS MB "
        "| threads |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.name} | {cell(r.ping)} | {cell(r.add)} | {cell(r.admin)} "
            f"| {r.rss_start_mb:.0f} -> {r.rss_peak_mb:.0f} | {r.threads_peak} |"
        )
    print()
    for r in rows:
        failures = [
            f"{n}: {s.first_failure}"
            for n, s in (("ping", r.ping), ("add", r.add), ("admin", r.admin))
            if s.first_failure
        ]
        print(f"  {r.name}: {r.note}" + (f" | first failures: {'; '.join(failures)}" if failures else ""))


# -- main ---------------------------------------------------------------------------------------------


ALL_ATTACKS = (
    "baseline",
    "idle",
    "slow_headers",
    "slow_bodies",
    "slow_bodies_64",
    "big_signature",
    "flood",
    "junk_methods",
    "ipc",
    "registration_spam",
    "big_answers",
    "big_answers_slow",
    "admin_idle",
    "fill",
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="duration of each attack")
    parser.add_argument("--connections", type=int, default=10000, help="connections the holding attacks keep")
    parser.add_argument("--big-user", type=int, default=100_000, help="appointments of the F7 user")
    parser.add_argument("--only", default="", help="comma-separated attacks to run (baseline always runs)")
    parser.add_argument(
        "--tor",
        action="store_true",
        help="as behind Tor: attacker and legitimate client both on 127.0.0.1, and teosd "
        "told so (--behindproxy: no per-address limits)",
    )
    args = parser.parse_args()
    global LEGIT, ATTACKER
    proxy_flags: list[str] = []
    if args.tor:
        LEGIT = ATTACKER = "127.0.0.1"
        proxy_flags = ["--behindproxy"] if _has_option("behindproxy") else []
    nofile = raise_nofile()
    selected = [a for a in ALL_ATTACKS if not args.only or a == "baseline" or a in args.only.split(",")]
    print(
        f"adversary: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, open-file limit "
        f"{nofile}, {args.seconds:.0f} s per attack, {args.connections} connections per holding attack"
        + (", everyone on 127.0.0.1 (--tor)" if args.tor else ""),
        flush=True,
    )

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="teos-adversary-") as tmp:
        tower = Tower(Path(tmp) / "main", proxy_flags)
        try:
            tower.start_bitcoind()
            big_key = b""
            if any(a.startswith("big_answers") for a in selected) or "flood" in selected:
                started = time.perf_counter()
                big_key = populate_big_user(tower, args.big_user)
                print(
                    f"wrote a user with {args.big_user} appointments "
                    f"in {time.perf_counter() - started:.1f} s",
                    flush=True,
                )
            tower.start_teosd()
            legit_key = crypto.generate_secret_key()
            register(tower, legit_key, Dialect.RUST, LEGIT)
            tower.mine(150)  # the legitimate user is no longer a newcomer (--newuserblocks, 144)
            time.sleep(2)

            profile = cpu_profile(tower, [*REQUEST_KINDS, *(["info_big_user"] if big_key else [])], big_key)
            profile.update(admin_cpu_profile(tower))
            print("\nCPU per request (teosd main + API workers), sent one at a time:")
            for kind, ms in sorted(profile.items(), key=lambda kv: -kv[1]):
                print(f"  {kind:<26} {ms:8.2f} ms")
            flood_kind = max(REQUEST_KINDS, key=lambda k: profile.get(k, 0.0))
            print(
                f"most expensive request an attacker can send without a big subscription: {flood_kind} "
                f"({profile[flood_kind]:.2f} ms)",
                flush=True,
            )

            base_target = dict(
                host="127.0.0.1",
                api_port=tower.api_port,
                admin_port=tower.admin_port,
                source=ATTACKER,
                big_user_key=big_key,
            )
            for name in selected:
                if name == "fill":
                    continue
                params: dict[str, Any] = {"connections": args.connections}
                if name in ("slow_bodies_64", "big_answers_slow"):
                    params = {"connections": 64}
                elif name == "flood":
                    params = {"kind": flood_kind}
                elif name == "ipc":
                    params = {"connections": 1100}
                target = Target(**base_target, ipc_address=tower.ipc_address(), params=params)  # type: ignore[arg-type]
                before_metrics = metrics_text(tower) if name == "junk_methods" else ("", 0.0)
                log_size = tower.teosd.log_path.stat().st_size
                db_size = sum(p.stat().st_size for p in (tower.network_dir / "db").iterdir())
                row, stats = run_attack(
                    tower, name if name != "flood" else f"flood:{flood_kind}", target, args.seconds, legit_key
                )
                if name == "junk_methods":
                    time.sleep(2.5)
                    text, scrape = metrics_text(tower)
                    counted = legit_ping_count(text) - legit_ping_count(before_metrics[0])
                    row.note += (
                        f" | /metrics {len(before_metrics[0]) / 1e6:.2f}->{len(text) / 1e6:.2f} MB, "
                        f"scrape {scrape * 1000:.0f} ms, legit pings counted {counted:.0f} of "
                        f"{stats['pings_ok']}"
                    )
                log_lines = tower.teosd.log_path.read_bytes()[log_size:].count(b"\n")
                db_growth = sum(p.stat().st_size for p in (tower.network_dir / "db").iterdir()) - db_size
                row.note += f" | log +{log_lines} lines, db {db_growth / 1e6:+.1f} MB"
                recovery = recover(tower)
                if recovery:
                    row.note += f" | {recovery}"
                rows.append(row)
                print(
                    f"done {row.name}: ping {row.ping.cell()} | add {row.add.cell()} "
                    f"| admin {row.admin.cell()}"
                    f" | RSS {row.rss_start_mb:.0f}->{row.rss_peak_mb:.0f} MB {recovery}",
                    flush=True,
                )
            checks = static_checks(tower)
        finally:
            tower.stop()

        if "fill" in selected:
            small = Tower(Path(tmp) / "fill", ["--maxappointments", "3000", *proxy_flags])
            try:
                small.start_bitcoind()
                small.start_teosd()
                legit_key = crypto.generate_secret_key()
                register(small, legit_key, Dialect.RUST, LEGIT)
                small.mine(150)
                time.sleep(2)
                target = Target(
                    host="127.0.0.1", api_port=small.api_port, admin_port=small.admin_port, source=ATTACKER
                )
                row, _ = run_attack(small, "fill (cap 3000)", target, max(args.seconds, 20.0), legit_key)
                rows.append(row)
            finally:
                small.stop()

    baseline = next(r for r in rows if r.name == "baseline")
    print_table(rows)
    print("\nlegitimate p99 as a multiple of the baseline's (ping / add / admin):")
    for r in rows[1:]:
        ratios = [
            s.percentile(99) / b.percentile(99) if b.latencies and s.latencies else float("nan")
            for s, b in ((r.ping, baseline.ping), (r.add, baseline.add), (r.admin, baseline.admin))
        ]
        print(f"  {r.name:<22} " + " / ".join(f"{x:5.1f}x" for x in ratios))
    print("\nstatic checks:")
    for line in checks:
        print(f"  {line}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
