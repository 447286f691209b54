"""An API worker process: the public Flask app over a ``RemoteCore``, behind ``teos.api.serving``'s guard,
served by granian.

teosd's main process runs granian's supervisor; granian spawns ``--apiworkers`` worker processes (a fresh
interpreter each, never a fork of the threaded main process) and calls ``load_app`` in each one. A worker
holds no database and no chain state: it parses and validates requests, recovers who signed them, asks
the main process for every state change (``teos.api.ipc``), and signs the receipts. It therefore needs
the tower key, which arrives in ``WorkerSettings`` through the spawn pickle (never argv or environment).

A worker must not outlive teosd: if the main process is killed (even with SIGKILL), the kernel kills its
workers too (``PR_SET_PDEATHSIG``), so nothing keeps answering on the API port without a tower behind it.

Request metrics (and a paid tower's refusals by reason) are counted in the worker and forwarded to the
main process every second, where ``/metrics`` shows them with everything else. A paid tower's workers
also serve the payment endpoints (``PaymentSettings``: the terms; the payment key is derived from the
tower key they already hold).
"""

from __future__ import annotations

import ctypes
import logging
import marshal
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask

from teos.api import create_app
from teos.api.fastpath import AsyncFastAdd
from teos.api.ipc import (
    MAX_REQUEST_BYTES,
    AsyncCoreClient,
    CoreClient,
    Observation,
    RemoteAdmission,
    RemoteCore,
)
from teos.api.public import SERVICE_KEY
from teos.api.serving import GuardedApp, GuardSettings
from teos.logs import setup_logging
from teos.metrics import app_label, endpoint_label, instrument, method_label, refusal_label
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentRules
from teos.payments.income import FixedPrice
from teos.payments.service import PaymentBackend, PaymentGateway, RemotePayments
from teos.payments.tower_key import TowerPaymentKey
from teos.service import TowerService

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
FLUSH_INTERVAL = 1.0  # seconds between forwards of request metrics
# How long a thread keeps the GIL while others wait (Python's default is 5 ms). A request competing with
# a flood's requests for the GIL waits about one interval per runnable thread: 1 ms keeps it fair.
SWITCH_INTERVAL = 0.001
MAX_PENDING_OBSERVATIONS = 100_000  # counted as dropped beyond this if the main process stops taking them
MAX_BATCH = 2_000  # observations per report: ~100 bytes each once labels are bounded
MAX_BATCH_BYTES = MAX_REQUEST_BYTES // 4  # a report's encoding stays well inside one frame


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs from the main process (pickled into the spawned process)."""

    address: str
    token: bytes
    tower_secret_key: bytes
    min_to_self_delay: int
    max_blob_bytes: int
    max_body_bytes: int
    debug: bool
    log_file: str | None
    parent_pid: int
    threads: int = 8
    client_timeout: float = 10.0
    behind_proxy: bool = False
    requests_per_second: float = 0.0  # per client address (0: no limit)
    address_limits: bool = False  # the main process limits registrations and channel openings per address
    payments: PaymentSettings | None = None  # a paid tower's terms (None: free)

    def __repr__(self) -> str:  # never print the key or the token
        return f"WorkerSettings(address={self.address!r}, parent_pid={self.parent_pid})"


@dataclass(frozen=True)
class PaymentSettings:
    """What a worker of a paid tower needs to check payments and publish the terms."""

    config: PaymentConfig
    subscription_slots: int
    subscription_duration: int
    network: str  # "mainnet", "regtest"... as the terms name it

    def gateway(self, tower_secret_key: bytes, backend: PaymentBackend) -> PaymentGateway:
        tower_key = TowerPaymentKey.from_tower_secret(tower_secret_key).public_key
        rules = PaymentRules(
            self.config,
            FixedPrice(self.config.price),
            tower_key,
            self.subscription_slots,
            self.subscription_duration,
        )
        terms = self.config.terms(
            tower_key, self.subscription_slots, self.subscription_duration, self.network
        )
        return PaymentGateway(rules, backend, terms, tower_secret_key)


def die_with_parent(parent_pid: int) -> None:
    """Asks the kernel to SIGKILL this process when its parent dies; exits now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the broken channel still turns requests into 503s
        log.debug("PR_SET_PDEATHSIG unavailable")
    if os.getppid() != parent_pid:
        os._exit(1)


class ForwardingMetrics:
    """Counts this worker's requests (``teos.metrics.instrument`` and the guard call ``observe_request``) and
    forwards them to the main process's metrics every ``FLUSH_INTERVAL`` seconds.

    A report never outgrows a frame of the worker channel: labels are mapped into fixed sets before
    they are queued (``teos.metrics``), and a flush sends at most ``MAX_BATCH`` observations per
    frame (splitting further should a batch still encode over ``MAX_BATCH_BYTES``). Nothing is lost
    silently: observations beyond ``MAX_PENDING_OBSERVATIONS``, or in a report the main process did not
    take, are counted and that count travels with the next report (``teos_http_observations_dropped``).
    """

    def __init__(self, client: CoreClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._pending: list[Observation] = []
        self._dropped = 0
        self._refusals: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="metrics-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None:
        observation = (app_label(app), endpoint_label(endpoint), method_label(method), status, seconds)
        with self._lock:
            if len(self._pending) < MAX_PENDING_OBSERVATIONS:
                self._pending.append(observation)
            else:
                self._dropped += 1

    def payment_refused(self, reason: str) -> None:
        """Counts a refused payment request by ``reason`` (mapped into the fixed set of
        ``teos.metrics.REFUSAL_REASONS``)."""
        label = refusal_label(reason)
        with self._lock:
            self._refusals[label] = self._refusals.get(label, 0) + 1

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            dropped, self._dropped = self._dropped, 0
            refusals, self._refusals = self._refusals, {}
        batches = [pending[i : i + MAX_BATCH] for i in range(0, len(pending), MAX_BATCH)] or [[]]
        for batch in batches:
            if batch or dropped:
                dropped = self._send(batch, dropped)
        if dropped:
            with self._lock:
                self._dropped += dropped
        if refusals:
            self._send_refusals(refusals)

    def _send(self, batch: list[Observation], dropped: int) -> int:
        """Sends one report; returns the dropped count still to report (0 once it got through)."""
        if len(batch) > 1 and len(marshal.dumps(batch)) > MAX_BATCH_BYTES:
            half = len(batch) // 2
            return self._send(batch[half:], self._send(batch[:half], dropped))
        try:
            self.client.call("observe", batch, dropped)
            return 0
        except Exception as e:  # the main process is stopping or gone: count them for the next report
            log.debug("request metrics not forwarded: %s", e)
            with self._lock:
                self._dropped += len(batch)
            return dropped

    def _send_refusals(self, refusals: dict[str, int]) -> None:
        """Sends the refusal counts (a few labels: one small frame); kept for the next flush if it fails."""
        try:
            self.client.call("observe_refusals", list(refusals.items()))
        except Exception as e:  # the main process is stopping or gone: count them again next time
            log.debug("payment refusal counts not forwarded: %s", e)
            with self._lock:
                for reason, n in refusals.items():
                    self._refusals[reason] = self._refusals.get(reason, 0) + n

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with the worker
            time.sleep(FLUSH_INTERVAL)
            self.flush()


def build_app(settings: WorkerSettings) -> Flask:
    """The public app of a worker: ``create_app`` over a ``TowerService`` whose core is remote."""
    return _build(settings)[0]


def build_guarded_app(settings: WorkerSettings) -> GuardedApp:
    """What granian serves in a worker: the public app behind the guard of ``teos.api.serving``."""
    app, metrics = _build(settings)
    guard = GuardSettings.for_threads(
        settings.threads, settings.client_timeout, settings.max_body_bytes, settings.behind_proxy,
        settings.requests_per_second,
    )
    service: TowerService = app.extensions[SERVICE_KEY]
    assert isinstance(service.core, RemoteCore)
    channel = AsyncCoreClient(settings.address, settings.token, size=settings.threads)
    fast = AsyncFastAdd(service, service.core, channel, metrics)
    return GuardedApp(app.wsgi_app, guard, observer=metrics, fast=fast)


def _build(settings: WorkerSettings) -> tuple[Flask, ForwardingMetrics]:
    client = CoreClient(settings.address, settings.token)
    service = TowerService(
        RemoteCore(client),
        settings.tower_secret_key,
        min_to_self_delay=settings.min_to_self_delay,
        max_blob_bytes=settings.max_blob_bytes,
    )
    metrics = ForwardingMetrics(client)
    payments = None
    if settings.payments is not None:
        payments = settings.payments.gateway(settings.tower_secret_key, RemotePayments(client.call))
    app = create_app(
        service,
        max_body_bytes=settings.max_body_bytes,
        admission=RemoteAdmission(client) if settings.address_limits else None,
        payments=payments,
        refusals=metrics,
    )
    instrument(app, metrics, name="public")
    metrics.start()
    return app, metrics


def load_app(settings: WorkerSettings, target: str = "") -> GuardedApp:
    """granian's loader, run in each new worker (``target`` is granian's label for the app, unused)."""
    die_with_parent(settings.parent_pid)
    setup_logging(settings.debug, Path(settings.log_file) if settings.log_file else None)
    sys.setswitchinterval(SWITCH_INTERVAL)
    app = build_guarded_app(settings)
    log.debug("API worker ready pid=%d", os.getpid())
    return app
