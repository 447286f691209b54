"""Load benchmark: accepted add_appointment requests per second over HTTP, this tower against python-teos.

Starts ``teos-regtest`` and ``teosd`` (free loopback ports, temporary datadirs), then loads teosd from
several client processes (``bench/loadgen.py``: users registered and every request signed before the clock
starts, keep-alive connections, several threads per process) and prints appointments per second with
p50/p90/p99 latency. Every appointment is synced to disk before its receipt is sent.

In the same run it loads python-teos when told where it is:

- ``PYTHON_TEOS_URL=http://127.0.0.1:PORT``: a python-teos already running (against any regtest bitcoind);
- ``PYTHON_TEOS_DIR=/path/to/python-teos``: a checkout; started as ``python -m teos.teosd`` in that
  directory (with ``PYTHON_TEOS_PYTHON`` or this interpreter) against the same simulator;

otherwise it prints that the comparison was skipped. The ratio printed is this tower's rate over
python-teos's. On a 2-core machine the client processes compete with the server for the CPU: the figures
are lower than a C load generator (wrk) would measure, for both towers alike.

    .venv/bin/python bench/load.py [--appointments 20000] [--processes 2] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import LoadResult, run_load
from common.client import TowerClient
from common.types import Dialect
from teos.devtools import free_port, wait_until
from tests.support.bitcoind import BitcoindHandle, SimulatorHandle
from tests.support.processes import Process, Teosd, clean_env, teosd_args


def _load(url: str, args: argparse.Namespace, dialect: Dialect) -> LoadResult:
    return run_load(
        url,
        processes=args.processes,
        threads=args.threads,
        appointments=args.appointments,
        users_per_process=args.users,
        blob_size=args.blob_size,
        dialect=dialect,
    )


def _start_python_teos(source: Path, workdir: Path, regtest: BitcoindHandle) -> tuple[Process, str]:
    port = free_port()
    python = os.environ.get("PYTHON_TEOS_PYTHON", sys.executable)
    args = [
        python,
        "-m",
        "teos.teosd",
        "--datadir",
        str(workdir / "python-teos"),
        "--btcnetwork",
        "regtest",
        "--apibind",
        "127.0.0.1",
        "--apiport",
        str(port),
        "--rpcbind",
        "127.0.0.1",
        "--rpcport",
        str(free_port()),
        "--btcrpcconnect",
        "127.0.0.1",
        "--btcrpcport",
        str(regtest.rpc_port),
        "--btcrpcuser",
        regtest.rpc_user,
        "--btcrpcpassword",
        regtest.rpc_password,
        "--btcfeedconnect",
        "127.0.0.1",
        "--btcfeedport",
        str(regtest.zmq_port),
    ]
    env = {**clean_env(), "PYTHONPATH": str(source)}
    process = Process("python-teos", args, workdir / "python-teos.log", env)
    process.start()

    def up() -> bool:
        process.check_alive()
        try:
            return TowerClient("127.0.0.1", port, Dialect.PYTHON).register() is not None
        except (OSError, ValueError, Exception):
            return False

    wait_until(up, 60, "python-teos's API to answer")
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--appointments", type=int, default=20000, help="requests per tower")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=8, help="connections (threads) per client process")
    parser.add_argument("--users", type=int, default=4, help="users per client process")
    parser.add_argument("--blob-size", type=int, default=200, help="encrypted blob bytes")
    parser.add_argument("--apithreads", type=int, default=8, help="teosd's --apithreads (per worker)")
    parser.add_argument("--apiworkers", type=int, default=0, help="teosd's --apiworkers (0: one per core)")
    args = parser.parse_args()

    print(
        f"load: {args.appointments} add_appointment per tower from {args.processes} processes x "
        f"{args.threads} connections, {args.blob_size}-byte blobs, {os.cpu_count()} cores (shared with "
        "the clients)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="teos-load-") as tmp:
        workdir = Path(tmp)
        regtest = SimulatorHandle(workdir / "bitcoind")
        port = free_port()
        teosd = Teosd(
            workdir / "teos",
            teosd_args(
                workdir / "teos",
                port,
                "127.0.0.1",
                regtest.rpc_port,
                regtest.rpc_user,
                regtest.rpc_password,
                regtest.zmq_url,
                ["--apithreads", str(args.apithreads), "--apiworkers", str(args.apiworkers),
                 "--maxappointments", "10000000"],
            ),
            port,
        )
        others: list[Process] = []
        try:
            regtest.start()
            regtest.mine(1)
            teosd.start()
            teosd.wait_ready()
            ours = _load(f"http://127.0.0.1:{port}", args, Dialect.RUST)
            print(ours.line("teos (this tower)"), flush=True)

            theirs: LoadResult | None = None
            url = os.environ.get("PYTHON_TEOS_URL")
            source = os.environ.get("PYTHON_TEOS_DIR")
            if not url and source:
                process, url = _start_python_teos(Path(source), workdir, regtest)
                others.append(process)
            if url:
                theirs = _load(url, args, Dialect.PYTHON)
                print(theirs.line("python-teos"), flush=True)
            else:
                print("python-teos: comparison skipped (set PYTHON_TEOS_DIR or PYTHON_TEOS_URL)")
            if theirs is not None and theirs.rate > 0:
                print(f"ratio teos / python-teos: {ours.rate / theirs.rate:.1f}x")
        except (RuntimeError, TimeoutError, subprocess.SubprocessError) as e:
            print(f"load benchmark failed: {e}", file=sys.stderr)
            for p in (teosd, *others):
                print(f"--- {p.name}:\n{p.tail()}", file=sys.stderr)
            sys.exit(1)
        finally:
            for p in (*others, teosd):
                p.stop()
            regtest.stop()


if __name__ == "__main__":
    main()
