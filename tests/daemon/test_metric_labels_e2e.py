"""Issue 13, F4 against a running teosd: made-up methods reach /metrics as ``other``, and the legitimate
requests answered by the same API workers are still counted."""

from __future__ import annotations

import http.client
import random
import socket
import string

import pytest

from tests.daemon.conftest import TeosdFactory, metric
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd
from tests.support.wait import wait_until

pytestmark = pytest.mark.e2e


def _admin_port(teosd: Teosd) -> int:
    assert teosd.proc is not None
    args = teosd.proc.args
    assert isinstance(args, list)
    return int(args[args.index("--rpcport") + 1])


def _metrics_text(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_made_up_methods_are_counted_as_other_and_nothing_is_lost(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory
) -> None:
    teosd = teosd_factory(bitcoind, extra=["--apirequestspersecond", "0"])  # 205 requests at once
    methods = ["".join(random.choices(string.ascii_uppercase, k=1000 if i % 2 else 6)) for i in range(200)]
    for method in methods:
        with socket.create_connection(("127.0.0.1", teosd.api_port), timeout=10) as s:
            s.sendall(f"{method} /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 ")
    for _ in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", teosd.api_port, timeout=10)
        conn.request("GET", "/ping")
        assert conn.getresponse().status == 200
        conn.close()
    port = _admin_port(teosd)
    other = 'teos_http_requests_total{app="public",endpoint="<unmatched>",method="other",status="405"}'
    ping = 'teos_http_requests_total{app="public",endpoint="/ping",method="GET",status="200"}'
    def counted() -> bool:
        try:
            return metric(port, other) >= 200 and metric(port, ping) >= 5
        except AssertionError:  # not exposed until the first report arrives
            return False

    wait_until(counted, timeout=30, message="the workers' reports counted")
    text = _metrics_text(port)
    assert not any(m in text for m in methods)
    assert metric(port, "teos_http_observations_dropped_total") == 0
