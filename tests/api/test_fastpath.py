"""The hot path of add_appointment (``teos.api.fastpath``) answers byte for byte as the Flask app does, or
hands the request to it.

Each case sends the same body to the Flask app (the reference) and to the fast path over the same service
and compares status, Content-Type and body bytes: ``FastAdd`` with the state in the process, and
``AsyncFastAdd`` on an event loop through the worker channel, as an API worker runs it. A successful add
sent twice is an update of the same uuid with the same receipt, so the second answer (the fast path's)
must equal the first (Flask's).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from common.appointment import Appointment
from common.errors import ErrorKind
from common.types import Dialect, Locator, Txid
from teos.api.fastpath import AsyncFastAdd, FastAdd, json_answer
from teos.api.ipc import AsyncCoreClient, RemoteCore
from teos.storage.store import Store
from teos.storage.watched import find_watched
from tests.api.support import Tower, signed_appointment
from tests.support.users import Client, trigger

PYTHON = {"User-Agent": "python-requests/2.31.0"}
RUST = {"User-Agent": ""}  # reqwest sends none (the test client would send its own)


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []

    def observe_request(
        self, endpoint: str, status: int, seconds: float, *, method: str = "", app: str = "public"
    ) -> None:
        self.seen.append((endpoint, status, method))


def flask_answer(tower: Tower, body: bytes, headers: dict[str, str], content_type: str | None) -> Any:
    resp = tower.app.test_client().post("/add_appointment", data=body, headers=headers,
                                        content_type=content_type)  # fmt: skip
    return resp.status_code, resp.headers.get("Content-Type"), resp.data


def fast_path(
    tower: Tower, observer: Recorder | None = None
) -> Callable[[bytes, str | None, str | None], Any]:
    """The fast path as teosd runs it for ``tower``: in the process (``FastAdd``), or over the worker
    channel on an event loop (``AsyncFastAdd``, each call on its own loop and connections)."""
    server = tower.core_server
    if server is None:
        return FastAdd(tower.service, observer)

    def call(body: bytes, user_agent: str | None, content_type: str | None) -> Any:
        async def run() -> Any:
            channel = AsyncCoreClient(server.address, server.token, size=2)
            assert isinstance(tower.service.core, RemoteCore)
            try:
                return await AsyncFastAdd(tower.service, tower.service.core, channel, observer)(
                    body, user_agent, content_type
                )
            finally:
                channel.close()

        return asyncio.run(run())

    return call


def fast_answer(tower: Tower, body: bytes, headers: dict[str, str], content_type: str | None) -> Any:
    answer = fast_path(tower)(body, headers.get("User-Agent"), content_type)
    if answer is None:
        return None
    return answer.status, dict(answer.headers)["Content-Type"], answer.body


def same(tower: Tower, body: bytes, headers: dict[str, str], content_type: str | None = "application/json",
         *, flask_first: bool = True) -> Any:  # fmt: skip
    """Both paths' answers to ``body``; asserts the fast path took it and answered as Flask did."""
    if flask_first:
        reference = flask_answer(tower, body, headers, content_type)
        fast = fast_answer(tower, body, headers, content_type)
    else:
        fast = fast_answer(tower, body, headers, content_type)
        reference = flask_answer(tower, body, headers, content_type)
    assert fast is not None, "the fast path handed a request it should take to Flask"
    assert fast == reference
    return reference


def encoded(client: Client, appointment: Appointment, **changes: Any) -> bytes:
    body = signed_appointment(client, appointment)
    body.update(changes)
    return json.dumps(body).encode()


def with_fields(client: Client, a: Appointment, fields: dict[str, object]) -> bytes:
    body = signed_appointment(client, a)
    body["appointment"] = fields
    return json.dumps(body).encode()


def appointment(blob_len: int = 200) -> Appointment:
    return Appointment(Locator(os.urandom(16)), os.urandom(blob_len), 40)


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_an_accepted_appointment_gets_the_same_bytes(tower: Tower, dialect: Dialect) -> None:
    alice = Client.new()
    tower.register(alice, dialect)
    headers = PYTHON if dialect is Dialect.PYTHON else RUST
    status, content_type, body = same(tower, encoded(alice, appointment()), headers)
    assert status == 200 and content_type == "application/json" and body.endswith(b"}\n")


@pytest.mark.parametrize("headers", [PYTHON, RUST])
def test_a_signature_of_nobody_registered(tower: Tower, headers: dict[str, str]) -> None:
    status, _, body = same(tower, encoded(Client.new(), appointment()), headers)
    assert status in (400, 401) and json.loads(body)["error_code"]


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_refusals_of_the_use_case(tower: Tower, dialect: Dialect) -> None:
    headers = PYTHON if dialect is Dialect.PYTHON else RUST
    alice = Client.new()
    tower.register(alice, dialect)
    if dialect is Dialect.PYTHON:  # (a rust-teos body is capped at 2048 bytes: one slot at most)
        for _ in range(12):  # 8 slots each, of 100
            assert tower.add(alice, appointment(blob_len=16 * 1024))[0] == 200
        status, _, body = same(tower, encoded(alice, appointment(blob_len=16 * 1024)), headers)
        assert json.loads(body)["error_code"] == _code(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, dialect)
    # Already triggered.
    a = appointment()
    status, _ = tower.post("/add_appointment", signed_appointment(alice, a), rust=dialect is Dialect.RUST)
    assert status == 200
    record = find_watched(tower.store, alice.user_id, a.locator)
    assert record is not None
    trigger(tower.store, tower.index, record, Txid(os.urandom(32)), b"\x02" * 60)
    status, _, body = same(tower, encoded(alice, a), headers)
    assert json.loads(body)["error_code"] == _code(ErrorKind.ALREADY_TRIGGERED, dialect)
    # bitcoind away.
    tower.chain.bitcoind_reachable = False
    status, _, _ = same(tower, encoded(alice, appointment()), headers)
    assert status == 503
    tower.chain.bitcoind_reachable = True
    # Subscription over.
    tower.chain.tip_height += 10_000
    same(tower, encoded(alice, appointment()), headers)


def test_the_tower_full(store: Store) -> None:
    tower = Tower.build(store, max_appointments=1)
    try:
        alice = Client.new()
        tower.register(alice, Dialect.PYTHON)
        same(tower, encoded(alice, appointment()), PYTHON, flask_first=False)  # accepted by the fast path
        status, _, _ = same(tower, encoded(alice, appointment()), PYTHON)
        assert status == 503
    finally:
        tower.close()


@pytest.mark.parametrize(
    ("body", "headers", "content_type"),
    [
        (b"not json", PYTHON, "application/json"),
        (b"[1, 2]", RUST, "application/json"),
        (b'{"appointment": {"locator": "00"}, "signature": "x"}', PYTHON, "application/json"),
        (b'{"signature": "x"}', RUST, None),
        (b'{"appointment": null, "signature": "x"}', RUST, None),
        (b'{"appointment": {"locator": "", "encrypted_blob": "00", "to_self_delay": 40}, "signature": "x"}',
         RUST, None),
        (b'{"appointment": {}, "signature": ""}', PYTHON, "application/json"),
        (b'{"a": 1}', PYTHON, "text/plain"),
        (b'{"a": "' + b"0" * 3000 + b'"}', RUST, None),
    ],
)
def test_what_the_fast_path_leaves_to_flask(
    tower: Tower, body: bytes, headers: dict[str, str], content_type: str | None
) -> None:
    assert fast_answer(tower, body, headers, content_type) is None


def test_a_wrong_field_then_goes_through_flask_unchanged(tower: Tower) -> None:
    alice = Client.new()
    tower.register(alice, Dialect.PYTHON)
    fields = {"locator": "zz" * 16, "encrypted_blob": "00", "to_self_delay": 40}
    body = with_fields(alice, appointment(), fields)
    assert fast_answer(tower, body, PYTHON, "application/json") is None
    status, _, _ = flask_answer(tower, body, PYTHON, "application/json")
    assert status == 400


def test_the_fast_path_counts_its_requests(tower: Tower) -> None:
    alice = Client.new()
    tower.register(alice, Dialect.RUST)
    recorder = Recorder()
    fast = fast_path(tower, recorder)
    assert fast(encoded(alice, appointment()), None, None) is not None
    assert fast(encoded(Client.new(), appointment()), None, None) is not None
    assert recorder.seen == [("/add_appointment", 200, "POST"), ("/add_appointment", 401, "POST")]


def test_json_answer_is_what_flask_jsonify_sends(tower: Tower) -> None:
    obj = {"b": [1, "é"], "a": {"z": None, "y": 2.5}}
    with tower.app.app_context():
        from flask import jsonify

        reference = jsonify(obj)
    answer = json_answer(200, obj)
    assert answer.body == reference.get_data()
    assert dict(answer.headers)["Content-Type"] == reference.headers["Content-Type"]


def _code(kind: ErrorKind, dialect: Dialect) -> int:
    from common.errors import error_code

    return error_code(kind, dialect)
