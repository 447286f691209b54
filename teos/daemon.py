"""teosd's composition root: builds every part from the Config, starts them in order, stops them in reverse.

Order: logging -> store (``<datadir>/<network>/db``, LevelDB) -> tower key -> bitcoind client -> Gatekeeper
-> Engine (chain monitor, Watcher, Responder; its start-up checks bitcoind's network and pruning) ->
TowerCore and its worker channel (``teos.api.ipc.CoreServer``) -> admin API -> API workers (granian).
Stopping goes the other way: granian stops accepting and each worker finishes the requests in hand (each
request's write is either synced or not started, never partial), then the worker channel closes, then the
engine stops and joins its threads (a block's effects are one atomic batch), then the store is closed.
SIGTERM and SIGINT trigger that and teosd exits 0; a second signal during shutdown changes nothing.

Serving: the public API runs in ``--apiworkers`` processes (one per core by default) under granian, a
production server (HTTP in Rust, Flask in threads behind teos.api.serving). Each worker parses and validates
requests, recovers the signer, signs the receipts, and asks this process for every state change over an
authenticated Unix socket (``teos.api.ipc``); this process keeps the database, the Gatekeeper and the
engine: one writer. Why: one Python process tops out near 700 add_appointment/s here (the GIL; ~1.4 ms of
CPU per request, about half of it HTTP and Flask), so the CPU work of a request has to use the other cores.
Measured (a probe doing add_appointment's HTTP, JSON and crypto work, loaded by wrk, 2 cores): waitress in one
process ~1340/s, granian with one worker ~1670/s; two processes: waitress ~2490/s, granian ~3890/s.
gunicorn (gthread) measured ~930/s for one process and would put its arbiter between the signals and the
state. The worker processes are spawned fresh (never forked from this threaded process), get the tower
key through the spawn pickle, and are killed by the kernel if this process dies (``PR_SET_PDEATHSIG``), so
a crashed teosd never leaves workers answering on its port. granian respawns a worker that dies and
gives up (teosd then exits 1) if they keep dying.

The tower key: ``<datadir>/<network>/teos_sk.der`` and nowhere else (``teos.towerkey``: a lost file
stops teosd rather than silently changing the tower id). ``--overwritekey`` replaces it. The tower id
(the public key) is logged at start. teosd runs with umask 077 and keeps its datadir private
(``teos.hardening``).

Fatal start-up errors (bad configuration, database locked by another teosd, bitcoind unreachable or on
another network, port in use) raise ``FatalError`` with an actionable message; ``main`` exits 1.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from common import crypto
from common.types import Txid, UserId
from teos.config import Config
from teos.fatal import FatalError
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch, StorageError, Store
from teos.towerkey import load_or_create_key

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds the HTTP threads get to finish the requests in hand


class _StopSignal(SystemExit):
    """Raised in the main thread by SIGTERM/SIGINT before granian takes the signals over."""


# -- logging -------------------------------------------------------------------------------------


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging(debug: bool, log_file: Path | None) -> None:
    """Configures the root logger once: UTC timestamps, ``level=`` and ``logger=`` fields, then the event
    text (modules log ``event key=value ...``); to stderr and, when set, to ``log_file``."""
    formatter = _UtcFormatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.getLogger("_granian").addFilter(_GRANIAN_NOISE)


# granian's own messages (workers spawned, stopped, crashed) go to teosd's log; its access log stays off.
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"level": "INFO", "propagate": True},
        "granian.access": {"level": "WARNING", "propagate": False},
    },
}


class _GranianNoise(logging.Filter):
    """Drops granian's advice to run fewer blocking threads: ours mostly wait on synced writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads" not in record.getMessage()


_GRANIAN_NOISE = _GranianNoise()


def _check_port_free(host: str, port: int) -> None:
    """Fails if ``host:port`` is taken. granian's listeners share the port among its workers
    (SO_REUSEPORT), so without this a second tower on the same port would silently share its traffic."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise FatalError(f"cannot listen on {host}:{port}: {e.strerror} "
                             "(is another teosd or program using this port? see --apiport)") from e


# -- the tower key --------------------------------------------------------------------------------


def check_network(store: Store, chain_name: str) -> None:
    """Refuses a database made for another network; records the network in a new one."""
    recorded = store.get(keys.META_NETWORK)
    if recorded is None:
        batch = Batch()
        batch.put(keys.META_NETWORK, chain_name.encode("ascii"))
        store.commit(batch)
    elif recorded.decode("ascii", "replace") != chain_name:
        raise FatalError(f"the database at {store.path} belongs to network "
                         f"'{recorded.decode('ascii', 'replace')}', not '{chain_name}'")


# -- the late-bound chain view ---------------------------------------------------------------------


class _ChainViewRef:
    """A ChainView forwarding to the engine, which is built after the Gatekeeper it needs as its ledger."""

    def __init__(self) -> None:
        self.target: Any = None

    @property
    def bitcoind_reachable(self) -> bool:
        return bool(self.target.bitcoind_reachable)

    @property
    def tip_height(self) -> int:
        return int(self.target.tip_height)

    def breach_in_cache(self, record: AppointmentRecord) -> Txid | None:
        result: Txid | None = self.target.breach_in_cache(record)
        return result

    def appointment_added(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        self.target.appointment_added(record, dispute_txid)


# -- the daemon -----------------------------------------------------------------------------------


class Daemon:
    """Holds every part of a running tower; ``start`` builds and starts them, ``stop`` undoes it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.bitcoind: Any = None
        self.gatekeeper: Any = None
        self.engine: Any = None
        self.core: Any = None
        self.core_server: Any = None
        self.server: Any = None
        self.admin: Any = None
        self.metrics: Any = None
        self.tower_id: UserId | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        from teos.admin import Metrics
        from teos.api import DEFAULT_MAX_BODY_BYTES
        from teos.api.ipc import TOKEN_BYTES, CoreServer, socket_address
        from teos.api.limits import registration_limiter
        from teos.api.worker import WorkerSettings
        from teos.chain.bitcoind import BitcoindClient, BitcoindConfig
        from teos.engine import BootstrapError, Engine, EngineConfig
        from teos.gatekeeper import Gatekeeper, GatekeeperConfig
        from teos.hardening import secure_datadir
        from teos.service import DEFAULT_MAX_BLOB_BYTES, TowerCore

        c = self.config
        log.info("starting teosd network=%s datadir=%s", c.btc_network, c.datadir)
        for note in c.notes:
            log.warning("configuration: %s", note)
        secure_datadir(c)
        self.store = Store(c.db_path)
        try:
            self.store.open()
        except StorageError as e:
            self.store = None
            raise FatalError(f"{e}. Is another teosd running with datadir {c.datadir}?") from e
        check_network(self.store, c.chain_name)
        secret = load_or_create_key(c.key_path, self.store, c.overwrite_key)
        self.tower_id = crypto.public_key(secret)
        log.info("tower id=%s", self.tower_id.hex())

        self.bitcoind = BitcoindClient(BitcoindConfig(
            host=c.btc_rpc_connect, port=c.btc_rpc_port, user=c.btc_rpc_user, password=c.btc_rpc_password,
            cookie_file=None if c.btc_rpc_user else c.btc_rpc_cookie,
        ))
        chain = _ChainViewRef()
        self.metrics = Metrics()
        self.gatekeeper = Gatekeeper(self.store, GatekeeperConfig(
            subscription_slots=c.subscription_slots, subscription_duration=c.subscription_duration,
            expiry_delta=c.expiry_delta, max_appointments=c.max_appointments,
            min_to_self_delay=c.min_to_self_delay, max_appointments_per_user=c.max_appointments_per_user,
            max_users=c.max_users, new_user_reserve=c.new_user_reserve, new_user_blocks=c.new_user_blocks,
        ), chain)
        self.engine = Engine(
            EngineConfig(
                btc_network=c.chain_name, poll_interval=c.poll_interval, zmq_url=c.zmq_hashblock or None,
                locator_cache_size=c.locator_cache_size, rebroadcast_after=c.rebroadcast_after,
            ),
            self.store, self.bitcoind, self.gatekeeper, [self.gatekeeper], metrics=self.metrics,
        )
        chain.target = self.engine
        self.gatekeeper.start()
        try:
            self.engine.start()
        except BootstrapError as e:
            raise FatalError(f"cannot start on bitcoind {c.btc_rpc_connect}:{c.btc_rpc_port}: {e}") from e
        self.core = TowerCore(self.gatekeeper, self.engine, self.store)
        self.core_server = CoreServer(self.core, os.urandom(TOKEN_BYTES), socket_address(c.network_dir),
                                      on_observations=self.metrics.observe_requests,
                                      on_dropped=self.metrics.observations_dropped,
                                      admission=registration_limiter(c))
        self.core_server.start()
        self._worker_settings = WorkerSettings(
            address=self.core_server.address, token=self.core_server.token, tower_secret_key=secret,
            min_to_self_delay=c.min_to_self_delay, max_blob_bytes=DEFAULT_MAX_BLOB_BYTES,
            max_body_bytes=DEFAULT_MAX_BODY_BYTES, debug=c.debug,
            log_file=str(c.log_file) if c.log_file else None, parent_pid=os.getpid(),
            threads=c.api_threads, client_timeout=c.client_timeout, behind_proxy=c.behind_proxy,
            requests_per_second=c.api_requests_per_second,
            limit_registrations=self.core_server.admission is not None,
        )
        self.server = self._make_server()
        self._start_admin()

    def _start_admin(self) -> None:
        """The admin API (teos-cli, /metrics, /ready) on rpcbind:rpcport, behind the datadir's cookie."""
        from teos.admin import AdminServer, AdminServerError, StoreAdminBackend

        assert self.store is not None and self.tower_id is not None
        c = self.config
        backend = StoreAdminBackend(
            self.store, self.engine.status, self.tower_id,
            stop_callback=lambda: os.kill(os.getpid(), signal.SIGTERM),
        )  # fmt: skip
        self.admin = AdminServer(
            backend, c.network_dir, host=c.rpc_bind, port=c.rpc_port, metrics=self.metrics,
            client_timeout=c.client_timeout,
        )
        try:
            self.admin.start()
        except AdminServerError as e:
            self.admin = None
            raise FatalError(f"{e} (is another teosd or program using this port? see --rpcport)") from e
        log.info("admin API listening host=%s port=%d cookie=%s", c.rpc_bind, self.admin.port,
                 self.admin.cookie_file)  # fmt: skip

    def _make_server(self) -> Any:
        """granian's supervisor for the API workers (see the module docstring); listens in ``serve``."""
        from granian import Granian
        from granian.log import LogLevels

        from teos.api.serving import connections_per_worker, granian_options, raise_open_file_limit

        c = self.config
        _check_port_free(c.api_bind, c.api_port)
        # Workers are fresh interpreters: forking this process, whose engine threads hold locks, is unsafe.
        multiprocessing.set_start_method("spawn", force=True)
        server = Granian(
            "teos.api.worker:load_app", address=c.api_bind, port=c.api_port,
            **granian_options(workers=c.api_workers_count, client_timeout=c.client_timeout,
                              max_connections=connections_per_worker(c.api_max_connections,
                                                                     raise_open_file_limit())),
            workers_kill_timeout=int(SHUTDOWN_TIMEOUT),
            log_level=LogLevels.debug if c.debug else LogLevels.info,
            log_dictconfig=_GRANIAN_LOGGING,
        )
        setup_logging(c.debug, c.log_file)  # granian's dictConfig replaced our handlers
        log.info("API listening host=%s port=%d workers=%d threads=%d", c.api_bind, c.api_port,
                 c.api_workers_count, c.api_threads)
        return server

    def serve(self) -> None:
        """Serves until SIGTERM/SIGINT (granian's handlers, from here on, stop the workers gracefully:
        each finishes the requests in hand, whose writes are synced or not started) and returns.
        Raises SystemExit if the workers keep dying (granian's crash-loop guard)."""
        from teos.api.worker import load_app

        self.server.serve(target_loader=functools.partial(load_app, self._worker_settings))

    def stop(self) -> None:
        """Stops whatever was started, in reverse order; safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                self.admin.stop()  # stops listening and deletes the cookie
        if self.core_server is not None:
            self.core_server.stop()  # the workers are gone; requests in hand finished their writes
        if self.engine is not None:
            log.info("stopping the engine")
            self.engine.stop()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        if self.bitcoind is not None:
            with contextlib.suppress(Exception):
                self.bitcoind.close()
        if self.store is not None:
            self.store.close()
            log.info("database closed")


class _Signals:
    """SIGTERM/SIGINT raise ``_StopSignal`` in the main thread until ``disarm``; later ones are logged."""

    def __init__(self) -> None:
        self.armed = False

    def install(self) -> None:
        self.armed = True
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def disarm(self) -> None:
        self.armed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.armed:
            log.info("received %s, already shutting down", name)
            return
        self.armed = False
        log.info("received %s, shutting down", name)
        raise _StopSignal(0)


def run(config: Config) -> int:
    """Runs teosd until a signal; returns the exit status (0 after a clean stop, 1 on a fatal error)."""
    from teos.hardening import restrict_umask

    restrict_umask()  # before the log file, the datadir or anything else is created
    setup_logging(config.debug, config.log_file)
    daemon = Daemon(config)
    signals = _Signals()
    status = 0
    try:
        signals.install()
        daemon.start()
        daemon.serve()
    except _StopSignal:
        pass
    except SystemExit as e:  # granian gave up: its workers kept dying
        log.error("fatal: the API workers failed repeatedly (exit %s); see the errors above", e.code)
        status = 1
    except FatalError as e:
        log.error("fatal: %s", e)
        status = 1
    except Exception:
        log.exception("fatal: unexpected error")
        status = 1
    finally:
        signals.disarm()
    try:
        daemon.stop()
    except Exception:
        log.exception("error while stopping")
        status = 1
    log.info("teosd stopped status=%d", status)
    return status
