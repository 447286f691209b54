"""teosd's composition root: the one place where the tower's parts are built, wired, started and stopped.

Each part receives, through its constructor, only the narrow seams it uses (small Protocols, see
``teos.interfaces`` and each part's module); nothing reaches through another part. Order of ``start``:
logging -> store (``<datadir>/<network>/db``, LevelDB; its network checked) -> tower key -> bitcoind client
-> the tip (``ChainTip``, shared by both sides) -> an older database's layout migrated
(``teos.storage.migrate``) -> the locator index (``teos.storage.index``: loaded, or built once on an older
database) -> Gatekeeper -> a paid tower's payments (``build_payments``, only when ``paymentprice`` is above
0) -> the chain side (``build_chain_side``: Watcher, Responder, monitor, engine, and the claims as the
engine's last step; its start-up checks bitcoind's network and pruning) -> the grants a crash left
unapplied (``PaymentsSide.reconcile``) -> TowerCore and its worker channel (``teos.api.ipc.CoreServer``,
with the payment ops) -> admin API -> API workers (granian). Stopping goes the other way: granian stops
accepting and each worker finishes the requests in hand (each request's write is either synced or not
started, never partial), then the worker channel closes, then the chain side stops and joins its threads (a
block's effects are one atomic batch), then the index folds its journal, then the store is closed. SIGTERM
and SIGINT trigger that and teosd exits 0; a second signal during shutdown changes nothing.

Serving: the public API runs in ``--apiworkers`` processes (one per core by default) under granian, a
production server (HTTP in Rust, Flask in threads behind teos.api.serving). Each worker parses and validates
requests, recovers the signer, signs the receipts, and asks this process for every state change over an
authenticated Unix socket (``teos.api.ipc``); this process keeps the database, the Gatekeeper and the
engine: one writer. Why processes: one Python process tops out well below what the disk's group commit
allows (the GIL; ``bench/load_servers.py`` measures the serving options). The worker processes are
spawned fresh (never forked from this threaded process), get the tower key through the spawn pickle, and
are killed by the kernel if this process dies (``PR_SET_PDEATHSIG``), so a crashed teosd never leaves
workers answering on its port. granian respawns a worker that dies and gives up (teosd then exits 1) if
they keep dying.

The tower key: ``<datadir>/<network>/teos_sk.der`` and nowhere else (``teos.towerkey``: a lost file
stops teosd rather than silently changing the tower id). ``--overwritekey`` replaces it. The tower id
(the public key) is logged at start. teosd runs with umask 077 and keeps its datadir private
(``teos.hardening``).

Fatal start-up errors (bad configuration, database locked by another teosd or made for another network,
bitcoind unreachable, answering garbage or on another network for ``--btcstartuptimeout`` seconds, port
in use) raise ``FatalError`` with an actionable message; ``main`` logs it on one line and exits 1.

The watchdog (``teos.engine.watchdog``, ``--watchdogtimeout``, 0 turns it off): when the engine thread
or a monitor thread has stopped, or no block was processed for that long while bitcoind answers and its
tip is ahead, the tower has stopped watching. Registrations and appointments are refused (503) from that
moment, ``/ready`` and ``gettowerinfo`` say why, an ERROR is logged, and teosd stops as on SIGTERM and
exits with status 3 (``EXIT_WATCHDOG``) so that its service manager starts it again (crash-only: the new
process resumes from the database). The API refuses as soon as a watching thread is dead even with the
watchdog off.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from common import crypto
from common.types import UserId
from teos.chain.bitcoind import BitcoindClient, BitcoindConfig, RetryPolicy
from teos.chain.carrier import BroadcastRPC, Carrier
from teos.chain.monitor import ChainMonitor, ChainSource
from teos.chain.recent import RecentBlocks
from teos.chain.tip import ChainTip
from teos.config import Config
from teos.engine.engine import (
    ClaimsStep,
    Engine,
    EngineConfig,
    EngineMetrics,
    Inbox,
    NoMetrics,
    decode_penalty,
)
from teos.engine.pointer import PointerStore
from teos.engine.progress import BlockCounter, Progress
from teos.engine.startup import BootstrapError, ChainInfoSource, Startup, StartupConfig
from teos.engine.watchdog import Watchdog
from teos.fatal import FatalError
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.interfaces import BlockListener, SlotLedger
from teos.logs import GRANIAN_LOGGING, setup_logging
from teos.payments.chain import BoundedFundingChain, RpcFundingChain
from teos.payments.claims import Claimer
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.ledger import GatekeeperLedger
from teos.payments.operator import PaymentsOperator
from teos.payments.report import payments_report
from teos.payments.runner import ClaimRunner, RpcBlocks
from teos.payments.service import PaymentCore, PaymentOps
from teos.payments.store import ChannelStore
from teos.payments.tower_key import TowerPaymentKey
from teos.responder.responder import Responder
from teos.service import DEFAULT_MAX_BLOB_BYTES, TowerCore
from teos.storage import keys
from teos.storage.atomic import LevelDBAtomicStore
from teos.storage.index import LocatorIndex
from teos.storage.migrate import MigrationError, migrate
from teos.storage.store import Batch, StorageError, Store
from teos.towerkey import load_or_create_key
from teos.watcher.locator_cache import LocatorCache
from teos.watcher.watcher import Watcher

if TYPE_CHECKING:  # the HTTP side (flask, granian, prometheus_client) is imported by Daemon.start only
    from teos.admin import AdminServer
    from teos.api.ipc import CoreServer
    from teos.api.worker import WorkerSettings
    from teos.metrics import Metrics

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 10.0  # seconds the HTTP threads get to finish the requests in hand
ADMIN_CLAIM_TIMEOUT = 60.0  # seconds an operator's claim waits for the engine thread (a block in hand)
EXIT_FATAL = 1  # could not start, or could not go on (see the log's "fatal:" line)
EXIT_WATCHDOG = 3  # the watchdog ended a tower that had stopped watching the chain


class _StopSignal(SystemExit):
    """Raised in the main thread by SIGTERM/SIGINT before granian takes the signals over."""


class ApiServer(Protocol):
    """granian's supervisor of the API workers, as the daemon uses it."""

    def serve(
        self,
        spawn_target: Callable[..., None] | None = None,
        target_loader: Callable[..., Any] | None = None,  # returns the app (RSGI: an object, not a callable)
    ) -> object: ...


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


# -- the tower key and the database's network --------------------------------------------------------


def check_network(store: Store, chain_name: str) -> None:
    """Refuses a database made for another network; records the network in a new one. The one check of
    the database's network (the start-up checks compare bitcoind's network with the configured one)."""
    recorded = store.get(keys.META_NETWORK)
    if recorded is None:
        batch = Batch()
        batch.put(keys.META_NETWORK, chain_name.encode("ascii"))
        store.commit(batch)
    elif recorded.decode("ascii", "replace") != chain_name:
        raise FatalError(f"the database at {store.path} belongs to network "
                         f"'{recorded.decode('ascii', 'replace')}', not '{chain_name}'")


# -- the chain side ---------------------------------------------------------------------------------


class Bitcoind(ChainSource, ChainInfoSource, BroadcastRPC, Protocol):
    """Every call the chain side makes to bitcoind (``BitcoindClient``; tests pass a fake chain)."""


class ChainMetrics(EngineMetrics, BlockCounter, Protocol):
    """The counters the chain side bumps (``teos.metrics.Metrics``, or ``NoMetrics``)."""


@dataclass
class ChainSide:
    """The chain side of a tower, wired by ``build_chain_side``: ``start`` runs the start-up checks
    (``BootstrapError`` when the tower cannot run against this bitcoind), then the engine thread from
    where they say to resume, then the monitor; ``stop`` undoes it."""

    tip: ChainTip
    cache: LocatorCache
    watcher: Watcher
    responder: Responder
    recent: RecentBlocks
    monitor: ChainMonitor
    progress: Progress
    startup: Startup
    engine: Engine

    def start(self) -> None:
        resume = self.startup.run()
        self.engine.start(resume.tip)
        self.monitor.start(resume.tip, resume.known)

    @property
    def processed_height(self) -> int:
        """Height of the last block processed (what the watchdog counts as progress)."""
        return self.engine.processed_height

    def stopped_threads(self) -> list[str]:
        """The watching threads (engine, walker, ZMQ listener) that have stopped while running."""
        return [*self.engine.stopped_threads(), *self.monitor.stopped_threads()]

    def stop(self, timeout: float = 10.0) -> None:
        self.startup.cancel()
        self.engine.inbox.close()  # a walker waiting for room in the inbox gives up its block
        self.monitor.stop(timeout)
        self.engine.stop(timeout)


def build_chain_side(
    config: EngineConfig,
    store: Store,
    bitcoind: Bitcoind,
    tip: ChainTip,
    ledger: SlotLedger,
    index: LocatorIndex,
    listeners: Sequence[BlockListener] = (),
    metrics: ChainMetrics | None = None,
    claims: ClaimsStep | None = None,
) -> ChainSide:
    """Builds and wires the chain side (nothing starts): Watcher and Responder over the store, the
    monitor feeding the engine's inbox, one record of recent blocks for both, the tip for everyone."""
    counters: ChainMetrics = metrics if metrics is not None else NoMetrics()
    cache = LocatorCache(config.locator_cache_size)
    watcher = Watcher(store, cache, decode_penalty, index)
    responder = Responder(
        store, Carrier(bitcoind), config.rebroadcast_after, config.irrevocable_confirmations, index
    )
    recent = RecentBlocks(bitcoind, config.recent_blocks)
    inbox = Inbox(config.max_pending_blocks)
    monitor = ChainMonitor(
        bitcoind, [inbox], config.poll_interval, config.zmq_url, on_reachability=tip.set_reachable,
        retry_max_delay=config.retry_max_delay, recent=recent,
    )  # fmt: skip
    pointer = PointerStore(store, config.recent_blocks)
    progress = Progress(tip, monitor, index, counters)
    startup = Startup(
        StartupConfig(config.btc_network, config.startup_retry),
        bitcoind, bitcoind, pointer, store, cache, tip,
    )  # fmt: skip
    engine = Engine(
        config, inbox, tip, watcher, responder, pointer, recent, store, ledger, listeners, progress, counters,
        claims,
    )  # fmt: skip
    return ChainSide(tip, cache, watcher, responder, recent, monitor, progress, startup, engine)


# -- a paid tower's payments ------------------------------------------------------------------------


@dataclass
class PaymentsSide:
    """A paid tower's payment parts, wired by ``build_payments`` (nothing runs by itself: the runner is
    driven by the engine thread, the core by the worker channel's threads)."""

    config: PaymentConfig
    key: TowerPaymentKey
    channels: ChannelStore
    handler: PaymentHandler
    core: PaymentCore
    runner: ClaimRunner

    def reconcile(self) -> None:
        """Applies every grant a crash left unapplied (the tip must be known: run after the chain side
        started, before the API)."""
        applied = self.handler.reconcile()
        log.info("payments ready channels=%d grants_applied_at_start=%d price=%d payment_key=%s",
                 len(self.channels.all()), applied, self.config.price, self.key.public_key.hex())  # fmt: skip


def build_payments(
    config: PaymentConfig,
    store: Store,
    bitcoind: BitcoindClient,
    tip: Callable[[], int],
    gatekeeper: Gatekeeper,
    tower_secret: bytes,
    metrics: Metrics | None = None,
) -> PaymentsSide:
    """The payment parts over the tower's own database (the atomic store's ``c|`` namespace) and bitcoind:
    the payment key derived from the tower key; funding checks through ``gettxout`` (at most two at once,
    so requests from the network can never fill bitcoind's RPC queue and slow the engine) against
    ``tip`` (the payments' idea of the chain's height); grants applied by the Gatekeeper; claims
    broadcast through a Carrier."""
    key = TowerPaymentKey.from_tower_secret(tower_secret)
    channels = ChannelStore(LevelDBAtomicStore(store))
    funding = BoundedFundingChain(RpcFundingChain(bitcoind.call, tip=tip))
    gk = gatekeeper.config
    handler = PaymentHandler(
        config, channels, funding, GatekeeperLedger(gatekeeper), FixedPrice(config.price), key.public_key,
        gk.subscription_slots, gk.subscription_duration,
    )  # fmt: skip
    runner = ClaimRunner(
        Claimer(config, channels, key), Carrier(bitcoind), RpcBlocks(bitcoind), gatekeeper, metrics
    )
    return PaymentsSide(config, key, channels, handler, PaymentCore(handler), runner)


# -- the daemon -----------------------------------------------------------------------------------


class Daemon:
    """Holds every part of a running tower; ``start`` builds and starts them, ``stop`` undoes it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.bitcoind: BitcoindClient | None = None
        self.tip = ChainTip()
        self.metrics: Metrics | None = None
        self.index: LocatorIndex | None = None
        self.gatekeeper: Gatekeeper | None = None
        self.chain: ChainSide | None = None
        self.payments: PaymentsSide | None = None
        self.core: TowerCore | None = None
        self.core_server: CoreServer | None = None
        self.server: ApiServer | None = None
        self.admin: AdminServer | None = None
        self.tower_id: UserId | None = None
        self.watchdog: Watchdog | None = None
        self.health: Health | None = None
        self.exit_status = 0  # set when something other than a signal ends teosd (the watchdog)
        self._worker_settings: WorkerSettings | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        # Imported here so that the chain side (build_chain_side: tests, benchmarks) needs none of the HTTP
        # stack; teosd needs it all.
        from teos.api import DEFAULT_MAX_BODY_BYTES
        from teos.api.ipc import TOKEN_BYTES, CoreServer, socket_address
        from teos.api.limits import address_limits
        from teos.api.worker import PaymentSettings, WorkerSettings
        from teos.hardening import secure_datadir
        from teos.metrics import Metrics

        c = self.config
        log.info("starting teosd network=%s datadir=%s", c.btc_network, c.datadir)
        for note in c.notes:
            log.warning("configuration: %s", note)
        secure_datadir(c)
        metrics = self.metrics = Metrics()
        store = self.store = Store(c.db_path)
        try:
            store.open()
        except StorageError as e:
            self.store = None
            raise FatalError(f"{e}. Is another teosd running with datadir {c.datadir}?") from e
        check_network(store, c.chain_name)
        secret = load_or_create_key(c.key_path, store, c.overwrite_key)
        tower_id = self.tower_id = crypto.public_key(secret)
        log.info("tower id=%s", tower_id.hex())

        bitcoind = self.bitcoind = BitcoindClient(BitcoindConfig(
            host=c.btc_rpc_connect, port=c.btc_rpc_port, user=c.btc_rpc_user, password=c.btc_rpc_password,
            cookie_file=None if c.btc_rpc_user else c.btc_rpc_cookie, timeout=c.btc_rpc_timeout,
        ))
        try:
            migrate(store)  # an older database's layout, once (logged); nothing else has read it yet
        except MigrationError as e:
            raise FatalError(f"{e} (database {c.db_path})") from e
        index = self.index = LocatorIndex(store)
        index.start()
        gatekeeper = self.gatekeeper = Gatekeeper(store, GatekeeperConfig(
            subscription_slots=c.subscription_slots, subscription_duration=c.subscription_duration,
            expiry_delta=c.expiry_delta, max_appointments=c.max_appointments,
            min_to_self_delay=c.min_to_self_delay, max_appointments_per_user=c.max_appointments_per_user,
            max_users=c.max_users, new_user_reserve=c.new_user_reserve, new_user_blocks=c.new_user_blocks,
        ), self.tip, index)
        payments = None
        if c.payment.paid:
            payments = self.payments = build_payments(
                c.payment, store, bitcoind, self._payments_tip, gatekeeper, secret, metrics
            )
            metrics.bind_payments(
                lambda: payments_report(payments.channels, self.tip.tip_height, payments.config)
            )
        chain = self.chain = build_chain_side(
            EngineConfig(
                btc_network=c.chain_name, poll_interval=c.poll_interval, zmq_url=c.zmq_hashblock or None,
                locator_cache_size=c.locator_cache_size, rebroadcast_after=c.rebroadcast_after,
                startup_retry=RetryPolicy(initial_delay=0.5, max_delay=10.0, max_wait=c.btc_startup_timeout),
            ),
            store, bitcoind, self.tip, gatekeeper, index, [gatekeeper], metrics,
            payments.runner if payments is not None else None,
        )
        gatekeeper.start()
        try:
            chain.start()
        except BootstrapError as e:
            raise FatalError(f"cannot start on bitcoind {c.btc_rpc_connect}:{c.btc_rpc_port}: {e}") from e
        if c.watchdog_timeout > 0:
            self.watchdog = Watchdog(chain, bitcoind.get_block_count, c.watchdog_timeout, self._on_watchdog)
            self.watchdog.start()
            log.info("watchdog on timeout=%.0fs", c.watchdog_timeout)
        else:
            log.warning("watchdog off (--watchdogtimeout 0): a stuck engine is not restarted")
        health = self.health = Health(chain, self.watchdog)
        if payments is not None:
            payments.reconcile()
            payments.core.watching = health
        self.core = TowerCore(gatekeeper, self.tip, chain.engine, store, health, paid=payments is not None)
        ops: dict[str, Callable[..., Any]] = {"observe_refusals": metrics.observe_refusals}
        if payments is not None:
            ops.update(PaymentOps(payments.core).handlers())
        core_server = self.core_server = CoreServer(
            self.core, os.urandom(TOKEN_BYTES), socket_address(c.network_dir),
            on_observations=metrics.observe_requests, on_dropped=metrics.observations_dropped,
            admission=address_limits(c), extra_ops=ops,
        )
        core_server.start()
        self._worker_settings = WorkerSettings(
            address=core_server.address, token=core_server.token, tower_secret_key=secret,
            min_to_self_delay=c.min_to_self_delay, max_blob_bytes=DEFAULT_MAX_BLOB_BYTES,
            max_body_bytes=DEFAULT_MAX_BODY_BYTES, debug=c.debug,
            log_file=str(c.log_file) if c.log_file else None, parent_pid=os.getpid(),
            threads=c.api_threads, client_timeout=c.client_timeout, behind_proxy=c.behind_proxy,
            requests_per_second=c.api_requests_per_second,
            address_limits=core_server.admission is not None,
            payments=PaymentSettings(c.payment, c.subscription_slots, c.subscription_duration,
                                     c.btc_network) if payments is not None else None,
        )  # fmt: skip
        self.server = self._make_server()
        self._start_admin(store, chain, health, tower_id, metrics, index)

    def _payments_tip(self) -> int:
        """The height payments are checked against: the higher of the last block processed and bitcoind's
        tip as last seen. While the tower catches up after downtime, the processed tip lags; checking a
        payment's expiry against it would accept payments on channels whose refund is already valid."""
        seen = self.chain.monitor.best_height_seen if self.chain is not None else -1
        return max(self.tip.tip_height, seen)

    def _on_watchdog(self, reason: str) -> None:
        """The watchdog tripped (it logged why): stop as on SIGTERM, and exit with ``EXIT_WATCHDOG``."""
        self.exit_status = EXIT_WATCHDOG
        os.kill(os.getpid(), signal.SIGTERM)

    def _start_admin(
        self,
        store: Store,
        chain: ChainSide,
        health: Health,
        tower_id: UserId,
        metrics: Metrics,
        index: LocatorIndex,
    ) -> None:
        """The admin API (teos-cli, /metrics, /ready) on rpcbind:rpcport, behind the datadir's cookie."""
        from teos.admin import AdminServer, AdminServerError, StoreAdminBackend

        def status() -> dict[str, Any]:
            return {**chain.progress.status(), "stopped_watching": health.stopped_watching()}

        c = self.config
        operator = None
        if self.payments is not None:
            p = self.payments
            operator = PaymentsOperator(p.channels, p.config, lambda: self.tip.tip_height, p.runner,
                                        lambda fn: chain.engine.call(fn, timeout=ADMIN_CLAIM_TIMEOUT))
        backend = StoreAdminBackend(
            store, status, tower_id,
            stop_callback=lambda: os.kill(os.getpid(), signal.SIGTERM), counts=index, payments=operator,
        )  # fmt: skip
        admin = AdminServer(backend, c.network_dir, host=c.rpc_bind, port=c.rpc_port, metrics=metrics,
                            client_timeout=c.client_timeout)
        try:
            admin.start()
        except AdminServerError as e:
            raise FatalError(f"{e} (is another teosd or program using this port? see --rpcport)") from e
        self.admin = admin
        log.info("admin API listening host=%s port=%d cookie=%s", c.rpc_bind, admin.port,
                 admin.cookie_file)  # fmt: skip

    def _make_server(self) -> ApiServer:
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
            log_dictconfig=GRANIAN_LOGGING,
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

        assert self.server is not None and self._worker_settings is not None, "start() first"
        self.server.serve(target_loader=functools.partial(load_app, self._worker_settings))

    def stop(self) -> None:
        """Stops whatever was started, in reverse order; safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                self.admin.stop()  # stops listening and deletes the cookie
        if self.core_server is not None:
            self.core_server.stop()  # the workers are gone; requests in hand finished their writes
        if self.chain is not None:
            log.info("stopping the engine")
            self.chain.stop()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        if self.index is not None:
            self.index.stop()  # folds its journal: the next start reads snapshots only
        if self.bitcoind is not None:
            with contextlib.suppress(Exception):
                self.bitcoind.close()
        if self.store is not None:
            self.store.close()
            log.info("database closed")


class Health:
    """Whether the tower watches the chain, for the API and the admin status: the watchdog's reason, or
    (with the watchdog off) a watching thread found dead right now. Satisfies ``teos.interfaces.Watching``."""

    def __init__(self, chain: ChainSide, watchdog: Watchdog | None) -> None:
        self._chain = chain
        self._watchdog = watchdog

    def stopped_watching(self) -> str | None:
        if self._watchdog is not None:
            return self._watchdog.stopped_watching()
        stopped = self._chain.stopped_threads()
        return f"thread {', '.join(stopped)} stopped" if stopped else None


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
    """Runs teosd until a signal; returns the exit status (0 after a clean stop, 1 on a fatal error, 3
    when the watchdog ended it)."""
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
        status = EXIT_FATAL
    except FatalError as e:
        log.error("fatal: %s", " ".join(str(e).split()))
        status = EXIT_FATAL
    except Exception:
        log.exception("fatal: unexpected error")
        status = EXIT_FATAL
    finally:
        signals.disarm()
    if daemon.exit_status:
        status = daemon.exit_status
    try:
        daemon.stop()
    except Exception:
        log.exception("error while stopping")
        status = status or EXIT_FATAL
    log.info("teosd stopped status=%d", status)
    return status
