"""Hostile input over real HTTP against a running teosd: fuzzed bodies, content types, methods and
malformed HTTP never get a 5xx (bitcoind is up, so not even a 503), and the tower keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.client import TowerClient
from common.types import Dialect
from tests.support.processes import Teosd

pytestmark = pytest.mark.e2e

ENDPOINTS = ["/register", "/add_appointment", "/get_appointment", "/get_subscription_info", "/ping", "/"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
    | st.text(max_size=80) | st.sampled_from(["00" * 16, "ab" * 33, "02" + "11" * 32, "xyz", ""]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["public_key", "user_id", "appointment", "locator", "encrypted_blob",
                         "to_self_delay", "signature", "x"]) | st.text(max_size=10),
        inner, max_size=6),
    max_leaves=20,
)  # fmt: skip

bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.just(b"[" * 5000 + b"]" * 5000),
    st.just(b'{"appointment": ' * 2000 + b"1" + b"}" * 2000),
)


def _send(port: int, method: str, path: str, body: bytes, content_type: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _raw(port: int, data: bytes) -> bytes:
    """The raw reply to ``data`` (what arrived of it); empty if the tower closed the connection without
    one (it resets a connection whose header outgrows its 16 KiB buffer while the client still sends)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:  # reset, or already shut down (ENOTCONN) by the tower
            pass
    return b"".join(chunks)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    path=st.sampled_from(ENDPOINTS),
    body=bodies,
    content_type=st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded"]),  # noqa: E501
)
def test_fuzzed_requests_never_get_a_5xx(
    teosd: Teosd, method: str, path: str, body: bytes, content_type: str | None
) -> None:
    status, payload = _send(teosd.api_port, method, path, body, content_type)
    assert status < 500, (status, payload[:300])
    if status != 200 and payload:
        answer: Any = json.loads(payload)  # JSON, never an HTML page or a stack trace
        assert "Traceback" not in json.dumps(answer)


def test_malformed_http_and_oversize_bodies(teosd: Teosd) -> None:
    port = teosd.api_port
    for data in [
        b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",  # body shorter than announced
        b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"POST /add_appointment HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
    ]:
        reply = _raw(port, data)
        if reply:
            status = int(reply.split(b" ", 2)[1])
            assert status < 500, reply[:300]
    # A 2 MB body is refused on its declared length, before it is sent (sending it all first would race
    # the tower's close: the client may see a reset instead of the answer).
    reply = _raw(port, b"POST /add_appointment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n{" % (2 << 20))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]

    # Still serving, and correctly.
    user = TowerClient("127.0.0.1", port, Dialect.PYTHON)
    assert user.register()["available_slots"] == 10000
    teosd.check_alive()
