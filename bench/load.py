"""Load benchmark: accepted add_appointment/s over HTTP, teosd against python-teos, in one run.

One bitcoind (real Bitcoin Core with ``-txindex=1`` when a binary is found: ``$BITCOIND``, PATH, or the
pinned build in the cache; else the bundled simulator with ``--txindex``), and both towers started against
it on free loopback ports with temporary datadirs:

- teosd, every appointment synced to disk before its receipt is sent;
- python-teos 0.1.1 (the tower this project succeeds) from its own venv, made by
  ``bench/anchor/setup-python-teos`` (run on first use), as shipped: gunicorn, one sync worker, its
  gRPC hop to the daemon; its writes are not synced.

Each round loads one tower, then the other, never both at once: ``users`` fresh users registered, every
body signed before the clock starts (distinct locators, ``--blob-size`` bytes), then ``wrk`` with
``--connections`` connections for ``--seconds`` (``bench/loadgen.py``). It prints both rates, both latency
percentiles and the ratio of the round; with several rounds, the spread. After a round it checks that
teosd holds every appointment it acknowledged.

    .venv/bin/python bench/load.py [--rounds 3] [--seconds 20] [--connections 16] [--users 40]
        [--node auto|core|simulator] [--towers teosd,python-teos] [--apiworkers N] [--apithreads N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import LoadResult, prepare, run_wrk, wrk_binary
from common.types import Dialect
from teos.devtools import free_port, wait_until
from tests.support.bitcoind import BitcoindHandle, find_bitcoind, make_handle
from tests.support.processes import Process, Teosd, teosd_args

REPO = Path(__file__).resolve().parent.parent
SETUP_ANCHOR = REPO / "bench" / "anchor" / "setup-python-teos"


# -- bitcoind ---------------------------------------------------------------------------------------------


def start_node(kind: str, datadir: Path) -> BitcoindHandle:
    """Bitcoin Core (``-txindex=1``) or the simulator (``--txindex``): python-teos needs the index."""
    if kind == "auto":
        kind = "bitcoin-core" if find_bitcoind() else "simulator"
    extra = ("-txindex=1",) if kind == "bitcoin-core" else ("--txindex",)
    node = make_handle(kind, datadir, extra)
    node.start(timeout=120)
    node.mine(101)
    return node


# -- the towers ---------------------------------------------------------------------------------------------


def start_teosd(workdir: Path, node: BitcoindHandle, args: argparse.Namespace) -> tuple[Teosd, str]:
    port = free_port()
    extra = ["--apithreads", str(args.apithreads), "--apiworkers", str(args.apiworkers),
             "--maxappointments", "100000000", "--maxappointmentsperuser", "100000000",
             "--behindproxy"]  # every load connection comes from 127.0.0.1: no per-address share  # fmt: skip
    command = teosd_args(
        workdir / "teosd", port, "127.0.0.1", node.rpc_port, node.rpc_user, node.rpc_password,
        node.zmq_url, extra,
    )  # fmt: skip
    teosd = Teosd(workdir / "teosd", command, port)
    teosd.start()
    teosd.wait_ready(60)
    return teosd, f"http://127.0.0.1:{port}"


def anchor_venv() -> Path:
    """The python-teos venv (``bench/anchor/setup-python-teos`` makes it on first use)."""
    out = subprocess.run([str(SETUP_ANCHOR)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"setting up python-teos failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class _InDir(Process):
    """A Process started in ``cwd`` (gunicorn puts its working directory first on the import path)."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> None:
        super().__init__(name, args, log_path, env)
        self.cwd = cwd

    def start(self) -> None:
        here = os.getcwd()
        os.chdir(self.cwd)
        try:
            super().start()
        finally:
            os.chdir(here)


def start_python_teos(workdir: Path, node: BitcoindHandle) -> tuple[Process, str]:
    """python-teos as shipped (gunicorn, one sync worker), against ``node``; slots are not the limit."""
    venv = anchor_venv()
    datadir = workdir / "python-teos"
    datadir.mkdir(parents=True)
    (datadir / "teos.conf").write_text(
        f"[teos]\nsubscription_slots = 1000000\nmax_appointments = 100000000\n"
        f"internal_api_host = 127.0.0.1\ninternal_api_port = {free_port()}\n"
    )
    port = free_port()
    zmq_port = node.zmq_url.rsplit(":", 1)[1]
    args = [
        str(venv / "bin" / "teosd"), "--datadir", str(datadir), "--btcnetwork", "regtest",
        "--apibind", "127.0.0.1", "--apiport", str(port),
        "--rpcbind", "127.0.0.1", "--rpcport", str(free_port()),
        "--btcrpcconnect", "127.0.0.1", "--btcrpcport", str(node.rpc_port), "--btcrpcuser", node.rpc_user,
        "--btcrpcpassword", node.rpc_password, "--btcfeedconnect", "127.0.0.1", "--btcfeedport", zmq_port,
    ]  # fmt: skip
    # Its own packages are called `teos` and `common` too: nothing of this repository may be on its path.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEOS_", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # it runs `gunicorn`
    env["HOME"] = str(datadir)  # gunicorn's control socket goes under $HOME: one per run
    process = _InDir("python-teos", args, workdir / "python-teos.log", env, cwd=datadir)
    process.start()

    def up() -> bool:
        process.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/register", body=b"{}", headers={"Content-Type": "application/json"})
            return conn.getresponse().status in (200, 400)
        except OSError:
            return False

    wait_until(up, 90, "python-teos's API to answer")
    return process, f"http://127.0.0.1:{port}"


def teosd_appointments(teosd: Teosd) -> int:
    """Appointments teosd holds, from ``teos-cli gettowerinfo``."""
    out = subprocess.run(
        [sys.executable, "-m", "teos.cli.teos_cli", "--datadir", str(teosd.datadir),
         "--btcnetwork", "regtest", "--rpcport", teosd.args[teosd.args.index("--rpcport") + 1],
         "gettowerinfo"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    info: dict[str, Any] = json.loads(out.stdout)
    return int(info["n_appointments"])


# -- one round ----------------------------------------------------------------------------------------------


def load_tower(
    url: str, dialect: Dialect, bodies: int, workdir: Path, args: argparse.Namespace
) -> LoadResult:
    path = prepare(url, workdir / "bodies.txt", users=args.users, bodies=bodies, blob_size=args.blob_size,
                   dialect=dialect)  # fmt: skip
    try:
        return run_wrk(url, path, connections=args.connections, seconds=args.seconds,
                       threads=args.wrk_threads, dialect=dialect)  # fmt: skip
    finally:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds (each loads every tower once)")
    parser.add_argument("--seconds", type=float, default=20.0, help="wrk duration per tower and round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--users", type=int, default=40, help="users signing the bodies, per tower and round")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (one keeps up at this rate)")
    parser.add_argument("--blob-size", type=int, default=200, help="encrypted blob bytes")
    parser.add_argument("--max-rate", type=float, default=4000.0,
                        help="teosd bodies signed per round: seconds x this (python-teos: a tenth)")
    parser.add_argument("--node", choices=("auto", "bitcoin-core", "simulator"), default="auto")
    parser.add_argument("--towers", default="teosd,python-teos")
    parser.add_argument("--apithreads", type=int, default=8, help="teosd's --apithreads (per worker)")
    parser.add_argument("--apiworkers", type=int, default=0, help="teosd's --apiworkers (0: one per core)")
    args = parser.parse_args()
    towers = args.towers.split(",")
    wrk_binary()

    with tempfile.TemporaryDirectory(prefix="teos-load-") as tmp:
        workdir = Path(tmp)
        node = start_node(args.node, workdir / "bitcoind")
        processes: list[Process] = []
        try:
            print(f"load: {node.kind} (txindex), wrk {args.connections} connections x {args.seconds:g} s, "
                  f"{args.users} users, {args.blob_size}-byte blobs, {os.cpu_count()} cores shared by all",
                  flush=True)  # fmt: skip
            urls: dict[str, str] = {}
            teosd: Teosd | None = None
            if "teosd" in towers:
                teosd, urls["teosd"] = start_teosd(workdir, node, args)
                processes.append(teosd)
            if "python-teos" in towers:
                anchor, urls["python-teos"] = start_python_teos(workdir, node)
                processes.append(anchor)
            rates: dict[str, list[float]] = {name: [] for name in urls}
            ratios: list[float] = []
            acknowledged = 0
            for n in range(1, args.rounds + 1):
                round_rates: dict[str, float] = {}
                for name, url in urls.items():
                    dialect = Dialect.PYTHON if name == "python-teos" else Dialect.RUST
                    bodies = int(args.seconds * args.max_rate / (10 if name == "python-teos" else 1))
                    result = load_tower(url, dialect, bodies, workdir, args)
                    print(result.line(f"round {n} {name}"), flush=True)
                    round_rates[name] = result.rate
                    rates[name].append(result.rate)
                    if name == "teosd" and teosd is not None:
                        acknowledged += result.ok
                        held = teosd_appointments(teosd)
                        if held < acknowledged:
                            print(f"LOST: teosd acknowledged {acknowledged} appointments but holds {held}",
                                  flush=True)  # fmt: skip
                if round_rates.get("python-teos", 0) > 0 and "teosd" in round_rates:
                    ratio = round_rates["teosd"] / round_rates["python-teos"]
                    ratios.append(ratio)
                    print(f"round {n} ratio teosd / python-teos: {ratio:.1f}x", flush=True)
            if args.rounds > 1:
                for name, values in rates.items():
                    median = statistics.median(values)
                    print(f"{name}: {min(values):.0f}-{max(values):.0f}/s, median {median:.0f}/s "
                          f"over {len(values)} rounds")  # fmt: skip
                if ratios:
                    median = statistics.median(ratios)
                    print(f"ratio: {min(ratios):.1f}-{max(ratios):.1f}, median {median:.1f}")
        except (RuntimeError, TimeoutError, subprocess.SubprocessError) as e:
            print(f"load benchmark failed: {e}", file=sys.stderr)
            for p in processes:
                print(f"--- {p.name}:\n{p.tail()}", file=sys.stderr)
            sys.exit(1)
        finally:
            for p in reversed(processes):
                p.stop()
            node.stop()


if __name__ == "__main__":
    main()
