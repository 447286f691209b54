"""Issue 13, F5: who may connect to the worker channel, for how long, and how much of the log it gets.

Before: any local user could connect to the abstract socket (now a socket file in the private network
directory, and the peer's uid is checked); 1,100 connections without a token filled
it (fresh registrations then got 503), the 5 s handshake timeout applied to each read (a byte every 4 s
held a connection for 33 s and more), and every refusal wrote a WARNING (4,400 lines a minute).
"""

from __future__ import annotations

import logging
import marshal
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import crypto
from common.types import Dialect
from teos.api import ipc
from teos.api.ipc import TOKEN_BYTES, CoreClient, CoreServer, RemoteCore
from teos.gatekeeper import Gatekeeper
from teos.logutil import RateLimitedLog
from teos.service import TowerCore
from teos.storage.store import Store
from tests.support.users import FakeChainView
from tests.support.wait import wait_until


@pytest.fixture
def server(gatekeeper: Gatekeeper, chain: FakeChainView, store: Store) -> Iterator[CoreServer]:
    srv = CoreServer(TowerCore(gatekeeper, chain, chain, store), os.urandom(TOKEN_BYTES))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def connect(server: CoreServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(server.address)
    return s


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def registers(server: CoreServer) -> bool:
    core = RemoteCore(CoreClient(server.address, server.token, timeout=10))
    user_id = crypto.public_key(crypto.generate_secret_key())
    return core.register(user_id, Dialect.RUST).user_id == user_id


def _as_nobody(address: str, payload: bytes) -> int:
    """In a forked child running as user nobody: connect, send ``payload``; exit 0 if the channel closed
    the connection unanswered, 1 if it answered, 2 on anything else."""
    pid = os.fork()
    if pid == 0:  # the child: socket calls only, then _exit
        code = 2
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(address)
            s.sendall(payload)
            code = 0 if s.recv(100) == b"" else 1
        except (ConnectionResetError, BrokenPipeError):  # closed before it was done writing
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_refused_even_with_the_token(
    server: CoreServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Run as user nobody, a client that somehow knows the token is still refused, at once."""
    frame = marshal.dumps(("user", b"x" * 33))
    with caplog.at_level(logging.WARNING, logger="teos.api.ipc"):
        assert _as_nobody(server.address, server.token + len(frame).to_bytes(4, "big") + frame) == 0
        wait_until(lambda: server.refused == 1, message="refused")
    assert "from uid 65534" in caplog.text
    assert registers(server)


def test_the_token_must_arrive_within_the_deadline_in_all(
    server: CoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right token, one byte every 0.15 s (each read well within the timeout, the whole not): the
    connection is closed instead of accepted."""
    monkeypatch.setattr(ipc, "HANDSHAKE_TIMEOUT", 1.0)
    s = connect(server)
    try:
        for byte in server.token:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.15)
        assert closed(s)
    finally:
        s.close()
    wait_until(lambda: server.refused == 1, message="the slow handshake refused")


def test_connections_presenting_no_token_cannot_fill_the_channel(
    server: CoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipc, "MAX_HANDSHAKES", 3)
    working = RemoteCore(CoreClient(server.address, server.token, timeout=10))
    working.register(crypto.public_key(crypto.generate_secret_key()), Dialect.RUST)  # authenticated first
    silent = [connect(server) for _ in range(3)]
    try:
        wait_until(lambda: server._handshaking == 3, message="three connections presenting their token")
        extra = connect(server)
        assert closed(extra)  # refused at once, not after the handshake timeout
        extra.close()
        assert working.register(crypto.public_key(crypto.generate_secret_key()), Dialect.RUST)
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: server._handshaking == 0, timeout=15, message="silent connections dropped")
    assert registers(server)


def test_refusals_are_logged_once_a_minute_with_a_count(
    server: CoreServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="teos.api.ipc"):
        for _ in range(30):
            s = connect(server)
            s.sendall(b"x" * TOKEN_BYTES)  # a wrong token
            assert closed(s)
            s.close()
        wait_until(lambda: server.refused == 30, message="30 refusals")
    lines = [r for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 1


def test_rate_limited_log_counts_what_it_suppresses(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        assert limited.warning("k", "refused from uid %d", 7)
        for _ in range(99):
            now[0] += 0.5
            assert not limited.warning("k", "refused from uid %d", 7)
        assert limited.warning("other", "another event")  # keys are limited separately
        now[0] += 10.5
        assert limited.warning("k", "refused from uid %d", 7)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "refused from uid 7",
        "another event",
        "refused from uid 7 (99 more like it in the last 60 s)",
    ]


def _connect_as_nobody(address: str) -> int:
    """In a forked child running as user nobody: 0 if connecting is refused by the kernel (EACCES),
    1 if it connects."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(address)
                code = 1
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_in_a_private_directory_the_channel_is_a_socket_file_others_cannot_reach(
    tmp_path: Path, gatekeeper: Gatekeeper, chain: FakeChainView, store: Store
) -> None:
    directory = tmp_path / "regtest"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)
    (directory / ipc.SOCKET_NAME).write_text("stale")  # left by a teosd that was killed
    core = TowerCore(gatekeeper, chain, chain, store)
    srv = CoreServer(core, os.urandom(TOKEN_BYTES), ipc.socket_address(directory))
    srv.start()
    try:
        assert srv.address == str(directory / ipc.SOCKET_NAME)
        assert stat.S_ISSOCK((directory / ipc.SOCKET_NAME).stat().st_mode)
        assert stat.S_IMODE((directory / ipc.SOCKET_NAME).stat().st_mode) == 0o600
        assert registers(srv)
        if os.geteuid() == 0:
            assert _connect_as_nobody(srv.address) == 0
            assert srv.refused == 0  # turned away by the kernel: teosd never saw it
    finally:
        srv.stop()
    assert not (directory / ipc.SOCKET_NAME).exists()


def test_a_path_too_long_for_a_socket_falls_back_to_an_abstract_address(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    assert ipc.socket_address(deep).startswith("\0teosd-")
    assert ipc.socket_address(tmp_path) == str(tmp_path / ipc.SOCKET_NAME)
