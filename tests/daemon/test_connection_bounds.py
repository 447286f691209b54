"""Issue 13, F1: connections a client holds open, idle or slow, cannot stop the public API serving others.

Before: granian accepted at most 1,024 connections across all workers and kept an idle one for 30 s, and
a request whose body trickled in held one of the API's Python threads until it was complete: 40 such
connections froze the API. Each test here runs teosd with one worker of two threads and a 2-second
client timeout, and checks that a fresh client is still served: from another address (127.0.0.2 holds the
connections), and with ``--behindproxy``, where every client has the same address (Tor) and only capacity
and timeouts protect the API.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from common.client import TowerClient
from common.types import Dialect
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e

SMALL = ["--apiworkers", "1", "--apithreads", "2", "--clienttimeout", "2"]
SLOW_BODY = (
    b"POST /register HTTP/1.1\r\nHost: tower\r\nContent-Type: application/json\r\n"
    b"User-Agent: python-requests/2.31.0\r\nContent-Length: 200\r\n\r\n{"
)


@dataclass(frozen=True)
class Setup:
    teosd: Teosd
    attacker: str  # the address the held connections come from

    @property
    def api_port(self) -> int:
        return self.teosd.api_port


@pytest.fixture(params=["direct", "behind-proxy"])
def small_teosd(
    request: pytest.FixtureRequest, bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> Setup:
    if request.param == "direct":
        return Setup(teosd_factory(bitcoind, extra=SMALL), "127.0.0.2")
    return Setup(teosd_factory(bitcoind, extra=[*SMALL, "--behindproxy"]), "127.0.0.1")


@contextmanager
def held(setup: Setup, n: int, first: bytes = b"") -> Iterator[list[socket.socket]]:
    """``n`` connections to the API from the attacker's address that send ``first`` and then nothing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(
                ("127.0.0.1", setup.api_port), timeout=10, source_address=(setup.attacker, 0)
            )
            if first:
                s.sendall(first)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(65536) == b"" or closed_by_server(s)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def registers(port: int) -> bool:
    return bool(TowerClient("127.0.0.1", port, Dialect.PYTHON).register()["available_slots"])


def test_slow_bodies_hold_no_thread(small_teosd: Setup) -> None:
    """Twenty bodies trickling in (ten times the API's threads) do not stop a registration."""
    with held(small_teosd, 20, SLOW_BODY):
        assert registers(small_teosd.api_port)
        assert registers(small_teosd.api_port)


def test_an_unfinished_body_is_answered_408_after_the_client_timeout(small_teosd: Setup) -> None:
    with held(small_teosd, 1, SLOW_BODY) as (s,):
        s.settimeout(15)
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error_code"] == -65


def test_a_body_declared_too_big_is_refused_before_it_is_sent(small_teosd: Setup) -> None:
    header = (
        b"POST /add_appointment HTTP/1.1\r\nHost: tower\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    with held(small_teosd, 1, header) as (s,):
        s.settimeout(15)
        assert s.recv(65536).startswith(b"HTTP/1.1 413")


def test_idle_and_slow_header_connections_are_closed_after_the_client_timeout(small_teosd: Setup) -> None:
    slow_header = b"GET /ping HTTP/1.1\r\nHost: tower\r\nX-Slow: "
    with held(small_teosd, 5) as idle, held(small_teosd, 5, slow_header) as slow:
        for s in [*idle, *slow]:
            wait_until(
                functools.partial(closed_by_server, s), timeout=20, message="connection closed by the tower"
            )


def test_an_idle_keep_alive_connection_is_closed_after_the_client_timeout(small_teosd: Setup) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", small_teosd.api_port, timeout=10)
    conn.request("GET", "/ping")
    assert conn.getresponse().read() == b""
    assert conn.sock is not None
    wait_until(lambda: closed_by_server(conn.sock), timeout=20, message="keep-alive connection closed")
    conn.close()


def test_more_idle_connections_than_granian_used_to_allow_in_total(small_teosd: Setup) -> None:
    """granian's old bound was 1,024 connections for all workers; 1,100 idle ones stopped the API."""
    with held(small_teosd, 1100):
        assert registers(small_teosd.api_port)
