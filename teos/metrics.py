"""Prometheus metrics of the tower: event counters the engine and the API bump, gauges read at scrape time.

Two kinds of numbers:

- *events* (breaches seen, penalties broadcast and confirmed, blocks processed, HTTP requests and their
  latencies) are counted in memory by whoever sees them happen, through the methods of ``Metrics``
  (``metrics.breach_seen()``, ``metrics.observe_request(...)``); like every Prometheus counter they restart
  from zero with the process;
- *state* (registered users, appointments watched, trackers, heights, blocks behind bitcoind's tip,
  bitcoind reachability, readiness) lives in the database and the engine, so it is pulled when Prometheus
  scrapes, from a ``status`` callable (``StoreAdminBackend.tower_info``) bound with ``bind_status``. Nothing
  is then kept in sync by hand, and a scrape always shows what ``teos-cli gettowerinfo`` would.

Every ``Metrics`` has its own ``CollectorRegistry`` (never the process-global one), so several towers or
apps (tests build many) never collide on metric names.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

StatusSource = Callable[[], Mapping[str, Any]]

# (metric name, tower_info field, help): gauges pulled from the status at scrape time.
_PULLED_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("teos_registered_users", "n_registered_users", "Users with a subscription stored"),
    ("teos_watcher_appointments", "n_watcher_appointments", "Appointments being watched"),
    ("teos_responder_trackers", "n_responder_trackers", "Penalties the Responder is following"),
    ("teos_bitcoind_tip_height", "tip_height", "Height of bitcoind's best block as last seen"),
    ("teos_blocks_behind", "blocks_behind", "Blocks between bitcoind's tip and the last processed one"),
)

UNMATCHED_ENDPOINT = "<unmatched>"

# Request labels come from fixed sets, whatever a client sends: a label made from request data (a made-up
# method, a path) creates a new time series per value, and 80,000 requests with made-up methods grew
# teosd by 56 MB and /metrics to 24 MB. Anything outside the sets is counted as ``other``.
OTHER_LABEL = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
APPS = frozenset({"public", "admin"})
MAX_ENDPOINT_LABEL = 64  # characters of a route
MAX_ENDPOINTS = 64  # distinct endpoint labels (the apps have about 15 routes)


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else OTHER_LABEL


def status_label(status: int) -> str:
    return str(status) if isinstance(status, int) and 100 <= status <= 599 else OTHER_LABEL


def app_label(app: str) -> str:
    return app if app in APPS else OTHER_LABEL


class _StatusCollector(Collector):
    """Turns one status snapshot into gauges; a failing status shows as ``teos_status_ok 0``."""

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            status = self._source()
        except Exception:
            log.exception("metrics: tower status unavailable")
            status = None
        ok = GaugeMetricFamily("teos_status_ok", "1 if the tower status could be read at this scrape")
        ok.add_metric([], 1.0 if status is not None else 0.0)
        yield ok
        if status is None:
            return
        for name, field, help_text in _PULLED_GAUGES:
            value = status.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                gauge = GaugeMetricFamily(name, help_text)
                gauge.add_metric([], float(value))
                yield gauge
        last = status.get("last_processed_block")
        if isinstance(last, Mapping) and isinstance(last.get("height"), int):
            gauge = GaugeMetricFamily("teos_last_processed_height", "Height of the last block processed")
            gauge.add_metric([], float(last["height"]))
            yield gauge
        for name, field, help_text in (
            ("teos_bitcoind_reachable", "bitcoind_reachable", "1 while bitcoind answers"),
            ("teos_ready", "ready", "1 when caught up with bitcoind's tip and bitcoind answers"),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], 1.0 if status.get(field) is True else 0.0)
            yield gauge


class Metrics:
    """The tower's metrics (see the module docstring). Thread-safe: prometheus_client locks its values."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._breaches = Counter("teos_breaches_seen", "Breaches found (a watched locator in a block)",
                                 registry=r)
        self._broadcast = Counter("teos_penalties_broadcast", "Penalty transactions broadcast (rebroadcasts "
                                  "included)", registry=r)
        self._confirmed = Counter("teos_penalties_confirmed", "Penalty transactions seen confirmed",
                                  registry=r)
        self._blocks = Counter("teos_blocks_processed", "Blocks connected and processed", registry=r)
        self._requests = Counter("teos_http_requests", "HTTP requests answered",
                                 ["app", "endpoint", "method", "status"], registry=r)
        self._dropped = Counter("teos_http_observations_dropped", "Answered requests an API worker could "
                                "not report (it had too many pending, or could not reach this process)",
                                registry=r)
        self._endpoints: set[str] = set()
        self._endpoints_lock = threading.Lock()
        self._latency = Histogram("teos_http_request_duration_seconds", "Time to answer an HTTP request",
                                  ["app", "endpoint"], registry=r)
        self._status_bound = False

    # -- events --------------------------------------------------------------------------------------

    def breach_seen(self, n: int = 1) -> None:
        self._breaches.inc(n)

    def penalty_broadcast(self, n: int = 1) -> None:
        self._broadcast.inc(n)

    def penalty_confirmed(self, n: int = 1) -> None:
        self._confirmed.inc(n)

    def block_processed(self, n: int = 1) -> None:
        self._blocks.inc(n)

    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None:
        """Records one answered request; every label is mapped into its fixed set (see OTHER_LABEL)."""
        endpoint_label = self._endpoint_label(endpoint)
        app = app_label(app)
        self._requests.labels(app, endpoint_label, method_label(method), status_label(status)).inc()
        self._latency.labels(app, endpoint_label).observe(seconds)

    def _endpoint_label(self, endpoint: str) -> str:
        """``endpoint`` if it looks like a route and the set of endpoints seen is not full, else other.
        (Routes come from the apps' url maps, so this only ever bites on a bug or a forged report.)"""
        if endpoint in self._endpoints:
            return endpoint
        if (
            not isinstance(endpoint, str)
            or len(endpoint) > MAX_ENDPOINT_LABEL
            or not (endpoint.startswith("/") or endpoint.startswith("<"))
        ):
            return OTHER_LABEL
        with self._endpoints_lock:
            if len(self._endpoints) >= MAX_ENDPOINTS:
                return OTHER_LABEL
            self._endpoints.add(endpoint)
        return endpoint

    def observe_requests(self, observations: Iterable[tuple[str, str, str, int, float]]) -> None:
        """Records requests answered elsewhere (an API worker): (app, endpoint, method, status, seconds)."""
        for app, endpoint, method, status, seconds in observations:
            self.observe_request(endpoint, status, seconds, method=method, app=app)

    def observations_dropped(self, n: int) -> None:
        """Counts requests an API worker answered but could not report."""
        self._dropped.inc(n)

    # -- state ---------------------------------------------------------------------------------------

    def bind_status(self, source: StatusSource) -> None:
        """Pulls the state gauges from ``source()`` (a tower-info mapping) at every scrape. Once only."""
        if self._status_bound:
            raise RuntimeError("a status source is already bound to these metrics")
        self.registry.register(_StatusCollector(source))
        self._status_bound = True

    # -- exposition ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format of every metric in this registry."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's current value (``teos_breaches_seen_total`` ...), or None; for tests and tools."""
        return self.registry.get_sample_value(name, dict(labels or {}))


def metrics_response(metrics: Metrics) -> Response:
    return Response(metrics.render(), mimetype=None, content_type=CONTENT_TYPE_LATEST)


class RequestObserver(Protocol):
    """Where ``instrument`` reports requests: ``Metrics``, or an API worker's forwarder to it."""

    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None: ...


def instrument(app: Flask, metrics: RequestObserver, name: str = "public") -> None:
    """Counts and times every request ``app`` answers, labelled by route (``/register``), method, status.

    Requests that match no route are labelled ``<unmatched>``, and methods and statuses outside their
    fixed sets ``other``, so a scanner cannot create unbounded labels (nor an API worker's report of them
    outgrow a frame of the worker channel).
    """
    start_key = f"_teos_metrics_start_{name}"

    @app.before_request
    def _start_timer() -> None:
        setattr(g, start_key, time.perf_counter())

    @app.after_request
    def _observe(response: Response) -> Response:
        started = getattr(g, start_key, None)
        if started is not None:
            rule = request.url_rule
            endpoint = rule.rule if rule is not None else UNMATCHED_ENDPOINT
            metrics.observe_request(endpoint[:MAX_ENDPOINT_LABEL], response.status_code,
                                    time.perf_counter() - started, method=method_label(request.method),
                                    app=name)
        return response
