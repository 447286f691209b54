"""Handles on a running bitcoind for tests: the teos-regtest simulator or real Bitcoin Core.

Every end-to-end test talks to "a bitcoind" through :class:`BitcoindHandle`, so the same test runs against
the simulator and, when a ``bitcoind`` binary is available, against real Bitcoin Core (regtest). The API
(stable, other parts' tests rely on it):

- ``kind``: ``"simulator"`` or ``"bitcoin-core"``; ``supports_faults``: True only for the simulator (its
  ``sim_*`` RPCs; real Core answers -32601 to them, so tests needing faults use the ``simulator`` fixture).
- ``rpc_host`` (always 127.0.0.1), ``rpc_port``, ``rpc_user``, ``rpc_password``, ``rpc_url``;
  ``zmq_url``: one ``tcp://127.0.0.1:port`` endpoint publishing ``hashblock`` and ``rawtx``;
  ``datadir`` (the node's own ``-datadir``; regtest data lives in ``datadir/regtest``).
- ``rpc(method, *params)``: one JSON-RPC call on a connection of its own (``teos.chain.bitcoind.rpc_call``,
  the tower's own client); raises :class:`RPCError` (``.code``, ``.message``) for JSON-RPC errors,
  :class:`HTTPStatusError` (``.status``, ``.body``) for HTTP-level refusals such as 401,
  :class:`BitcoindUnreadable` for an answer that is not JSON-RPC (an error page, a cut body; both are
  :class:`BitcoindUnreachable`), and ``OSError`` (e.g. ConnectionRefusedError) when nothing listens.
- ``mine(n=1, address=None) -> list[str]``: ``generatetoaddress`` (to a throwaway address by default).
- ``start()`` / ``stop()`` (clean, via the ``stop`` RPC) / ``kill()`` (SIGKILL): the same datadir and ports
  are reused on restart, so the chain survives and clients can reconnect.
- ``wallet(name="default") -> teos.regtest.wallet.Wallet``: a key-holding wallet (one per name, per handle)
  that funds itself by mining and builds real signed transactions.

Both kinds are started as subprocesses on free loopback ports with explicit rpcuser/rpcpassword (so the
credentials survive a restart) and log to ``datadir/node.log``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from teos.chain.bitcoind import BitcoindUnreachable, BitcoindUnreadable, HTTPStatusError, RPCError, rpc_call
from teos.devtools import free_port, wait_until
from teos.regtest.wallet import Wallet

__all__ = [
    "BURN_ADDRESS",
    "REPO_ROOT",
    "BitcoinCoreHandle",
    "BitcoindHandle",
    "BitcoindUnreachable",
    "BitcoindUnreadable",
    "HTTPStatusError",
    "RPCError",
    "SimulatorHandle",
    "bitcoin_core_required",
    "core_build_dir",
    "find_bitcoind",
    "free_port",
    "make_handle",
    "rpc_call",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Mining to an address nobody holds keeps test wallets' coins apart from blocks mined for other reasons.
BURN_ADDRESS = "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202"  # P2WPKH of twenty zero bytes


class BitcoindHandle:
    """A bitcoind running as a subprocess of the test (see the module docstring for the contract)."""

    kind: str = ""
    supports_faults: bool = False

    def __init__(
        self, datadir: Path, rpc_user: str = "teos", rpc_password: str = "teos-test-password"
    ) -> None:
        self.datadir = Path(datadir)
        self.rpc_host = "127.0.0.1"
        self.rpc_port = free_port()
        self.zmq_port = free_port()
        self.rpc_user = rpc_user
        self.rpc_password = rpc_password
        self.process: subprocess.Popen[bytes] | None = None
        self._wallets: dict[str, Wallet] = {}
        self._log: IO[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------------------
    @property
    def zmq_url(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    @property
    def rpc_url(self) -> str:
        return f"http://{self.rpc_user}:{self.rpc_password}@{self.rpc_host}:{self.rpc_port}"

    # -- RPC -------------------------------------------------------------------------------------------
    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        return rpc_call(
            self.rpc_host, self.rpc_port, self.rpc_user, self.rpc_password, method, list(params), timeout
        )

    def mine(self, n: int = 1, address: str | None = None) -> list[str]:
        result = self.rpc("generatetoaddress", n, address or BURN_ADDRESS)
        return [str(h) for h in result]

    def wallet(self, name: str = "default") -> Wallet:
        """A :class:`teos.regtest.wallet.Wallet` bound to this node (same object for the same name)."""
        if name not in self._wallets:
            self._wallets[name] = Wallet(self.rpc, seed=f"tests-wallet-{name}".encode())
        return self._wallets[name]

    # -- process ---------------------------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Starts the node (same datadir and ports as before) and waits until RPC answers."""
        if self.running:
            raise RuntimeError("already running")
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.datadir / "node.log", "ab")
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )
        wait_until(self._ready, timeout=timeout, interval=0.05, message=f"{self.kind} did not start")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.kind} exited with {self.process.returncode}; see {self.datadir}/node.log"
            )
        try:
            self.rpc("getblockcount", timeout=5)
            return True
        except RPCError as e:
            return e.code != -28 or self.supports_faults  # the simulator's warm-up is a knob, not a wait
        except (OSError, BitcoindUnreachable, http.client.HTTPException):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the node cleanly (``stop`` RPC, then SIGTERM, then SIGKILL if it hangs)."""
        if not self.running:
            self._reap()
            return
        try:
            self.rpc("stop", timeout=5)
        except (RPCError, BitcoindUnreachable, OSError, http.client.HTTPException):
            self._signal(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown (the node gets no chance to flush or remove its cookie)."""
        if self.running:
            self._signal(signal.SIGKILL)
            assert self.process is not None
            self.process.wait(timeout=10)
        self._reap()

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class SimulatorHandle(BitcoindHandle):
    """The teos-regtest simulator, run as ``python -m teos.regtest`` so it can be killed and restarted."""

    kind = "simulator"
    supports_faults = True

    def __init__(self, datadir: Path, extra_args: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(datadir, **kwargs)
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "teos.regtest",
            "--datadir",
            str(self.datadir),
            "--rpcport",
            str(self.rpc_port),
            "--zmqport",
            str(self.zmq_port),
            "--rpcuser",
            self.rpc_user,
            "--rpcpassword",
            self.rpc_password,
            *self.extra_args,
        ]


def core_build_dir() -> Path:
    """Where ``scripts/build-bitcoind`` leaves the pinned Bitcoin Core (pin: ``scripts/bitcoin-core.env``)."""
    pin = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / "scripts" / "bitcoin-core.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = Path(os.environ.get("TEOS_CACHE") or xdg / "teos")
    return cache / f"bitcoin-core-pbk-{pin['PBK_VERSION']}" / "bin"


def find_bitcoind() -> str | None:
    """The Bitcoin Core binary named by $BITCOIND, else ``bitcoind`` on PATH, else the pinned build in the
    cache (``scripts/build-bitcoind``), else None."""
    named = os.environ.get("BITCOIND")
    if named:
        return named if os.path.exists(named) else shutil.which(named)
    on_path = shutil.which("bitcoind")
    if on_path:
        return on_path
    cached = core_build_dir() / "bitcoind"
    return str(cached) if os.access(cached, os.X_OK) else None


def bitcoin_core_required() -> bool:
    """True where a missing Bitcoin Core must fail the run instead of skipping (CI sets it: .ci/run)."""
    return os.environ.get("TEOS_REQUIRE_BITCOIN_CORE", "") not in ("", "0")


class BitcoinCoreHandle(BitcoindHandle):
    """Real Bitcoin Core in regtest mode on loopback, with ZMQ hashblock and rawtx on one endpoint."""

    kind = "bitcoin-core"
    supports_faults = False

    def __init__(self, datadir: Path, binary: str, extra_args: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(datadir, **kwargs)
        self.binary = binary
        self.extra_args = list(extra_args)

    def command(self) -> list[str]:
        return [
            self.binary,
            "-regtest",
            f"-datadir={self.datadir}",
            "-server=1",
            "-listen=0",
            "-listenonion=0",
            "-dnsseed=0",
            "-fixedseeds=0",
            "-natpmp=0",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            f"-rpcport={self.rpc_port}",
            f"-rpcuser={self.rpc_user}",
            f"-rpcpassword={self.rpc_password}",
            f"-zmqpubhashblock={self.zmq_url}",
            f"-zmqpubrawtx={self.zmq_url}",
            "-fallbackfee=0.0002",
            "-disablewallet=1",
            "-printtoconsole=1",
            "-debug=0",
            *self.extra_args,
        ]


def make_handle(kind: str, datadir: Path, extra_args: tuple[str, ...] = ()) -> BitcoindHandle:
    """Builds (does not start) a handle of the given kind; raises LookupError when Core is unavailable."""
    if kind == "simulator":
        return SimulatorHandle(datadir, extra_args=extra_args)
    if kind == "bitcoin-core":
        binary = find_bitcoind()
        if binary is None:
            raise LookupError(
                "no Bitcoin Core found ($BITCOIND, PATH, or the cache of scripts/build-bitcoind): run "
                "./scripts/build-bitcoind (about 20 minutes) or set BITCOIND=/path/to/bitcoind"
            )
        return BitcoinCoreHandle(datadir, binary, extra_args=extra_args)
    raise ValueError(f"unknown bitcoind kind {kind!r}")
