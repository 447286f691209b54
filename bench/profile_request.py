"""Where the time of an add_appointment goes: HTTP, JSON, key recovery, IPC, the write, receipt signing.

Two views, both printed by default:

``--steps``: each step of the request path on its own, in this process, with the tower's real code
(median of ``--repeat`` batches, CPU microseconds per call; the write also in wall time, since a synced
write mostly waits for the disk):
  JSON parse of the body, validation (``parse_appointment``/``parse_signature``), public-key recovery,
  the Flask/werkzeug round of a request (WSGI call of the real public app with a core answering from
  memory, minus the parts above), one IPC round trip to a ``CoreServer`` (both ends in this process),
  the core's ``add_appointment`` on a real LevelDB (Gatekeeper reads, encoding, synced group commit),
  receipt building and signing, and the JSON answer.

``--live``: a real teosd (API workers under granian, the main process behind the worker channel) loaded
by wrk for ``--seconds`` while py-spy samples every process (``--gil``: only threads holding the GIL, so
only Python running); the CPU each process spent (from /proc) is divided by the requests answered and
split by where py-spy found Python running. CPU outside the GIL (granian's HTTP in Rust, libsecp256k1 and
LevelDB, which release it, the kernel) shows as "native". With ``--perf``, ``perf record`` splits each
process's CPU by shared object (libsecp256k1, LevelDB, granian, the interpreter, the kernel).
``TEOS_PROFILE_KEEP=FILE`` keeps py-spy's raw stacks.

    .venv/bin/python bench/profile_request.py [--steps] [--live] [--seconds 15] [--perf]

py-spy is a development tool, not a requirement: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import crypto, receipts
from common.appointment import Appointment
from common.types import Dialect, Locator, UserId
from common.validation import parse_appointment, parse_signature

# -- steps ---------------------------------------------------------------------------------------------


def _cpu_us(fn: Callable[[int], object], n: int, repeat: int) -> float:
    """Median CPU microseconds per call of ``fn`` (called as ``fn(i)`` for i in range(n)), over batches."""
    samples = []
    for _ in range(repeat):
        t0 = time.process_time()
        for i in range(n):
            fn(i)
        samples.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(samples)


def _wall_us(fn: Callable[[int], object], n: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def _bodies(secret: bytes, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        appointment = Appointment(Locator(os.urandom(8) + i.to_bytes(8, "big")), os.urandom(200), 20)
        signature = crypto.sign(appointment.serialize(), secret)
        out.append(json.dumps({"appointment": appointment.to_json(), "signature": signature}).encode())
    return out


class _MemoryCore:
    """A ``Core`` answering from memory: isolates the HTTP, Flask and service work from the state side."""

    def __init__(self, user: Any) -> None:
        self._user = user

    def user(self, user_id: UserId) -> Any:
        return self._user

    def register(self, user_id: UserId, dialect: Dialect) -> Any:
        return self._user

    def add_appointment(self, user_id: UserId, signature: str, appointment: Appointment) -> Any:
        from common.appointment import compute_uuid
        from teos.storage.codec import AppointmentRecord

        record = AppointmentRecord(compute_uuid(appointment.locator, user_id), appointment.locator,
                                   appointment.encrypted_blob, appointment.to_self_delay, user_id, signature,
                                   100, self._user.dialect)  # fmt: skip
        return record, self._user

    def get_appointment(self, user_id: UserId, locator: Locator) -> Any:
        raise NotImplementedError

    def get_subscription_info(self, user_id: UserId, limit: int | None = None) -> Any:
        raise NotImplementedError

    def subscription_page(self, user_id: UserId, after: Locator, limit: int) -> Any:
        raise NotImplementedError


def _wsgi_call(app: Any, body: bytes) -> int:
    import io

    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/add_appointment", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "9814", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1",
    }  # fmt: skip
    result = app(environ, lambda s, h, exc_info=None: status.append(s))
    b"".join(result)
    if hasattr(result, "close"):
        result.close()
    return int(status[0].split()[0])


def steps(n: int, repeat: int) -> None:
    from teos.api import create_app
    from teos.api.ipc import CoreClient, CoreServer
    from teos.gatekeeper import Gatekeeper, GatekeeperConfig
    from teos.service import TowerCore, TowerService
    from teos.storage.codec import UserRecord
    from teos.storage.index import LocatorIndex
    from teos.storage.store import Store

    user_key = crypto.generate_secret_key()
    tower_key = crypto.generate_secret_key()
    user_id = crypto.public_key(user_key)
    user = UserRecord(user_id, Dialect.RUST, 10**9, 0, 10**9)
    bodies = _bodies(user_key, n)
    parsed = [json.loads(b) for b in bodies]
    appointments = [parse_appointment(p["appointment"], min_to_self_delay=20, max_blob_size=16384)
                    for p in parsed]  # fmt: skip
    signatures = [p["signature"] for p in parsed]
    serialized = [a.serialize() for a in appointments]
    rows: list[tuple[str, float, str]] = []

    def add(name: str, us: float, note: str = "") -> None:
        rows.append((name, us, note))
        print(f"  {name:<44} {us:8.1f} us  {note}", flush=True)

    print(f"steps of one add_appointment ({n} distinct bodies, median of {repeat} batches, CPU us per call):")
    add("JSON parse of the body", _cpu_us(lambda i: json.loads(bodies[i]), n, repeat))
    add("validation (appointment, signature)", _cpu_us(
        lambda i: (parse_appointment(parsed[i]["appointment"], min_to_self_delay=20, max_blob_size=16384),
                   parse_signature(parsed[i]["signature"])), n, repeat))  # fmt: skip
    add("public-key recovery (z-base-32 + ECDSA)",
        _cpu_us(lambda i: crypto.recover_public_key(serialized[i], signatures[i]), n, repeat))
    def receipt(i: int) -> str:
        return crypto.sign(receipts.appointment_receipt(Dialect.RUST, signatures[i], 100), tower_key)

    add("receipt (bytes) + signing", _cpu_us(receipt, n, repeat))
    answer = {"locator": "00" * 16, "start_block": 100, "signature": signatures[0], "available_slots": 1,
              "subscription_expiry": 5000}  # fmt: skip
    add("JSON answer (sorted keys)", _cpu_us(lambda i: json.dumps(answer, sort_keys=True), n, repeat))

    service = TowerService(_MemoryCore(user), tower_key, min_to_self_delay=20)
    app = create_app(service)
    assert _wsgi_call(app, bodies[0]) == 200
    full = _cpu_us(lambda i: _wsgi_call(app, bodies[i]), n, repeat)
    add("whole request through Flask, core in memory", full, "(the five above + Flask/werkzeug)")
    parts = sum(us for _, us, _ in rows[:5])
    add("  of which Flask/werkzeug and the service", full - parts)

    class _Answering:
        def user(self, uid: UserId) -> Any:
            return user

    server = CoreServer(_Answering(), os.urandom(32))  # type: ignore[arg-type]
    server.start()
    client = CoreClient(server.address, server.token)
    try:
        raw = user_id.raw
        client.call("user", raw)
        add("IPC round trip (both ends here)", _cpu_us(lambda i: client.call("user", raw), n, repeat),
            f"wall {_wall_us(lambda i: client.call('user', raw), n, repeat):.0f} us")
    finally:
        client.close()
        server.stop()

    with tempfile.TemporaryDirectory(prefix="teos-profile-") as tmp:
        store = Store(Path(tmp) / "db")
        store.open()

        class _View:
            bitcoind_reachable = True
            tip_height = 100

            def breach_in_cache(self, record: Any) -> None:
                return None

            def appointment_added(self, record: Any, txid: Any) -> None:
                pass

        index = LocatorIndex(store)
        index.start()
        gatekeeper = Gatekeeper(store, GatekeeperConfig(subscription_slots=10**6, max_appointments=10**9),
                                _View(), index)  # fmt: skip
        gatekeeper.start()
        core = TowerCore(gatekeeper, _View(), _View(), store)
        threads = 16
        users = [user_id] + [crypto.public_key(crypto.generate_secret_key()) for _ in range(threads - 1)]
        for u in users:
            core.register(u, Dialect.RUST)
        counter = iter(range(10**9))
        local = threading.local()

        def core_add(i: int) -> None:
            """One add; each thread as its own user (a user's adds wait for each other's fsync)."""
            j = next(counter)
            a = Appointment(Locator(j.to_bytes(16, "big")), appointments[i].encrypted_blob, 20)
            core.add_appointment(getattr(local, "user", user_id), signatures[i], a)

        m = max(50, n // 10)
        add("core add_appointment, one at a time (synced)", _cpu_us(core_add, m, repeat),
            f"wall {_wall_us(core_add, m, repeat):.0f} us (an fsync each)")

        def grouped() -> tuple[float, float]:
            barrier = threading.Barrier(threads)

            def run(n: int) -> None:
                local.user = users[n]
                barrier.wait()
                for i in range(m):
                    core_add(i)

            ts = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
            t0, c0 = time.perf_counter(), time.process_time()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            return cpu / (m * threads) * 1e6, wall / (m * threads) * 1e6

        cpu, wall = grouped()
        add(f"core add_appointment, {threads} threads (group commit)", cpu,
            f"wall {wall:.0f} us per appointment")  # fmt: skip
        gatekeeper.stop()
        index.stop()
        store.close()


# -- live ----------------------------------------------------------------------------------------------

SPY_RATE = 200  # py-spy samples per second

# (category, compiled pattern on "function (file)"), matched from the innermost frame outwards.
_RULES: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern))
    for name, pattern in [
        ("z-base-32", r"common/zbase32\.py"),
        ("public-key recovery", r"recover_public_key \(.*common/crypto\.py"),
        ("receipt signing", r"\bsign \(.*common/crypto\.py|_private_key \("),
        ("LevelDB write + fsync", r"_write \(.*teos/storage/store\.py|write_batch|plyvel"),
        ("group commit wait", r"_wait \(.*teos/storage/store\.py"),
        ("LevelDB reads", r"\bget \(.*teos/storage/store\.py"),
        ("storage codec", r"teos/storage/codec\.py"),
        ("IPC (marshal, socket)", r"teos/api/ipc\.py|marshal"),
        ("metrics", r"teos/admin/metrics\.py|prometheus_client|teos/api/worker\.py"),
        ("JSON", r"json/(de|en)coder\.py|json/__init__\.py|flask/json"),
        ("validation", r"common/validation\.py|common/appointment\.py|common/types\.py"),
        ("Gatekeeper", r"teos/gatekeeper/"),
        ("service (core, use cases)", r"teos/service\.py"),
        ("public API handlers", r"teos/api/public\.py|teos/api/__init__\.py|teos/api/errors\.py"),
        ("Flask/werkzeug", r"flask/|werkzeug/"),
        ("engine, chain monitor", r"teos/engine\.py|teos/chain/|teos/watcher/|teos/responder/"),
        ("granian (Python side)", r"granian"),
        ("logging", r"logging/"),
        ("threading, queues", r"threading\.py|queue\.py|selectors\.py|socket\.py"),
    ]
]


def _category(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, pattern in _RULES:
            if pattern.search(frame):
                return name
    return "other Python"


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80]
    except OSError:
        return "?"


def live(seconds: float, use_perf: bool, node_kind: str, rate: int) -> None:
    from bench.load import start_node, start_teosd
    from bench.loadgen import prepare, run_wrk

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(py_spy):
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="teos-profile-") as tmp:
        workdir = Path(tmp)
        node = start_node(node_kind, workdir / "bitcoind")
        args = argparse.Namespace(apithreads=8, apiworkers=0)
        teosd, url = start_teosd(workdir, node, args)
        try:
            assert teosd.proc is not None
            main_pid = teosd.proc.pid
            workers = [p for p in _children(main_pid) if "python" in _comm(p)]
            bodies = prepare(url, workdir / "bodies.txt", users=40, bodies=int(seconds * rate), blob_size=200,
                             dialect=Dialect.RUST)  # fmt: skip
            pids = {"main": [main_pid], "workers": workers}
            node_pid = node.process.pid if node.process is not None else None
            before = {name: sum(_cpu_seconds(p) for p in ps) for name, ps in pids.items()}
            node_before = _cpu_seconds(node_pid) if node_pid else 0.0
            spy_out = workdir / "spy.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(main_pid), "--subprocesses", "--nonblocking", "--gil",
                 "--rate", str(SPY_RATE), "--format", "raw", "--duration", str(int(seconds)),
                 "--output", str(spy_out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            perf_out = workdir / "perf.data"
            perf = None
            if use_perf:
                all_pids = ",".join(str(p) for ps in pids.values() for p in ps)
                perf = subprocess.Popen(
                    ["perf", "record", "-F", "499", "-g", "-p", all_pids, "-o", str(perf_out), "--", "sleep",
                     str(int(seconds))],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
            result = run_wrk(url, bodies, connections=16, seconds=seconds - 2)
            after = {name: sum(_cpu_seconds(p) for p in ps) for name, ps in pids.items()}
            node_cpu = (_cpu_seconds(node_pid) - node_before) if node_pid else 0.0
            spy.wait(seconds + 60)
            if perf is not None:
                perf.wait(seconds + 60)
        finally:
            teosd.stop()
            node.stop()
        print(result.line("teosd under py-spy"))
        ok = max(result.ok, 1)
        cpu_us = {name: (after[name] - before[name]) / ok * 1e6 for name in pids}
        print(f"CPU per accepted request: API workers {cpu_us['workers']:.0f} us, main process "
              f"{cpu_us['main']:.0f} us, bitcoind {node_cpu / ok * 1e6:.0f} us "
              f"(2 cores: {2e6 / ok * result.seconds:.0f} us available per request at this rate)")
        if os.environ.get("TEOS_PROFILE_KEEP"):
            shutil.copy(spy_out, os.environ["TEOS_PROFILE_KEEP"])
        _report_spy(spy_out, pids, cpu_us, ok)
        if perf is not None:
            _report_perf(perf_out, pids, cpu_us)


def _report_spy(path: Path, pids: dict[str, list[int]], cpu_us: dict[str, float], ok: int) -> None:
    """Splits each process group's CPU per request by the categories of py-spy's samples."""
    by_group: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in pids}
    group_of = {p: name for name, ps in pids.items() for p in ps}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        processes = re.findall(r"(?:^|;)process (\d+):", stack)  # the parent's, then the child's
        group = group_of.get(int(processes[-1])) if processes else None
        if group is None:
            continue
        by_group[group][_category(stack)] += int(count)
    for group, counter in by_group.items():
        samples = sum(counter.values())
        sampled_us = samples / SPY_RATE / ok * 1e6
        print(f"\n{group}: {cpu_us[group]:.0f} us CPU per request; py-spy saw {sampled_us:.0f} us of Python "
              f"holding the GIL, the rest ({max(cpu_us[group] - sampled_us, 0):.0f} us) is native")
        for category, n in counter.most_common():
            us = n / SPY_RATE / ok * 1e6
            print(f"  {category:<32} {us:7.0f} us  {100 * n / max(samples, 1):5.1f}%")


def _report_perf(path: Path, pids: dict[str, list[int]], cpu_us: dict[str, float]) -> None:
    """Splits each process group's CPU per request by the shared object perf found it running in."""
    out = subprocess.run(["perf", "script", "-i", str(path), "-F", "pid,ip,dso", "-G"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    group_of = {p: name for name, ps in pids.items() for p in ps}
    counts: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in pids}
    for line in out.stdout.splitlines():
        parts = line.split(None, 2)  # pid, ip, (dso)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        group = group_of.get(int(parts[0]))
        if group is not None:
            dso = parts[2].strip().strip("()").rsplit("/", 1)[-1] or "?"
            counts[group][dso] += 1
    for group, counter in counts.items():
        total = sum(counter.values())
        if not total:
            continue
        print(f"\n{group}, perf by shared object ({total} samples):")
        for dso, n in counter.most_common(12):
            print(f"  {dso:<48} {cpu_us[group] * n / total:7.0f} us  {100 * n / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", action="store_true", help="only the in-process steps")
    parser.add_argument("--live", action="store_true", help="only the live teosd under wrk and py-spy")
    parser.add_argument("--n", type=int, default=2000, help="calls per batch (--steps)")
    parser.add_argument("--repeat", type=int, default=5, help="batches (--steps)")
    parser.add_argument("--seconds", type=float, default=15.0, help="load duration (--live)")
    parser.add_argument("--perf", action="store_true", help="also perf record by shared object (--live)")
    parser.add_argument("--node", choices=("auto", "bitcoin-core", "simulator"), default="auto")
    parser.add_argument("--max-rate", type=int, default=4000, help="bodies signed per second of load")
    args = parser.parse_args()
    both = not args.steps and not args.live
    if args.steps or both:
        steps(args.n, args.repeat)
    if args.live or both:
        live(args.seconds, args.perf, args.node, args.max_rate)


if __name__ == "__main__":
    main()
