"""Hostile input over real HTTP against a paid teosd: fuzzed bodies and methods on the payment endpoints
never get a 5xx (bitcoind is up and nothing is loaded, so not even a 503, except the per-address limits'
refusals: every request of the fuzz comes from 127.0.0.1), and the tower still answers a real payment
afterwards."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.types import Dialect
from teos.devtools import wait_until
from tests.daemon.conftest import TeosdFactory, metric
from tests.payments.tower import PaidTower, User, coins, height, start_paid_tower
from tests.support.bitcoind import BitcoindHandle

pytestmark = pytest.mark.e2e

ENDPOINTS = ["/payment_terms", "/open_channel", "/pay", "/get_channel", "/register"]
FIELDS = ["channel_id", "nonce", "amount", "payment_tx", "payment_signature", "user_id", "public_key",
          "signature", "funding_value", "user_key", "expiry", "change_script", "fee_rate", "x"]  # fmt: skip
SHAPES = ["00" * 36, "ab" * 33, "02" + "11" * 32, "0" * 64 + ":0", "0" * 64 + ":01", "f" * 64 + ":4294967296",
          "0200000001" + "00" * 60, "", "xyz", "²"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
    | st.text(max_size=80) | st.sampled_from(SHAPES),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=10), inner, max_size=8),
    max_leaves=24,
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=600),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.just(b"[" * 5000 + b"]" * 5000),
)


@pytest.fixture
def paid_tower(bitcoind: BitcoindHandle, teosd_factory: TeosdFactory) -> PaidTower:
    return start_paid_tower(bitcoind, teosd_factory)


def _send(port: int, method: str, path: str, body: bytes, agent: str | None) -> tuple[int, bytes, bool]:
    """The status and body of the answer, and whether it is a per-address limit's refusal (503 with
    ``Retry-After`` from the API's guard, or a ``rate_limited`` refusal of ``/open_channel``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **({"User-Agent": agent} if agent else {})}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        limited = response.status == 503 and (
            response.getheader("Retry-After") is not None
            or (path == "/open_channel" and json.loads(payload).get("reason") == "rate_limited")
        )
        return response.status, payload, limited
    finally:
        conn.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "GET", "PUT"]),
    path=st.sampled_from(ENDPOINTS),
    body=bodies,
    agent=st.sampled_from([None, "python-requests/2.31.0", "reqwest"]),
)
def test_fuzzed_payment_requests_never_get_a_5xx(
    paid_tower: PaidTower, method: str, path: str, body: bytes, agent: str | None
) -> None:
    status, payload, limited = _send(paid_tower.daemon.api_port, method, path, body, agent)
    assert status < 500 or limited, (status, payload[:300])
    if status >= 400 and payload:
        answer = json.loads(payload)
        assert isinstance(answer.get("error"), str) and isinstance(answer.get("error_code"), int)


def test_a_real_payment_after_the_noise(bitcoind: BitcoindHandle, paid_tower: PaidTower) -> None:
    for _ in range(50):
        _send(paid_tower.daemon.api_port, "POST", "/pay", b'{"user_id": "02' + b"11" * 32 + b'"}', None)
    user = User(paid_tower, Dialect.RUST)
    (coin,) = coins(bitcoind, 1)
    record = user.fund(bitcoind, coin, 20_000, height(bitcoind) + 100)
    bitcoind.mine(1)
    funded_at = height(bitcoind)
    # Asked once teosd has seen the funding block: the tower limits the openings of one address.

    def processed() -> bool:
        return (paid_tower.admin().get_tower_info()["last_processed_block"]["height"] or 0) >= funded_at

    wait_until(processed, 30, "teosd to process the funding block")
    user.payments.open_channel(record)
    assert user.payments.pay(user.payments.get_channel(record)).record.nonce == 1

    # The payment routes are labels of their own in /metrics (fixed sets, not "other").
    def counted() -> bool:
        names = [f'teos_http_requests_total{{app="public",endpoint="{path}",method="POST",status="200"}}'
                 for path in ("/open_channel", "/pay", "/get_channel")]
        try:
            return all(metric(paid_tower.admin_port, name) >= 1 for name in names)
        except AssertionError:  # not exposed until the workers' first report
            return False

    wait_until(counted, 30, "the payment requests counted under their routes")
