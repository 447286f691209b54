"""The worker channel (``teos.api.ipc``): a CoreServer on a real Unix socket and its clients.

The public API's conformance tests already run through it (the ``tower`` fixture's "remote" variant);
these cover what only the channel does: its authentication, its framing limits, how its failures reach
a client, the metrics it carries and the caller cache of ``RemoteCore``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from common import crypto
from common.appointment import Appointment
from common.dialects import locator_from_txid
from common.errors import ErrorKind, RequestError, TeosError
from common.types import Dialect, Locator, Txid, UserId
from teos.api import ipc
from teos.api.ipc import (
    MAX_REQUEST_BYTES,
    TOKEN_BYTES,
    AsyncCoreClient,
    CoreClient,
    CoreServer,
    Observation,
    RemoteCore,
)
from teos.gatekeeper import Gatekeeper
from teos.service import TowerCore
from teos.storage.store import Store
from tests.support.users import FakeChainView

TIMEOUT = 10.0
T = TypeVar("T")


@pytest.fixture
def observed() -> list[Observation]:
    return []


@pytest.fixture
def server(
    gatekeeper: Gatekeeper, chain: FakeChainView, store: Store, observed: list[Observation]
) -> Iterator[CoreServer]:
    core = TowerCore(gatekeeper, chain, chain, store)
    srv = CoreServer(core, os.urandom(TOKEN_BYTES), on_observations=observed.extend)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _client(server: CoreServer, token: bytes | None = None) -> CoreClient:
    return CoreClient(server.address, server.token if token is None else token, timeout=TIMEOUT)


def _user() -> tuple[bytes, UserId]:
    secret = crypto.generate_secret_key()
    return secret, crypto.public_key(secret)


def test_round_trip_of_every_use_case(server: CoreServer) -> None:
    core = RemoteCore(_client(server))
    _, user_id = _user()
    assert core.user(user_id) is None
    registered = core.register(user_id, Dialect.RUST)
    assert registered.user_id == user_id and registered.dialect is Dialect.RUST
    appointment = Appointment(Locator(os.urandom(16)), os.urandom(100), 20)
    record, user = core.add_appointment(user_id, "sig", appointment)
    assert record.locator == appointment.locator and record.encrypted_blob == appointment.encrypted_blob
    assert user.available_slots == registered.available_slots - 1
    state = core.get_appointment(user_id, appointment.locator)
    assert state.appointment == record and state.tracker is None
    info = core.get_subscription_info(user_id)
    assert info.locators == [appointment.locator] and info.user == user


def test_errors_keep_their_kind_and_class(server: CoreServer, chain: FakeChainView) -> None:
    core = RemoteCore(_client(server))
    _, user_id = _user()
    with pytest.raises(TeosError) as refused:
        core.get_subscription_info(user_id)
    assert refused.value.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
    assert not isinstance(refused.value, RequestError)
    core.register(user_id, Dialect.PYTHON)
    with pytest.raises(TeosError) as missing:
        core.get_appointment(user_id, Locator(os.urandom(16)))
    assert missing.value.kind is ErrorKind.APPOINTMENT_NOT_FOUND
    chain.bitcoind_reachable = False
    with pytest.raises(TeosError) as down:
        core.register(user_id, Dialect.PYTHON)
    assert down.value.kind is ErrorKind.SERVICE_UNAVAILABLE


def test_request_errors_stay_request_errors(server: CoreServer, chain: FakeChainView) -> None:
    core = RemoteCore(_client(server))
    _, user_id = _user()
    core.register(user_id, Dialect.RUST)
    dispute_txid = Txid(os.urandom(32))
    chain.add_breach(dispute_txid)  # the breach is known: the blob must decrypt to a transaction
    appointment = Appointment(locator_from_txid(dispute_txid, Dialect.RUST), os.urandom(100), 20)
    with pytest.raises(RequestError) as refused:
        core.add_appointment(user_id, "sig", appointment)
    assert refused.value.kind is ErrorKind.WRONG_FIELD_FORMAT


def test_a_wrong_token_gets_no_answer(server: CoreServer) -> None:
    core = RemoteCore(_client(server, token=os.urandom(TOKEN_BYTES)))
    with pytest.raises(TeosError) as refused:
        core.user(_user()[1])
    assert refused.value.kind is ErrorKind.SERVICE_UNAVAILABLE


def test_a_silent_connection_is_dropped(server: CoreServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipc, "HANDSHAKE_TIMEOUT", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.settimeout(TIMEOUT)
        silent.connect(server.address)
        assert silent.recv(100) == b""  # closed by the server, no token having come
    assert _client(server).call("user", _user()[1].raw) is None


def test_unknown_op_and_bad_frames(server: CoreServer) -> None:
    client = _client(server)
    with pytest.raises(TeosError) as unknown:
        client.call("drop_database")
    assert unknown.value.kind is ErrorKind.UNEXPECTED
    with pytest.raises(TeosError) as wrong_arity:
        client.call("user")
    assert wrong_arity.value.kind is ErrorKind.UNEXPECTED
    # A frame over the limit, and bytes marshal cannot read: the server closes that connection.
    for frame in (struct.pack(">I", MAX_REQUEST_BYTES + 1), struct.pack(">I", 3) + b"\xff\xff\xff"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(TIMEOUT)
            raw.connect(server.address)
            raw.sendall(server.token + frame)
            assert raw.recv(100) == b""
    assert client.call("user", _user()[1].raw) is None  # the server still serves everyone else


def test_a_stopped_server_is_service_unavailable(server: CoreServer) -> None:
    client = _client(server)
    assert client.call("user", _user()[1].raw) is None
    server.stop()
    with pytest.raises(TeosError) as down:
        client.call("user", _user()[1].raw)
    assert down.value.kind is ErrorKind.SERVICE_UNAVAILABLE


def test_observations_reach_the_main_process(server: CoreServer, observed: list[Observation]) -> None:
    batch = [("public", "/register", "POST", 200, 0.002), ("public", "<unmatched>", "GET", 404, 0.001)]
    assert _client(server).call("observe", batch) is None
    assert [tuple(o) for o in observed] == batch


def test_cached_callers_are_still_checked_by_the_core(server: CoreServer, gatekeeper: Gatekeeper) -> None:
    now = [0.0]
    core = RemoteCore(_client(server), clock=lambda: now[0])
    _, user_id = _user()
    user = core.register(user_id, Dialect.RUST)
    assert core.user(user_id) is not None
    # The expiry sweep removes it (at its deletion height).
    gatekeeper._delete_user(user_id, user.subscription_expiry + gatekeeper.config.expiry_delta)
    assert gatekeeper.get_user(user_id) is None
    assert core.user(user_id) is not None  # still cached: it only identifies the caller ...
    with pytest.raises(TeosError) as refused:  # ... and the core refuses what it asks for
        core.add_appointment(user_id, "sig", Appointment(Locator(os.urandom(16)), b"\x00" * 50, 20))
    assert refused.value.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
    now[0] += RemoteCore.USER_CACHE_SECONDS + 1
    assert core.user(user_id) is None  # and the cache forgets it in seconds


def test_concurrent_clients_never_overspend(server: CoreServer, gatekeeper: Gatekeeper) -> None:
    core = RemoteCore(_client(server))
    _, user_id = _user()
    slots = core.register(user_id, Dialect.RUST).available_slots
    accepted: list[int] = []
    refused: list[ErrorKind] = []

    def add(n: int) -> None:
        for _ in range(n):
            try:
                core.add_appointment(user_id, "sig", Appointment(Locator(os.urandom(16)), b"\x01" * 50, 20))
                accepted.append(1)
            except TeosError as e:
                refused.append(e.kind)

    threads: Sequence[threading.Thread] = [
        threading.Thread(target=add, args=(slots // 4 + 3,)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(accepted) == slots
    assert set(refused) == {ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION}
    user = gatekeeper.get_user(user_id)
    assert user is not None and user.available_slots == 0


# -- the event loop's client (AsyncCoreClient) -------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_the_async_client_answers_and_refuses_as_the_threaded_one(server: CoreServer) -> None:
    _, user_id = _user()

    async def main() -> None:
        client = AsyncCoreClient(server.address, server.token, size=2, timeout=TIMEOUT)
        try:
            assert await client.call("user", user_id.raw) is None
            raw = await client.call("register", user_id.raw, Dialect.RUST.value)
            assert raw == await client.call("user", user_id.raw)
            with pytest.raises(TeosError) as unknown:
                await client.call("drop_database")
            assert unknown.value.kind is ErrorKind.UNEXPECTED
            with pytest.raises(TeosError) as missing:
                await client.call("get", user_id.raw, os.urandom(16))
            assert missing.value.kind is ErrorKind.APPOINTMENT_NOT_FOUND
            assert await client.call("user", user_id.raw) == raw  # the connection survives an error answer
        finally:
            client.close()

    _run(main())


def test_the_async_client_keeps_at_most_size_connections_and_reuses_them(server: CoreServer) -> None:
    users = [_user()[1] for _ in range(12)]
    opened: list[object] = []

    async def main() -> None:
        client = AsyncCoreClient(server.address, server.token, size=3, timeout=TIMEOUT)
        real = asyncio.get_running_loop().create_unix_connection

        async def counting(factory: Any, path: str) -> Any:
            opened.append(path)
            return await real(factory, path)

        asyncio.get_running_loop().create_unix_connection = counting  # type: ignore[method-assign,assignment]
        try:
            for _ in range(3):
                answers = await asyncio.gather(*(client.call("user", u.raw) for u in users))
                assert answers == [None] * len(users)
        finally:
            client.close()

    _run(main())
    assert len(opened) == 3  # 36 calls, 12 at once, over 3 connections


def test_the_async_client_replaces_a_connection_closed_while_idle(server: CoreServer) -> None:
    _, user_id = _user()

    async def main() -> None:
        client = AsyncCoreClient(server.address, server.token, size=1, timeout=TIMEOUT)
        try:
            assert await client.call("user", user_id.raw) is None
            with server._lock:
                for conn in list(server._connections):
                    conn.shutdown(socket.SHUT_RDWR)  # the main process's end goes away
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while client._idle[0].lost is None:  # the loop sees the close
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            assert await client.call("user", user_id.raw) is None  # on a new connection
        finally:
            client.close()

    _run(main())


def test_the_async_client_reports_a_stopped_main_process(server: CoreServer) -> None:
    _, user_id = _user()

    async def main() -> None:
        client = AsyncCoreClient(server.address, server.token, size=1, timeout=TIMEOUT)
        try:
            assert await client.call("user", user_id.raw) is None
            server.stop()
            with pytest.raises(TeosError) as down:
                await client.call("user", user_id.raw)
            assert down.value.kind is ErrorKind.SERVICE_UNAVAILABLE
        finally:
            client.close()

    _run(main())


def test_the_async_client_gives_up_on_a_main_process_that_does_not_answer(
    server: CoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = threading.Event()
    monkeypatch.setattr(server, "_answer", lambda request: stuck.wait(TIMEOUT) or ("ok", None))

    async def main() -> None:
        client = AsyncCoreClient(server.address, server.token, size=1, timeout=0.2)
        try:
            with pytest.raises(TeosError) as late:
                await client.call("user", _user()[1].raw)
            assert late.value.kind is ErrorKind.SERVICE_UNAVAILABLE
        finally:
            client.close()

    try:
        _run(main())
    finally:
        stuck.set()
