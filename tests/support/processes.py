"""The tests' harness for ``teosd``: a subprocess on free loopback ports, its log kept in its datadir.

``Teosd`` runs ``python -m teos`` (with ``teosd_args`` building a regtest command line against a bitcoind)
and waits until its public API answers ``/ping``; the ``teosd_factory`` fixture (tests/daemon/conftest.py)
starts as many as a test needs and stops them at teardown. ``Process`` is the generic part: a subprocess
in its own session, logging to a file, stopped with SIGTERM (SIGKILL if it hangs). The bitcoind side is
``tests.support.bitcoind``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from common.types import UserId
from teos.devtools import free_port, wait_until


class Process:
    """A subprocess in its own session, logging to a file; ``stop`` sends SIGTERM and waits."""

    def __init__(
        self, name: str, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env if self.env is not None else clean_env(),
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode}; last lines of its log:\n"
                + self.tail()
            )

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit status."""
        status = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            status = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return status


def clean_env() -> dict[str, str]:
    """This environment without TEOS_* variables (a subprocess teosd gets its settings as flags)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TEOS_")}


def teosd_args(
    datadir: Path,
    api_port: int,
    rpc_host: str,
    rpc_port: int,
    rpc_user: str,
    rpc_password: str,
    zmq_url: str = "",
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a regtest teosd against the given bitcoind."""
    return [
        sys.executable,
        "-m",
        "teos",
        "--datadir",
        str(datadir),
        "--btcnetwork",
        "regtest",
        "--apibind",
        "127.0.0.1",
        "--apiport",
        str(api_port),
        "--rpcport",
        str(free_port()),
        "--btcrpcconnect",
        rpc_host,
        "--btcrpcport",
        str(rpc_port),
        "--btcrpcuser",
        rpc_user,
        "--btcrpcpassword",
        rpc_password,
        "--zmqhashblock",
        zmq_url,
        *extra,
    ]


class Teosd(Process):
    """``teosd`` as a subprocess; ``wait_ready`` waits until its API answers ``/ping``."""

    def __init__(
        self, datadir: Path, args: Sequence[str], api_port: int, extra_env: dict[str, str] | None = None
    ) -> None:
        self.datadir = datadir
        self.api_port = api_port
        super().__init__("teosd", args, datadir / "teosd.log", {**clean_env(), **(extra_env or {})})

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until the API answers ``/ping`` and every API worker has started. (granian does not stop
        a worker that is still starting when teosd gets SIGTERM: it kills it after its 10 s grace, so a
        test that signals teosd must not do it before its workers are up.)"""

        def ready() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=2)
                try:
                    conn.request("GET", "/ping")
                    return conn.getresponse().status == 200 and self._workers_started()
                finally:
                    conn.close()
            return False

        wait_until(ready, timeout, "teosd's API to answer")

    def _workers_started(self) -> bool:
        log = self.log_path.read_text(errors="replace")
        announced = re.search(r"API listening .* workers=(\d+)", log)
        return announced is not None and log.count("Started worker-") >= int(announced.group(1))

    def tower_id(self) -> UserId:
        """The tower id teosd logged at start."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "tower id=" in line:
                return UserId.from_hex(line.split("tower id=")[1].split()[0])
        raise RuntimeError("teosd has not logged its tower id")
