"""Issue 13, F9: idle or slow connections to the admin port cost no thread and cannot lock the operator out.

Before: Werkzeug's threaded server gave every connection a thread of teosd's main process with no
timeout (3,000 idle connections: 1,790 threads, +38 MB).
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.channel import ChannelId
from common.cookie import read_cookie
from teos.admin import AdminServer, StoreAdminBackend
from teos.admin.server import CLAIM_THREADS, MAX_CLAIMS_QUEUED, MAX_QUEUED, THREADS
from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, NoCounts, new_user_id
from tests.support.wait import wait_until


class BlockingStatus(FakeEngineStatus):
    """An engine status that waits for ``release`` (to hold the admin server's threads busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.waiting = 0

    def __call__(self) -> dict[str, Any]:
        self.waiting += 1
        self.release.wait(30)
        return super().__call__()


def make_server(
    tmp_path: Path, store: Store, status: FakeEngineStatus | None = None, **kwargs: Any
) -> AdminServer:
    backend = StoreAdminBackend(store, status or FakeEngineStatus(), new_user_id(), lambda: None,
                                NoCounts())  # fmt: skip
    server = AdminServer(backend, tmp_path / "regtest", host="127.0.0.1", port=0, **kwargs)
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path, store: Store) -> Iterator[AdminServer]:
    s = make_server(tmp_path, store, client_timeout=1.0, max_connections=200)
    try:
        yield s
    finally:
        s.stop()


def get(server: AdminServer, path: str, auth: bool = True) -> tuple[int, bytes]:
    import base64

    headers = {}
    if auth:
        user, secret = read_cookie(server.cookie_dir)
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw(server: AdminServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def connect_many(server: AdminServer, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(n)]


def test_idle_connections_take_no_thread_and_do_not_stop_the_operator(tmp_path: Path, store: Store) -> None:
    server = make_server(tmp_path, store, client_timeout=60.0)
    threads_before = threading.active_count()
    socks = connect_many(server, 500)
    try:
        wait_until(lambda: server.open_connections == 500, timeout=30, message="connections accepted")
        assert threading.active_count() <= threads_before + THREADS
        assert get(server, "/gettowerinfo")[0] == 200
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_idle_and_slow_connections_are_closed_after_the_client_timeout(server: AdminServer) -> None:
    idle = connect_many(server, 3)
    slow = connect_many(server, 3)
    for s in slow:
        s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")  # and never the end of the header
    for s in [*idle, *slow]:
        s.settimeout(15)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
        s.close()
    wait_until(lambda: server.open_connections == 0, timeout=10, message="connections dropped")


def test_at_the_limit_the_oldest_idle_connection_makes_room(tmp_path: Path, store: Store) -> None:
    server = make_server(tmp_path, store, client_timeout=30.0, max_connections=20)
    socks = connect_many(server, 40)
    try:
        wait_until(lambda: server.evicted >= 20, timeout=10, message="idle connections evicted")
        assert server.open_connections <= 20
        assert get(server, "/ready", auth=False)[0] == 200
    finally:
        for s in socks:
            s.close()
        server.stop()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT A REQUEST\r\n\r\n", b"400"),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"POST /stop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"411"),
        (b"POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", b"413"),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
    ],
)
def test_malformed_requests_are_refused(server: AdminServer, request_bytes: bytes, status: bytes) -> None:
    reply = raw(server, request_bytes)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    assert b"Connection: close" in reply


def test_a_flood_gets_503_beyond_the_threads_and_the_queue(tmp_path: Path, store: Store) -> None:
    status = BlockingStatus()
    server = make_server(tmp_path, store, status=status)
    socks = connect_many(server, THREADS + MAX_QUEUED + 5)
    try:
        for s in socks:
            s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        # Every request dispatched (the last five refused) before the threads are released: released any
        # earlier, the queue would have room again for a request still on its way.
        wait_until(lambda: server._queued == THREADS + MAX_QUEUED and status.waiting == THREADS
                   and server.refused == 5, timeout=10, message="the threads busy, the queue full, 5 refused")
        status.release.set()
        answers = sorted(s.recv(100).split(b" ", 2)[1] for s in socks)
        assert answers == [b"200"] * (THREADS + MAX_QUEUED) + [b"503"] * 5
    finally:
        status.release.set()
        for s in socks:
            s.close()
        server.stop()


class BlockingClaims:
    """A paid tower's operator whose claims wait for ``release``, as a claim waits for the engine thread."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0

    def channels(self) -> dict[str, Any]:
        return {"channels": []}

    def claim(self, channel_id: ChannelId) -> dict[str, Any]:
        return {"claims": self.claim_all()["claims"]}

    def claim_all(self) -> dict[str, Any]:
        self.waiting += 1
        self.release.wait(30)
        return {"claims": []}


def _authorization(server: AdminServer) -> str:
    import base64

    user, secret = read_cookie(server.cookie_dir)
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def test_claims_wait_in_a_thread_of_their_own_and_hold_up_nothing_else(tmp_path: Path, store: Store) -> None:
    """A claim waits for the engine thread (up to a minute with a block in hand): claims queue in their own
    pool, bounded, while the event loop and the other routes (/ready, /metrics, teos-cli's) go on."""
    claims = BlockingClaims()
    backend = StoreAdminBackend(
        store, FakeEngineStatus(), new_user_id(), lambda: None, NoCounts(), payments=claims
    )
    server = AdminServer(backend, tmp_path / "regtest", host="127.0.0.1", port=0)
    server.start()
    socks = connect_many(server, CLAIM_THREADS + MAX_CLAIMS_QUEUED + 2)
    try:
        request = (f"POST /claimall HTTP/1.1\r\nHost: x\r\nAuthorization: {_authorization(server)}\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
        for s in socks:
            s.sendall(request)
        wait_until(lambda: claims.waiting == CLAIM_THREADS and server.refused == 2, timeout=10,
                   message="the claims' thread busy, its queue full and the rest refused")
        for _ in range(2 * THREADS + 1):  # more than the general pool's threads: none of them is held
            assert get(server, "/ready", auth=False)[0] == 200
            assert get(server, "/gettowerinfo")[0] == 200
        claims.release.set()
        answers = sorted(s.recv(100).split(b" ", 2)[1] for s in socks)
        assert answers == [b"200"] * (CLAIM_THREADS + MAX_CLAIMS_QUEUED) + [b"503"] * 2
    finally:
        claims.release.set()
        for s in socks:
            s.close()
        server.stop()
