"""Issue 13, F4: request metrics have labels from fixed sets, and a worker's report always fits a frame.

Before: the ``method`` label was stored as sent (80,000 made-up methods: +56 MB of RSS, a 24 MB /metrics
and a 6.6 s scrape), and a batch holding ~1,000-character methods outgrew the worker channel's 1 MiB
frame, so the main process refused it and those metrics were lost without a word.
"""

from __future__ import annotations

import marshal
import random
import string
from typing import Any, cast

import pytest
from flask import Flask

from common.errors import ErrorKind, TeosError
from teos.admin.app import create_admin_app
from teos.api import create_app
from teos.api.ipc import MAX_REQUEST_BYTES
from teos.api.worker import MAX_BATCH_BYTES, MAX_PENDING_OBSERVATIONS, ForwardingMetrics
from teos.metrics import ENDPOINTS, GUARD_ENDPOINT, OTHER_LABEL, UNMATCHED_ENDPOINT, Metrics, instrument


def junk(n: int) -> str:
    return "".join(random.choices(string.ascii_uppercase, k=n))


def series(metrics: Metrics) -> list[dict[str, str]]:
    return [s.labels for family in metrics.registry.collect() if family.name == "teos_http_requests"
            for s in family.samples if s.name == "teos_http_requests_total"]


def test_made_up_labels_are_counted_as_other() -> None:
    m = Metrics()
    for _ in range(2000):
        m.observe_request("/ping", 405, 0.001, method=junk(random.choice([3, 1000])), app="public")
    m.observe_request("/ping", 999, 0.001, method="GET", app="public")
    m.observe_request("/ping", 200, 0.001, method="GET", app="evil" * 100)
    m.observe_request("/" + "x" * 1000, 404, 0.001, method="GET", app="public")
    labels = series(m)
    assert {"app": "public", "endpoint": "/ping", "method": OTHER_LABEL, "status": "405"} in labels
    assert m.value("teos_http_requests_total",
                   {"app": "public", "endpoint": "/ping", "method": OTHER_LABEL, "status": "405"}) == 2000
    assert {"app": "public", "endpoint": "/ping", "method": "GET", "status": OTHER_LABEL} in labels
    assert {"app": OTHER_LABEL, "endpoint": "/ping", "method": "GET", "status": "200"} in labels
    assert {"app": "public", "endpoint": OTHER_LABEL, "method": "GET", "status": "404"} in labels
    assert len(labels) == 4
    assert len(m.render()) < 10_000


def test_endpoint_labels_are_bounded_even_if_a_report_is_forged() -> None:
    m = Metrics()
    m.observe_requests([("public", f"/route{i}", "GET", 200, 0.001) for i in range(1000)])
    m.observe_requests([("public", "/pay", "POST", 200, 0.001)])
    endpoints = {s["endpoint"] for s in series(m)}
    assert endpoints == {OTHER_LABEL, "/pay"}


def test_instrument_labels_a_made_up_method_other() -> None:
    app = Flask("t")

    @app.get("/ping")
    def ping() -> str:
        return ""

    seen: list[tuple[Any, ...]] = []

    class Recorder:
        def observe_request(self, endpoint: str, status: int, seconds: float, *, method: str = "",
                            app: str = "public") -> None:
            seen.append((endpoint, status, method, app))

    instrument(app, Recorder(), name="public")
    client = app.test_client()
    client.open("/ping", method="FOO" + "X" * 1000)
    client.get("/ping")
    assert seen == [("<unmatched>", 405, OTHER_LABEL, "public"), ("/ping", 200, "GET", "public")]


class FakeClient:
    """Stands in for the worker channel: records each ``observe`` report, or fails while ``down``."""

    def __init__(self) -> None:
        self.reports: list[tuple[list[Any], int]] = []
        self.down = False

    def call(self, op: str, *args: Any) -> Any:
        assert op == "observe"
        if self.down:
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable")
        batch, dropped = args
        assert len(marshal.dumps((op, batch, dropped))) <= MAX_REQUEST_BYTES
        self.reports.append((batch, dropped))
        return None


def test_a_flush_of_long_labels_fits_the_frame_and_loses_nothing() -> None:
    client = FakeClient()
    forwarder = ForwardingMetrics(client)  # type: ignore[arg-type]
    for _ in range(10_000):
        forwarder.observe_request("/" + "e" * 2000, 405, 0.001, method=junk(1000), app="p" * 500)
    forwarder.flush()
    assert sum(len(batch) for batch, _ in client.reports) == 10_000
    assert all(len(marshal.dumps(batch)) <= MAX_BATCH_BYTES for batch, _ in client.reports)
    assert {o[2] for batch, _ in client.reports for o in batch} == {OTHER_LABEL}


def test_overflow_and_failed_reports_are_counted_and_reported_later() -> None:
    client = FakeClient()
    forwarder = ForwardingMetrics(client)  # type: ignore[arg-type]
    for _ in range(MAX_PENDING_OBSERVATIONS + 7):
        forwarder.observe_request("/ping", 200, 0.001, method="GET")
    client.down = True
    forwarder.flush()  # the main process is unreachable: all of them become a count
    assert client.reports == []
    client.down = False
    forwarder.observe_request("/ping", 200, 0.001, method="GET")
    forwarder.flush()
    assert sum(len(batch) for batch, _ in client.reports) == 1
    assert sum(dropped for _, dropped in client.reports) == MAX_PENDING_OBSERVATIONS + 7


@pytest.mark.parametrize("dropped", [0, 3])
def test_the_main_process_counts_what_workers_dropped(dropped: int) -> None:
    m = Metrics()
    if dropped:
        m.observations_dropped(dropped)
    assert m.value("teos_http_observations_dropped_total") == dropped


def test_every_route_of_the_apps_has_a_label_of_its_own() -> None:
    """The fixed set of endpoint labels is exactly the routes of the public app (a paid tower's payment
    routes included) and the admin app, and the two pseudo-routes: a new route cannot be counted as other."""
    public = create_app(cast(Any, object()), payments=cast(Any, object()))
    admin = create_admin_app(cast(Any, object()), "cookie")
    routes = {r.rule for app in (public, admin) for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert routes | {UNMATCHED_ENDPOINT, GUARD_ENDPOINT} == ENDPOINTS
    m = Metrics()
    for route in routes:
        m.observe_request(route, 200, 0.001, method="POST")
    assert {s["endpoint"] for s in series(m)} == routes
