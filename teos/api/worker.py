"""An API worker process: the public Flask app over a ``RemoteCore``, served by granian.

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
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask

from teos.api import create_app
from teos.api.ipc import CoreClient, Observation, RemoteCore
from teos.logs import setup_logging
from teos.metrics import instrument
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentRules
from teos.payments.income import FixedPrice
from teos.payments.limits import AddressLimiter
from teos.payments.service import PaymentBackend, PaymentGateway, RemotePayments
from teos.payments.tower_key import TowerPaymentKey
from teos.service import TowerService

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
FLUSH_INTERVAL = 1.0  # seconds between forwards of request metrics
MAX_PENDING_OBSERVATIONS = 100_000  # dropped beyond this if the main process stops taking them


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
    """Counts this worker's requests (``teos.metrics.instrument`` calls ``observe_request``) and forwards
    them to the main process's metrics every ``FLUSH_INTERVAL`` seconds."""

    def __init__(self, client: CoreClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._pending: list[Observation] = []
        self._refusals: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="metrics-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None:
        with self._lock:
            if len(self._pending) < MAX_PENDING_OBSERVATIONS:
                self._pending.append((app, endpoint, method, status, seconds))

    def payment_refused(self, reason: str) -> None:
        """Counts a refused payment request (``reason``: one of ``common.channel_wire.Refusal``'s names, or
        ``payment_required``: a bounded set of labels)."""
        with self._lock:
            self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            refusals, self._refusals = self._refusals, {}
        try:
            if batch:
                self.client.call("observe", batch)
            if refusals:
                self.client.call("observe_refusals", list(refusals.items()))
        except Exception as e:  # the main process is stopping or gone: these counts are lost
            log.debug("request metrics not forwarded: %s", e)

    def _run(self) -> None:
        while True:  # a daemon thread: it ends with the worker
            time.sleep(FLUSH_INTERVAL)
            self.flush()


def build_app(settings: WorkerSettings) -> Flask:
    """The public app of a worker: ``create_app`` over a ``TowerService`` whose core is remote."""
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
        payments=payments,
        limiter=AddressLimiter() if payments is not None else None,
        refusals=metrics,
    )
    instrument(app, metrics, name="public")
    metrics.start()
    return app


def load_app(settings: WorkerSettings, target: str = "") -> Flask:
    """granian's loader, run in each new worker (``target`` is granian's label for the app, unused)."""
    die_with_parent(settings.parent_pid)
    setup_logging(settings.debug, Path(settings.log_file) if settings.log_file else None)
    app = build_app(settings)
    log.debug("API worker ready pid=%d", os.getpid())
    return app
