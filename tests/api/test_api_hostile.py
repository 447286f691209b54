"""Hostile input: whatever arrives, the answer is JSON and never a 5xx other than the deliberate 503s."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.types import Dialect
from teos.storage.store import Store
from tests.api.support import Tower, appointment
from tests.support.users import Client, FakeChainView

ENDPOINTS = ["/register", "/add_appointment", "/get_appointment", "/get_subscription_info"]
ALLOWED = {200, 400, 401, 404, 405, 413}
USER_AGENTS = [None, "", "python-requests/2.31", "reqwest/0.11", "curl/8.0"]
CONTENT_TYPES = [None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=25,
)
# Objects with the field names the endpoints read, holding anything.
FIELDS = ["public_key", "user_id", "appointment", "signature", "locator", "encrypted_blob", "to_self_delay"]
shaped = st.dictionaries(
    st.sampled_from(FIELDS), json_values | st.dictionaries(st.sampled_from(FIELDS), json_values)
)


@pytest.fixture(scope="module")
def hostile_tower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tower]:
    store = Store(Path(tmp_path_factory.mktemp("hostile")) / "db")
    store.open()
    tower = Tower.build(store)
    tower.register(Client.new())
    tower.register(Client.new(), Dialect.RUST)
    try:
        yield tower
    finally:
        store.close()


def _send(tower: Tower, path: str, data: bytes, content_type: str | None, ua: str | None) -> None:
    headers = {} if ua is None else {"User-Agent": ua}
    client = tower.app.test_client()
    resp = client.post(path, data=data, content_type=content_type, headers=headers)
    assert resp.status_code in ALLOWED, (resp.status_code, resp.data[:300])
    if resp.data:
        body = json.loads(resp.data)
        assert isinstance(body, dict)
        assert "Traceback" not in resp.get_data(as_text=True)


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz
@given(
    st.sampled_from(ENDPOINTS),
    st.binary(max_size=600),
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(USER_AGENTS),
)
def test_random_bytes(hostile_tower: Tower, path: str, data: bytes, ct: str | None, ua: str | None) -> None:
    _send(hostile_tower, path, data, ct, ua)


@fuzz
@given(st.sampled_from(ENDPOINTS), json_values | shaped, st.sampled_from(USER_AGENTS))
def test_random_json(hostile_tower: Tower, path: str, value: object, ua: str | None) -> None:
    _send(hostile_tower, path, json.dumps(value).encode(), "application/json", ua)


@pytest.mark.parametrize("ua", USER_AGENTS)
@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"to_self_delay": ' + b"9" * 5000 + b"}",
        b'{"appointment": {"locator": "'
        + b"ab" * 16
        + b'", "encrypted_blob": "ab", "to_self_delay": 1e999}}',
        b"\xff\xfe\x00{",
        b'{"signature": NaN}',
        b"",
    ],
)
def test_pathological_bodies(hostile_tower: Tower, data: bytes, ua: str | None) -> None:
    for path in ENDPOINTS:
        _send(hostile_tower, path, data, "application/json", ua)


def test_unknown_paths_and_methods_answer_json(hostile_tower: Tower) -> None:
    client = hostile_tower.app.test_client()
    for method, path, status in [("GET", "/", 404), ("PUT", "/register", 405), ("DELETE", "/ping", 405),
                                 ("GET", "/add_appointment", 405), ("POST", "/ping", 405)]:  # fmt: skip
        resp = client.open(path, method=method)
        assert resp.status_code == status
        assert set(resp.get_json()) == {"error", "error_code"}


def test_global_body_cap_is_413_for_every_dialect(hostile_tower: Tower) -> None:
    for ua in USER_AGENTS:
        _send(hostile_tower, "/add_appointment", b"{" + b" " * 70_000 + b"}", "application/json", ua)
        resp = hostile_tower.app.test_client().post(
            "/add_appointment",
            data=b" " * 70_000,
            content_type="application/json",
            headers={"User-Agent": ua or ""},
        )
        assert resp.status_code == 413


class ExplodingChain(FakeChainView):
    """A ChainView whose tip fails, once armed, in a way no handler expects."""

    armed = False

    def __getattribute__(self, name: str) -> object:
        if name == "tip_height" and object.__getattribute__(self, "armed"):
            raise RuntimeError("boom: secret internals")
        return object.__getattribute__(self, name)


def test_unexpected_failure_is_a_logged_503_without_internals(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    chain = ExplodingChain(tip_height=11)
    tower = Tower.build(store, chain=chain)
    alice = Client.new()
    tower.register(alice)
    chain.armed = True
    with caplog.at_level(logging.ERROR, logger="teos.api"):
        status, body = tower.add(alice, appointment())
    assert (status, body) == (503, {"error": "Unexpected error", "error_code": -99})
    assert "boom" in caplog.text  # logged with its traceback, not sent
