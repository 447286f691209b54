"""Issue 13, F1/F2/F7: the RSGI guard in front of the public app, driven through a fake RSGI protocol.

The end-to-end tests (tests/daemon/test_connection_bounds.py) run it under granian; these check each
decision on its own: who is admitted, when a body is refused, which answers are streamed.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from teos.api.payments import BODY_LIMITS as PAYMENT_BODY_LIMITS
from teos.api.serving import SMALL_BODY_BYTES, STREAM_THRESHOLD, GuardedApp, GuardSettings, address_key


class FakeHeaders:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def items(self) -> list[tuple[str, str]]:
        return list(self.values.items())

    def __contains__(self, key: str) -> bool:
        return key in self.values


@dataclass
class FakeScope:
    client: str = "127.0.0.2:40000"
    method: str = "POST"
    path: str = "/register"
    headers: FakeHeaders = field(default_factory=lambda: FakeHeaders({}))
    proto: str = "http"
    server: str = "127.0.0.1:9814"
    query_string: str = ""
    http_version: str = "1.1"
    scheme: str = "http"


class FakeTransport:
    def __init__(self, owner: FakeProtocol) -> None:
        self.owner = owner

    async def send_bytes(self, data: bytes) -> None:
        self.owner.sent.append(data)
        await asyncio.sleep(0)


class FakeProtocol:
    """Records the answer; the body arrives as ``chunks``, each after ``delay`` seconds."""

    def __init__(
        self, chunks: Iterable[bytes] = (), delay: float = 0.0, forbid_reading: bool = False
    ) -> None:
        self.chunks = list(chunks)
        self.delay = delay
        self.forbid_reading = forbid_reading
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent: list[bytes] = []
        self.streamed = False
        self.was_read = False

    async def __call__(self) -> bytes:
        """RSGI's whole-body read: every chunk, as they arrive."""
        return b"".join([chunk async for chunk in self])

    def __aiter__(self) -> AsyncIterator[bytes]:
        assert not self.forbid_reading, "the guard read a body it should have refused unread"
        self.was_read = True
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await asyncio.sleep(self.delay)
            yield chunk

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.sent = status, headers, [body]

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> FakeTransport:
        self.status, self.headers, self.streamed = status, headers, True
        return FakeTransport(self)

    @property
    def body(self) -> bytes:
        return b"".join(self.sent)

    def json(self) -> Any:
        return json.loads(self.body)


def wsgi(
    answer: Callable[[dict[str, Any]], Iterable[bytes]], seen: list[dict[str, Any]] | None = None
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if seen is not None:
            seen.append(environ)
        start_response("200 OK", [("Content-Type", "application/json")])
        return answer(environ)

    return app


def settings(**overrides: Any) -> GuardSettings:
    base: dict[str, Any] = dict(
        threads=2, client_timeout=0.5, max_body_bytes=1000, per_address=1, max_waiting=4
    )
    base.update(overrides)
    return GuardSettings(**base)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yields to the event loop until ``condition()`` holds (AssertionError after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met"
        await asyncio.sleep(0.005)


def serve(guard: GuardedApp, *requests: tuple[FakeScope, FakeProtocol]) -> None:
    async def main() -> None:
        await asyncio.gather(*(guard.__rsgi__(scope, protocol) for scope, protocol in requests))

    asyncio.run(main())


def test_body_and_environ_reach_the_app() -> None:
    seen: list[dict[str, Any]] = []
    guard = GuardedApp(wsgi(lambda env: [env["wsgi.input"].read()], seen), settings())
    headers = FakeHeaders({"content-length": "7", "content-type": "application/json", "user-agent": "x",
                           "x-a": "1"})
    protocol = FakeProtocol([b"{", b'"a":1}'])
    serve(guard, (FakeScope(headers=headers, path="/reg%69ster"), protocol))
    assert (protocol.status, protocol.body, protocol.streamed) == (200, b'{"a":1}', False)
    env = seen[0]
    assert (env["REMOTE_ADDR"], env["PATH_INFO"], env["CONTENT_LENGTH"]) == ("127.0.0.2", "/register", "7")
    assert (env["CONTENT_TYPE"], env["HTTP_USER_AGENT"], env["HTTP_X_A"]) == ("application/json", "x", "1")


def test_one_address_gets_its_share_and_others_still_get_in() -> None:
    """With one request in progress from 127.0.0.2 (its share), a second from it is refused at once;
    one from 127.0.0.3 is served."""
    release = threading.Event()
    guard = GuardedApp(wsgi(lambda env: [b"{}"] if release.wait(10) else []), settings(per_address=1))
    first, second, other = FakeProtocol(), FakeProtocol(), FakeProtocol()

    async def main() -> None:
        task = asyncio.ensure_future(guard.__rsgi__(FakeScope(), first))
        await until(lambda: guard._admitted == 1)
        await guard.__rsgi__(FakeScope(client="127.0.0.2:40001"), second)
        assert second.status == 503 and not release.is_set()
        other_task = asyncio.ensure_future(guard.__rsgi__(FakeScope(client="127.0.0.3:1"), other))
        await until(lambda: guard._admitted == 2)
        release.set()
        await asyncio.gather(task, other_task)

    asyncio.run(main())
    assert (first.status, second.status, other.status) == (200, 503, 200)
    assert ("retry-after", "1") in second.headers
    assert second.json()["error_code"] == 32  # no User-Agent: the rust-teos plugin's SERVICE_UNAVAILABLE
    assert guard._in_progress == {}  # nothing is kept for addresses with no request in progress


def test_behind_a_proxy_every_request_shares_one_address_and_none_is_refused_for_it() -> None:
    release = threading.Event()
    guard = GuardedApp(wsgi(lambda env: [b"{}"] if release.wait(10) else []), settings(per_address=None))
    protocols = [FakeProtocol() for _ in range(4)]

    async def main() -> None:
        tasks = [asyncio.ensure_future(guard.__rsgi__(FakeScope(client="127.0.0.1:1"), p)) for p in protocols]
        await until(lambda: guard._admitted == 4)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert [p.status for p in protocols] == [200] * 4


def test_beyond_the_threads_and_the_waiting_room_requests_are_refused() -> None:
    release = threading.Event()
    guard = GuardedApp(wsgi(lambda env: [b"{}"] if release.wait(10) else []),
                       settings(per_address=None, threads=1, max_waiting=2))
    protocols = [FakeProtocol() for _ in range(5)]

    async def main() -> None:
        tasks = [asyncio.ensure_future(guard.__rsgi__(FakeScope(client=f"10.0.0.{i}:1"), p))
                 for i, p in enumerate(protocols)]
        await until(lambda: guard.refused == 2 and guard._admitted == 3)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert sorted(p.status or 0 for p in protocols) == [200, 200, 200, 503, 503]


def test_one_address_gets_a_rate_of_requests_others_keep_theirs() -> None:
    """5 a second, a burst of 10: the 11th request at once is refused unread, before any thread; two
    seconds later 10 more are admitted; another address was never affected."""
    now = [100.0]
    guard = GuardedApp(wsgi(lambda env: [b"{}"]), settings(per_address=None, rate_per_address=5.0),
                       clock=lambda: now[0])

    def status(client: str) -> tuple[int | None, bool]:
        protocol = FakeProtocol([b"{}"])
        serve(guard, (FakeScope(client=client, headers=FakeHeaders({"content-length": "2"})), protocol))
        return protocol.status, protocol.was_read

    assert [status("198.51.100.1:1") for _ in range(10)] == [(200, True)] * 10
    assert status("198.51.100.1:2") == (503, False)
    assert status("198.51.100.2:1") == (200, True)
    now[0] += 2.0
    assert [status("198.51.100.1:3") for _ in range(10)] == [(200, True)] * 10
    assert status("198.51.100.1:4") == (503, False)


def test_behind_a_proxy_there_is_no_rate() -> None:
    assert GuardSettings.for_threads(8, 10.0, 1000, True, 50).rate_per_address is None
    assert GuardSettings.for_threads(8, 10.0, 1000, False, 0).rate_per_address is None
    assert GuardSettings.for_threads(8, 10.0, 1000, False, 50).rate_per_address == 50


def test_a_body_declared_too_big_is_refused_unread() -> None:
    guard = GuardedApp(wsgi(lambda env: [b"{}"]), settings())
    protocol = FakeProtocol(forbid_reading=True)
    scope = FakeScope(path="/add_appointment", headers=FakeHeaders({"content-length": "1001"}))
    serve(guard, (scope, protocol))
    assert protocol.status == 413 and ("connection", "close") in protocol.headers


def test_only_add_appointment_may_carry_a_large_body() -> None:
    """Every other request is a few hundred bytes: a 60 KB signature is refused before it is read."""
    guard = GuardedApp(wsgi(lambda env: [b"{}"]), settings(max_body_bytes=64 * 1024))
    for path, status in (("/get_subscription_info", 413), ("/register", 413), ("/add_appointment", 200)):
        protocol = FakeProtocol([b"x" * 5000], forbid_reading=status == 413)
        serve(guard, (FakeScope(path=path, headers=FakeHeaders({"content-length": "5000"})), protocol))
        assert protocol.status == status, path
    assert SMALL_BODY_BYTES < 5000


@pytest.mark.parametrize("path", sorted(PAYMENT_BODY_LIMITS))
def test_a_paid_towers_payment_requests_have_their_own_limits(path: str) -> None:
    """``/open_channel``, ``/pay`` and ``/get_channel`` are refused unread beyond their own limits, and
    served up to them."""
    guard = GuardedApp(wsgi(lambda env: [b"{}"]), settings(max_body_bytes=64 * 1024))
    limit = PAYMENT_BODY_LIMITS[path]
    for size, status in ((limit + 1, 413), (limit, 200)):
        protocol = FakeProtocol([b"x" * size], forbid_reading=status == 413)
        serve(guard, (FakeScope(path=path, headers=FakeHeaders({"content-length": str(size)})), protocol))
        assert protocol.status == status, (path, size)


def test_a_chunked_body_growing_too_big_is_refused() -> None:
    guard = GuardedApp(wsgi(lambda env: [b"{}"]), settings())
    protocol = FakeProtocol([b"x" * 600, b"x" * 600])
    scope = FakeScope(path="/add_appointment", headers=FakeHeaders({"transfer-encoding": "chunked"}))
    serve(guard, (scope, protocol))
    assert protocol.status == 413


def test_a_slow_body_is_answered_408_and_never_reaches_the_app() -> None:
    seen: list[dict[str, Any]] = []
    guard = GuardedApp(wsgi(lambda env: [b"{}"], seen), settings(client_timeout=0.2))
    protocol = FakeProtocol([b"{"] * 100, delay=0.05)
    serve(guard, (FakeScope(headers=FakeHeaders({"content-length": "100"})), protocol))
    assert protocol.status == 408 and seen == []


def test_large_answers_are_streamed_in_order_and_closed() -> None:
    closed = threading.Event()

    class Answer:
        def __iter__(self) -> Iterator[bytes]:
            for i in range(300):
                yield (b"%04d" % i) * 256  # 1 KiB each: 300 KiB in all

        def close(self) -> None:
            closed.set()

    guard = GuardedApp(wsgi(lambda env: Answer()), settings())
    protocol = FakeProtocol()
    serve(guard, (FakeScope(method="GET", path="/x"), protocol))
    assert protocol.streamed and protocol.status == 200
    assert protocol.body == b"".join((b"%04d" % i) * 256 for i in range(300))
    assert all(len(chunk) <= 2 * STREAM_THRESHOLD for chunk in protocol.sent)
    assert closed.is_set()


def test_small_answers_are_sent_whole() -> None:
    guard = GuardedApp(wsgi(lambda env: [b"a", b"b"]), settings())
    protocol = FakeProtocol()
    serve(guard, (FakeScope(method="GET", path="/ping"), protocol))
    assert (protocol.streamed, protocol.body) == (False, b"ab")


@pytest.mark.parametrize(
    ("client", "key"),
    [
        ("127.0.0.2:5", "127.0.0.2"),
        ("[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:ffff::1]:443", "2001:db8:1:2::/64"),  # same /64: one client
        ("[::ffff:10.1.2.3]:80", "10.1.2.3"),
        ("garbage", "garbage"),
    ],
)
def test_address_key(client: str, key: str) -> None:
    assert address_key(client) == key


def test_add_appointment_goes_to_the_fast_handler_first_and_to_the_app_when_it_declines() -> None:
    """The fast handler answers a POST /add_appointment with the body and the two headers it needs; when
    it returns None the app answers the same body; other paths and methods never reach it."""
    from teos.api.fastpath import Answer

    calls: list[tuple[bytes, str | None, str | None]] = []

    async def fast(body: bytes, user_agent: str | None, content_type: str | None) -> Answer | None:
        calls.append((body, user_agent, content_type))
        return Answer(200, [("Content-Type", "application/json"), ("Content-Length", "9")], b'{"f":1}\n') \
            if body == b'{"go":1}' else None

    seen: list[dict[str, Any]] = []
    guard = GuardedApp(wsgi(lambda env: [b"app:" + env["wsgi.input"].read()], seen), settings(), fast=fast)
    headers = FakeHeaders({"content-length": "8", "content-type": "application/json", "user-agent": "rust"})
    quick, declined, other = FakeProtocol([b'{"go":1}']), FakeProtocol([b'{"no":1}']), FakeProtocol([b"{}"])
    serve(guard, (FakeScope(path="/add_appointment", headers=headers), quick))
    serve(guard, (FakeScope(path="/add_appointment", headers=headers), declined))
    serve(guard, (FakeScope(path="/register", headers=FakeHeaders({"content-length": "2"})), other))
    assert (quick.status, quick.body, quick.headers[1]) == (200, b'{"f":1}\n', ("Content-Length", "9"))
    assert (declined.status, declined.body) == (200, b'app:{"no":1}')
    assert other.body == b"app:{}"
    assert calls == [(b'{"go":1}', "rust", "application/json"), (b'{"no":1}', "rust", "application/json")]
    assert [env["PATH_INFO"] for env in seen] == ["/add_appointment", "/register"]
