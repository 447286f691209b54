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
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.channel_wire import Refusal

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

UNMATCHED_ENDPOINT = "<unmatched>"  # a request that matched no route
GUARD_ENDPOINT = "<guard>"  # a request the public API's guard (teos.api.serving) answered itself

# Request labels come from fixed sets, whatever a client sends: a label made from request data (a made-up
# method, a path) creates a new time series per value, and 80,000 requests with made-up methods grew
# teosd by 56 MB and /metrics to 24 MB. Anything outside the sets is counted as ``other``.
OTHER_LABEL = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
APPS = frozenset({"public", "admin"})
# Every route of the public app (a paid tower's payment routes included) and of the admin app, as Flask
# names them (tests/admin/test_metric_labels.py checks this against the apps' url maps).
ENDPOINTS = frozenset({
    UNMATCHED_ENDPOINT, GUARD_ENDPOINT,
    "/register", "/add_appointment", "/get_appointment", "/get_subscription_info", "/ping",
    "/payment_terms", "/open_channel", "/pay", "/get_channel",
    "/gettowerinfo", "/getallappointments", "/getappointments/<locator>", "/getusers", "/getuser/<user_id>",
    "/stop", "/listchannels", "/claim/<channel_id>", "/claimall", "/ready", "/metrics",
})  # fmt: skip
MAX_ENDPOINT_LABEL = 64  # characters of a route a worker reports (ENDPOINTS' are shorter)
# Why a payment request was refused: a ``common.channel_wire.Refusal``, or an unpaid /register.
REFUSAL_REASONS = frozenset([*(r.text for r in Refusal), "payment_required"])


def endpoint_label(endpoint: str) -> str:
    return endpoint if endpoint in ENDPOINTS else OTHER_LABEL


def refusal_label(reason: str) -> str:
    return reason if reason in REFUSAL_REASONS else OTHER_LABEL


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


class PaymentsStatus(Protocol):
    """What the payment gauges show (``teos.payments.report.PaymentsReport`` satisfies it)."""

    @property
    def sats(self) -> Mapping[str, int]:
        """``earned``, ``claimed``, ``at_risk``, ``lost``."""
        ...

    @property
    def channels_by_status(self) -> Mapping[str, int]: ...

    @property
    def claims_by_status(self) -> Mapping[str, int]: ...


class _PaymentsCollector(Collector):
    """The payment gauges of one report, read at each scrape (nothing is kept in sync by hand)."""

    def __init__(self, source: Callable[[], PaymentsStatus]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            report = self._source()
        except Exception:
            log.exception("metrics: payments report unavailable")
            return
        for kind, help_text in (
            ("earned", "Satoshis of every accepted payment (the channels' amounts)"),
            ("claimed", "Satoshis irrevocably claimed"),
            ("at_risk", "Satoshis of unconfirmed claims near their deadline, or spent by someone else"),
            ("lost", "Satoshis the users refunded before the claim confirmed"),
        ):
            gauge = GaugeMetricFamily(f"teos_payments_sats_{kind}", help_text)
            gauge.add_metric([], float(report.sats.get(kind, 0)))
            yield gauge
        channels = GaugeMetricFamily(
            "teos_payments_channels", "Payment channels, by status", labels=["status"]
        )
        for status, n in sorted(report.channels_by_status.items()):
            channels.add_metric([status], float(n))
        yield channels
        claims = GaugeMetricFamily("teos_payments_claims", "Claims, by status", labels=["status"])
        for status, n in sorted(report.claims_by_status.items()):
            claims.add_metric([status], float(n))
        yield claims


class Metrics:
    """The tower's metrics (see the module docstring). Thread-safe: prometheus_client locks its values."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._breaches = Counter(
            "teos_breaches_seen", "Breaches found (a watched locator in a block)", registry=r
        )
        self._broadcast = Counter(
            "teos_penalties_broadcast", "Penalty transactions broadcast (rebroadcasts included)", registry=r
        )
        self._confirmed = Counter(
            "teos_penalties_confirmed", "Penalty transactions seen confirmed", registry=r
        )
        self._blocks = Counter("teos_blocks_processed", "Blocks connected and processed", registry=r)
        self._requests = Counter(
            "teos_http_requests",
            "HTTP requests answered",
            ["app", "endpoint", "method", "status"],
            registry=r,
        )
        self._dropped = Counter(
            "teos_http_observations_dropped",
            "Answered requests an API worker could not report (it had too many pending, or could not reach "
            "this process)",
            registry=r,
        )
        self._latency = Histogram(
            "teos_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["app", "endpoint"],
            registry=r,
        )
        self._status_bound = False
        self._payments_bound = False
        self._refusals = Counter(
            "teos_payments_refusals",
            "Payment requests refused, by the check that "
            "refused them (payment_required: an unpaid /register)",
            ["reason"],
            registry=r,
        )
        self._claim_broadcasts = Counter(
            "teos_payments_claim_broadcasts",
            "Claim transactions sent to bitcoind (rebroadcasts included)",
            ["delivered"],
            registry=r,
        )
        self._claim_bumps = Counter(
            "teos_payments_claim_bumps", "Fee bumps (CPFP children) sent for claims", registry=r
        )
        self._claim_failures = Counter(
            "teos_payments_claim_failures",
            "Steps of a claim that failed and will be tried again",
            ["step"],
            registry=r,
        )

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
        endpoint = endpoint_label(endpoint)
        app = app_label(app)
        self._requests.labels(app, endpoint, method_label(method), status_label(status)).inc()
        self._latency.labels(app, endpoint).observe(seconds)

    def observe_requests(self, observations: Iterable[tuple[str, str, str, int, float]]) -> None:
        """Records requests answered elsewhere (an API worker): (app, endpoint, method, status, seconds)."""
        for app, endpoint, method, status, seconds in observations:
            self.observe_request(endpoint, status, seconds, method=method, app=app)

    def observations_dropped(self, n: int) -> None:
        """Counts requests an API worker answered but could not report."""
        self._dropped.inc(n)

    # -- paid subscriptions --------------------------------------------------------------------------

    def payment_refused(self, reason: str, n: int = 1) -> None:
        """Counts ``n`` refusals; an unknown reason is counted as ``other`` (labels stay bounded)."""
        self._refusals.labels(refusal_label(reason)).inc(n)

    def observe_refusals(self, counts: Iterable[tuple[str, int]]) -> None:
        """Refusals counted elsewhere (an API worker): (reason, count) pairs."""
        for reason, n in counts:
            if isinstance(n, int) and n > 0:
                self.payment_refused(str(reason), n)

    def claim_broadcast(self, delivered: bool) -> None:
        self._claim_broadcasts.labels("true" if delivered else "false").inc()

    def claim_bumped(self) -> None:
        self._claim_bumps.inc()

    def claim_failure(self, step: str) -> None:
        self._claim_failures.labels(step).inc()

    def bind_payments(self, source: Callable[[], PaymentsStatus]) -> None:
        """Pulls the payment gauges (sats earned, claimed, at risk and lost; channels and claims by status)
        from ``source()`` at every scrape. Once only."""
        if self._payments_bound:
            raise RuntimeError("a payments source is already bound to these metrics")
        self.registry.register(_PaymentsCollector(source))
        self._payments_bound = True

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
