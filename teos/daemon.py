"""teosd's composition root: builds every part from the Config, starts them in order, stops them in reverse.

Order: logging -> store (``<datadir>/<network>/db``, LevelDB) -> tower key -> bitcoind client -> Gatekeeper
-> Engine (chain monitor, Watcher, Responder; its start-up checks bitcoind's network and pruning) ->
service -> Flask app -> HTTP server. Stopping goes the other way: the server stops accepting and its
threads finish the requests in hand (each request's write is either synced or not started, never partial),
then the engine stops and joins its threads (a block's effects are one atomic batch), then the store is
closed. SIGTERM and SIGINT trigger that and teosd exits 0; a second signal during shutdown is ignored.

Serving: waitress, a production pure-Python WSGI server, in this process, with a pool of threads; the
engine's threads live beside it, so the database and the in-memory state have a single owner (LevelDB
allows one process anyway). Measured with ``bench/load_servers.py`` (a probe doing add_appointment's real
work, 2 client processes on the same 2 cores): waitress ~1050 appointments/s, cheroot ~960, gunicorn with
one gthread worker ~770, Werkzeug's development server ~500. gunicorn would also need the engine to start
in its forked worker (post_worker_init) and would put an arbiter process between the signals and the state;
waitress is faster here and keeps teosd one process whose signals, exit status and lock are its own.
The whole tower under ``bench/load.py`` (many users, 16 connections): ~520-640 accepted appointments/s,
each synced before its receipt, with teosd using one core (~1.5 ms of CPU per request; the GIL is the limit,
the second core sits mostly idle). Going further takes the per-request CPU work (HTTP parsing, JSON, key
recovery, receipt signing) into other processes while this one stays the single writer.

The tower key: ``<datadir>/<network>/teos_sk.der``, the secp256k1 secret key in DER (the format python-teos
used, so its key file can be brought over), mode 0600, created atomically (written to a temporary file
opened with O_EXCL and mode 0600, fsynced, renamed). It is also kept in the database (``m|tower_key``):
when the file is lost, it is restored from there so the tower id does not change. ``--overwritekey``
replaces both. The tower id (the public key) is logged at start.

Fatal start-up errors (bad configuration, database locked by another teosd, bitcoind unreachable or on
another network, port in use) raise ``FatalError`` with an actionable message; ``main`` exits 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from coincurve import PrivateKey

from common import crypto
from common.types import Txid, UserId
from teos.config import Config
from teos.fsutil import write_private_file
from teos.storage import keys
from teos.storage.codec import AppointmentRecord
from teos.storage.store import Batch, StorageError, Store

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds the HTTP threads get to finish the requests in hand


class FatalError(RuntimeError):
    """teosd cannot start or keep running; the message says what to do."""


class _StopSignal(SystemExit):
    """Raised in the main thread by SIGTERM/SIGINT (waitress's loop returns on SystemExit)."""


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
    # waitress warns about its queue depth under load: expected with bursts, not an operator's concern.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


# -- the tower key --------------------------------------------------------------------------------


def load_or_create_key(path: Path, store: Store, overwrite: bool) -> bytes:
    """The tower's 32-byte secret key: from ``path``, else from the database, else a new one."""
    stored = store.get(keys.META_TOWER_KEY)
    secret: bytes | None = None
    if overwrite:
        log.warning("replacing the tower key (--overwritekey); registered users must register again")
    elif path.exists():
        try:
            secret = bytes(PrivateKey.from_der(path.read_bytes()).secret)
        except Exception as e:
            raise FatalError(f"cannot read the tower key {path}: {e}; restore it, or start with "
                             "--overwritekey to make a new one (users must then register again)") from e
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("tower key file is readable by others path=%s mode=%o; chmod 600 it", path, mode)
    elif stored is not None and len(stored) == 32:
        secret = stored
        log.warning("tower key file missing, restored from the database path=%s", path)
        write_private_file(path, PrivateKey(secret).to_der())
    if secret is None:
        secret = crypto.generate_secret_key()
        write_private_file(path, PrivateKey(secret).to_der())
        log.info("tower key created path=%s", path)
    if stored != secret:
        batch = Batch()
        batch.put(keys.META_TOWER_KEY, secret)
        store.commit(batch)
    return secret


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
        self.service: Any = None
        self.server: Any = None
        self.admin: Any = None
        self.metrics: Any = None
        self.tower_id: UserId | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        from teos.admin import Metrics
        from teos.chain.bitcoind import BitcoindClient, BitcoindConfig
        from teos.engine import BootstrapError, Engine, EngineConfig
        from teos.gatekeeper import Gatekeeper, GatekeeperConfig
        from teos.service import TowerService

        c = self.config
        log.info("starting teosd network=%s datadir=%s", c.btc_network, c.datadir)
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
            min_to_self_delay=c.min_to_self_delay,
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
        self.service = TowerService.local(self.gatekeeper, self.engine, self.store, secret)
        self.server = self._make_server(self.service)
        log.info("API listening host=%s port=%d threads=%d", c.api_bind, c.api_port, c.api_threads)
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
            backend, c.network_dir, host=c.rpc_bind, port=c.rpc_port, metrics=self.metrics
        )
        try:
            self.admin.start()
        except AdminServerError as e:
            self.admin = None
            raise FatalError(f"{e} (is another teosd or program using this port? see --rpcport)") from e
        log.info("admin API listening host=%s port=%d cookie=%s", c.rpc_bind, self.admin.port,
                 self.admin.cookie_file)  # fmt: skip

    def _make_server(self, service: Any) -> Any:
        import waitress

        from teos.admin import instrument
        from teos.api import create_app

        app = create_app(service)
        instrument(app, self.metrics, name="public")
        try:
            return waitress.create_server(
                app, host=self.config.api_bind, port=self.config.api_port, threads=self.config.api_threads,
                ident="teos", clear_untrusted_proxy_headers=True, channel_timeout=60,
            )
        except OSError as e:
            raise FatalError(f"cannot listen on {self.config.api_bind}:{self.config.api_port}: {e.strerror} "
                             "(is another teosd or program using this port? see --apiport)") from e

    def serve(self) -> None:
        """Serves until a signal raises ``_StopSignal`` in this (main) thread."""
        self.server.run()

    def stop(self) -> None:
        """Stops whatever was started, in reverse order; safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                self.admin.stop()  # stops listening and deletes the cookie
        if self.server is not None:
            log.info("stopping the API")
            with contextlib.suppress(Exception):
                self.server.close()
            self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=SHUTDOWN_TIMEOUT)
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
