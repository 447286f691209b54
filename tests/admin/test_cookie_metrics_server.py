"""The cookie file, the Metrics object and instrument(), and the AdminServer's lifecycle."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask import Flask, abort

from teos.admin import (
    COOKIE_USER,
    AdminServer,
    AdminServerError,
    CookieError,
    Metrics,
    StoreAdminBackend,
    instrument,
    read_cookie,
    remove_cookie,
    write_cookie,
)
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, Filler, new_user_id


def test_cookie_is_private_fresh_and_removable(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even with a permissive umask the file is 0600
    try:
        first = write_cookie(tmp_path / "regtest")
    finally:
        os.umask(old_umask)
    path = tmp_path / "regtest" / ".cookie"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{COOKIE_USER}:{first}"
    assert len(bytes.fromhex(first)) == 32
    assert read_cookie(tmp_path / "regtest") == (COOKIE_USER, first)
    second = write_cookie(tmp_path / "regtest")
    assert second != first and read_cookie(tmp_path / "regtest")[1] == second
    remove_cookie(tmp_path / "regtest")
    assert not path.exists()
    remove_cookie(tmp_path / "regtest")  # already gone: fine
    with pytest.raises(CookieError, match="is teosd running"):
        read_cookie(tmp_path / "regtest")


def test_malformed_cookie_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".cookie").write_text("no separator")
    with pytest.raises(CookieError, match="malformed"):
        read_cookie(tmp_path)


def test_metrics_methods_move_the_counters() -> None:
    m = Metrics()
    m.breach_seen()
    m.breach_seen(2)
    m.penalty_broadcast()
    m.penalty_confirmed()
    m.block_processed(5)
    assert m.value("teos_breaches_seen_total") == 3
    assert m.value("teos_penalties_broadcast_total") == 1
    assert m.value("teos_penalties_confirmed_total") == 1
    assert m.value("teos_blocks_processed_total") == 5
    other = Metrics()  # a private registry each: no clash, no shared values
    assert other.value("teos_breaches_seen_total") == 0


def test_status_source_is_pulled_at_scrape_time_and_bound_once() -> None:
    m = Metrics()
    state = {"n_registered_users": 3, "ready": False, "bitcoind_reachable": True, "blocks_behind": 7,
             "last_processed_block": {"block_hash": None, "height": 90}}
    m.bind_status(lambda: state)
    assert m.value("teos_registered_users") == 3
    assert m.value("teos_blocks_behind") == 7
    assert (m.value("teos_ready"), m.value("teos_bitcoind_reachable")) == (0, 1)
    assert m.value("teos_last_processed_height") == 90
    state["n_registered_users"] = 4
    assert m.value("teos_registered_users") == 4
    with pytest.raises(RuntimeError):
        m.bind_status(lambda: state)


def test_failing_status_source_does_not_break_the_scrape() -> None:
    m = Metrics()

    def broken() -> dict[str, object]:
        raise RuntimeError("boom")

    m.bind_status(broken)
    assert m.value("teos_status_ok") == 0
    assert b"teos_status_ok 0.0" in m.render()


def test_instrument_counts_requests_per_route() -> None:
    m = Metrics()
    app = Flask("probe")

    @app.post("/register")
    def register() -> str:
        return "ok"

    @app.get("/ping")
    def fail() -> str:
        abort(400)

    @app.get("/made_up")  # a route that is not one of the tower's: counted, under ``other``
    def made_up() -> str:
        return "ok"

    instrument(app, m)
    client = app.test_client()
    for _ in range(3):
        client.post("/register")
    client.get("/ping")
    client.get("/made_up")
    client.get("/random/path/1")
    client.get("/random/path/2")
    labels = {"app": "public", "endpoint": "/register", "method": "POST", "status": "200"}
    assert m.value("teos_http_requests_total", labels) == 3
    assert m.value("teos_http_requests_total", {**labels, "endpoint": "/ping", "method": "GET",
                                                "status": "400"}) == 1
    assert m.value("teos_http_requests_total", {**labels, "endpoint": "other", "method": "GET",
                                                "status": "200"}) == 1
    assert m.value("teos_http_requests_total", {**labels, "endpoint": "<unmatched>", "method": "GET",
                                                "status": "404"}) == 2
    count = m.value("teos_http_request_duration_seconds_count", {"app": "public", "endpoint": "/register"})
    assert count == 3


def _get(url: str, secret: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if secret is not None:
        token = base64.b64encode(f"{COOKIE_USER}:{secret}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_admin_server_writes_cookie_serves_and_removes_it(
    tmp_path: Path, store: Store, filler: Filler
) -> None:
    filler.user()
    metrics = Metrics()
    backend = StoreAdminBackend(store, FakeEngineStatus(), new_user_id(), lambda: None, filler.index)
    server = AdminServer(backend, tmp_path / "regtest", host="127.0.0.1", port=0, metrics=metrics)
    server.start()
    try:
        assert server.port != 0
        _, secret = read_cookie(tmp_path / "regtest")
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/gettowerinfo")[0] == 401
        status, body = _get(base + "/gettowerinfo", secret)
        assert status == 200 and json.loads(body)["n_registered_users"] == 1
        assert _get(base + "/metrics")[0] == 200
        assert metrics.value("teos_http_requests_total", {"app": "admin", "endpoint": "/gettowerinfo",
                                                          "method": "GET", "status": "200"}) == 1
    finally:
        server.stop()
    assert not server.cookie_file.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_admin_server_port_in_use_leaves_no_cookie(tmp_path: Path, store: Store, index: LocatorIndex) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        backend = StoreAdminBackend(store, FakeEngineStatus(), new_user_id(), lambda: None, index)
        server = AdminServer(backend, tmp_path, port=busy.getsockname()[1])
        with pytest.raises(AdminServerError, match="rpcport"):
            server.start()
    assert not (tmp_path / ".cookie").exists()
