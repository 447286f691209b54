"""An API worker process: the public Flask app over a ``RemoteCore``, served by granian.

teosd's main process runs granian's supervisor; granian spawns ``--apiworkers`` worker processes (a fresh
interpreter each, never a fork of the threaded main process) and calls ``load_app`` in each one. A worker
holds no database and no chain state: it parses and validates requests, recovers who signed them, asks
the main process for every state change (``teos.api.ipc``), and signs the receipts. It therefore needs
the tower key, which arrives in ``WorkerSettings`` through the spawn pickle (never argv or environment).

A worker must not outlive teosd: if the main process is killed (even with SIGKILL), the kernel kills its
workers too (``PR_SET_PDEATHSIG``), so nothing keeps answering on the API port without a tower behind it.

Request metrics are counted in the worker and forwarded to the main process every second, where
``/metrics`` shows them with everything else.
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

    def __repr__(self) -> str:  # never print the key or the token
        return f"WorkerSettings(address={self.address!r}, parent_pid={self.parent_pid})"


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
        self._thread = threading.Thread(target=self._run, name="metrics-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None:
        with self._lock:
            if len(self._pending) < MAX_PENDING_OBSERVATIONS:
                self._pending.append((app, endpoint, method, status, seconds))

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                self.client.call("observe", batch)
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
    app = create_app(service, max_body_bytes=settings.max_body_bytes)
    metrics = ForwardingMetrics(client)
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
