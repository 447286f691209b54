"""The teos-regtest simulator: a bitcoind regtest node stand-in with real RPC, ZMQ and persistence.

``Simulator(datadir, rpc_port=0, zmq_port=0, rpcuser=None, rpcpassword=None)`` binds nothing until
``start()``; afterwards ``rpc_port``/``zmq_port`` hold the bound ports (useful with port 0). Without an
``rpcpassword`` it authenticates with a cookie written to ``<datadir>/regtest/.cookie``
(``__cookie__:<64 hex>``) and removed at ``stop()``, as Bitcoin Core does; with one, only user/password
work. ``stop()`` is idempotent and persists the mempool; ``wait()`` blocks until a ``stop`` RPC or
``stop()``. Scripts and signatures are verified by Bitcoin Core's own code where py-bitcoinkernel can be
loaded (``teos/regtest/scriptcheck.py``; a WARNING is logged at start where it cannot). Fidelity limits: no
real proof of work difficulty (blocks meet regtest's 207fffff target by a cheap nonce search), no P2P; see
``teos/regtest/chain.py``.

Fault knobs (RPC methods, answered even during warm-up; Bitcoin Core answers -32601 to all of them):

- ``sim_warmup(seconds, [message])``: answer -28 to every other method for ``seconds`` (<0 or null: until
  ``sim_warmup(0)`` clears it). Message defaults to ``Loading block index…``.
- ``sim_dropzmq(topic, n)``: drop the next n ``hashblock``/``rawtx``/``all`` messages (sequence numbers
  still advance, so subscribers see a gap).
- ``sim_prune(height)``: pretend blocks below ``height`` are pruned (getblock -1); 0 turns it off.
- ``sim_hang(seconds, ["hang"|"refuse"])``: hold every request unanswered for that long, or close the RPC
  port (connection refused) and reopen it afterwards.
- ``sim_zmq("kill"|"revive")``: close the ZMQ socket / rebind it on the same port.
- ``sim_fail(method, code, message, [count])``: the next ``count`` (default 1) calls of ``method`` fail.
- ``sim_latency(seconds)``: delay every RPC answer.
- ``sim_garble(method, kind, [count], [seconds])``: the next ``count`` (default 1) answers to ``method``
  are malformed in the way ``kind`` says (``teos.regtest.faults``: wrong_type, wrong_field_type,
  missing_field, bad_value, cut_body, cut_stream, html_500, busy_503, hang; a hang holds ``seconds``,
  default 3, then closes). Calls queue in order after those already queued; ``sim_garble(method)``
  drops what is queued for ``method``, ``sim_garble()`` everything.
- ``sim_status()``: the knobs' state and the ZMQ sequence numbers.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from teos.regtest import scriptcheck
from teos.regtest.chain import ChainState
from teos.regtest.errors import RpcError
from teos.regtest.rpc import RpcDispatcher
from teos.regtest.server import Faults, RpcServer
from teos.regtest.zmqpub import TOPICS, ZmqPublisher

logger = logging.getLogger(__name__)

COOKIE_USER = "__cookie__"


class Simulator:
    def __init__(
        self,
        datadir: str | os.PathLike[str],
        rpc_port: int = 0,
        zmq_port: int = 0,
        rpcuser: str | None = None,
        rpcpassword: str | None = None,
        txindex: bool = False,
    ) -> None:
        self.datadir = Path(datadir)
        self.rpcuser = rpcuser
        self.rpcpassword = rpcpassword
        self.txindex = txindex
        self.started_at = 0.0
        self.faults = Faults()
        self.zmq = ZmqPublisher(zmq_port)
        self.chain = ChainState(self.datadir, self.zmq)
        self.dispatcher = RpcDispatcher(self.chain, self)
        self.server = RpcServer(rpc_port, self._dispatch, self._credentials, self.faults)
        self._cookie: str | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._started = False
        self._refuse_thread: threading.Thread | None = None

    # -- properties -------------------------------------------------------------------------------------
    @property
    def rpc_port(self) -> int:
        return self.server.port

    @property
    def zmq_port(self) -> int:
        return self.zmq.port

    @property
    def zmq_url(self) -> str:
        return self.zmq.url

    @property
    def cookie_path(self) -> Path:
        return self.datadir / "regtest" / ".cookie"

    @property
    def cookie(self) -> str | None:
        """``__cookie__:<hex>`` while running with cookie auth, else None."""
        return self._cookie

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.started_at = time.time()
        scriptcheck.warn_if_unavailable()  # the kernel itself loads when a script is first checked
        (self.datadir / "regtest").mkdir(parents=True, exist_ok=True)
        self.chain.load()
        self.zmq.start()
        if not self.rpcpassword:
            self._write_cookie()
        self.server.start()
        logger.info(
            "simulator started rpcport=%d zmqport=%d datadir=%s", self.rpc_port, self.zmq_port, self.datadir
        )

    def _write_cookie(self) -> None:
        self._cookie = f"{COOKIE_USER}:{secrets.token_hex(32)}"
        tmp = self.cookie_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._cookie)
        os.replace(tmp, self.cookie_path)

    def _credentials(self) -> list[str]:
        creds = []
        if self.rpcpassword:
            creds.append(f"{self.rpcuser or ''}:{self.rpcpassword}")
        if self._cookie:
            creds.append(self._cookie)
        return creds

    def stop(self) -> None:
        with self._stop_lock:
            if not self._started or self._stopped.is_set():
                self._stopped.set()
                return
            self.faults.stopping.set()
            self.server.stop()
            self.zmq.stop()
            self.chain.close()
            if self._cookie is not None:
                try:
                    self.cookie_path.unlink()
                except FileNotFoundError:
                    pass
                self._cookie = None
            self._stopped.set()
            logger.info("simulator stopped")

    def request_stop(self) -> None:
        """For the ``stop`` RPC: stops from another thread so the answer is sent first."""
        self.faults.stopping.set()
        threading.Thread(target=self._delayed_stop, name="regtest-stop", daemon=True).start()

    def _delayed_stop(self) -> None:
        time.sleep(0.05)
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # -- dispatch ---------------------------------------------------------------------------------------
    def _dispatch(self, method: str, params: Any) -> Any:
        return self.dispatcher.call(method, params)

    def fault(self, name: str, args: list[Any]) -> Any:
        """The ``sim_*`` knobs (see the module docstring)."""
        f = self.faults
        try:
            if name == "sim_warmup":
                seconds = args[0] if args else None
                message = args[1] if len(args) > 1 and args[1] else "Loading block index…"
                with f.lock:
                    f.warmup_message = str(message)
                    if seconds is None or float(seconds) < 0:
                        f.warmup_until = math.inf
                    elif float(seconds) == 0:
                        f.warmup_until = None
                    else:
                        f.warmup_until = time.monotonic() + float(seconds)
            elif name == "sim_dropzmq":
                self.zmq.drop(str(args[0]), int(args[1]))
            elif name == "sim_prune":
                with self.chain.lock:
                    self.chain.prune_below = max(0, int(args[0]))
            elif name == "sim_hang":
                seconds = float(args[0])
                mode = args[1] if len(args) > 1 and args[1] else "hang"
                if mode == "hang":
                    f.hang_until = time.monotonic() + seconds
                elif mode == "refuse":
                    self.refuse_for(seconds)
                else:
                    raise ValueError("mode must be hang or refuse")
            elif name == "sim_zmq":
                if args[0] == "kill":
                    self.zmq.kill()
                elif args[0] == "revive":
                    self.zmq.revive()
                else:
                    raise ValueError("action must be kill or revive")
            elif name == "sim_fail":
                count = int(args[3]) if len(args) > 3 and args[3] is not None else 1
                with f.lock:
                    f.fail_rules[str(args[0])] = [int(args[1]), str(args[2]), count]
            elif name == "sim_latency":
                f.latency = max(0.0, float(args[0]))
            elif name == "sim_garble":
                self._garble(args)
            elif name != "sim_status":
                raise ValueError("unknown knob")
        except (IndexError, TypeError, ValueError) as e:
            raise RpcError(-8, f"{name}: {e}") from None
        return self.status()

    def _garble(self, args: list[Any]) -> None:
        queue = self.faults.garble
        if len(args) < 2 or args[1] is None:
            queue.clear(str(args[0]) if args and args[0] is not None else None)
            return
        count = int(args[2]) if len(args) > 2 and args[2] is not None else 1
        if len(args) > 3 and args[3] is not None:
            queue.add(str(args[0]), str(args[1]), count, float(args[3]))
        else:
            queue.add(str(args[0]), str(args[1]), count)

    def status(self) -> dict[str, Any]:
        f = self.faults
        now = time.monotonic()
        warm = f.warmup_until
        garble = f.garble.snapshot()
        return {
            "warmup": None if warm is None else (-1 if warm == math.inf else max(0.0, warm - now)),
            "hang": max(0.0, f.hang_until - now),
            "refuse": max(0.0, f.refuse_until - now),
            "latency": f.latency,
            "prune_below": self.chain.prune_below,
            "zmq_alive": self.zmq.alive,
            "zmq_sequence": self.zmq.sequences(),
            "zmq_drop": self.zmq.pending_drops(),
            "fail": {m: {"code": r[0], "message": r[1], "remaining": r[2]} for m, r in f.fail_rules.items()},
            "garble": {m: [{"kind": k, "remaining": n} for k, n in q] for m, q in garble.items()},
            "garbled": f.garble.delivered_by_method(),
            "topics": list(TOPICS),
        }

    def refuse_for(self, seconds: float) -> None:
        """Closes the RPC port for ``seconds`` (connection refused), then reopens it on the same port."""
        self.faults.refuse_until = time.monotonic() + seconds
        thread = threading.Thread(target=self._refuse, args=(seconds,), name="regtest-refuse", daemon=True)
        self._refuse_thread = thread
        thread.start()

    def _refuse(self, seconds: float) -> None:
        time.sleep(0.05)  # let the sim_hang answer leave first
        self.server.stop()
        if self.faults.stopping.wait(seconds):
            return
        with self._stop_lock:
            if not self._stopped.is_set():
                self.server.start()
