"""A ZMQ SUB client for tests: connect to a node's ``zmq_url`` and read Core-style 3-frame messages."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import zmq
from zmq.utils.monitor import recv_monitor_message

from tests.support.wait import WaitTimeout


@dataclass(frozen=True)
class ZmqMessage:
    topic: str
    body: bytes
    sequence: int

    @property
    def hex(self) -> str:
        """The body as hex (for ``hashblock`` this is the block hash as RPC shows it)."""
        return self.body.hex()


class ZmqSubscriber:
    """Subscribes to ``topics``; ``start()`` returns once the connection handshake is done."""

    def __init__(self, url: str, topics: tuple[str, ...] = ("hashblock", "rawtx")) -> None:
        self.url = url
        self.topics = topics
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None

    def start(self, timeout: float = 10.0) -> ZmqSubscriber:
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        for topic in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        sock.connect(self.url)
        self._sock = sock
        try:
            if not monitor.poll(int(timeout * 1000)):
                raise WaitTimeout(f"no ZMQ handshake with {self.url} within {timeout}s")
            recv_monitor_message(monitor)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
        return self

    def prime(self, trigger: Callable[[], object], timeout: float = 10.0) -> None:
        """Beats ZMQ's slow-joiner race: calls ``trigger`` (e.g. mine a block) until a message arrives,
        then drains what it caused. Until the publisher has processed the subscription, messages are
        silently dropped, and nothing else tells a subscriber when that has happened."""
        deadline = time.monotonic() + timeout
        while True:
            trigger()
            try:
                self.next(0.25)
                break
            except WaitTimeout:
                if time.monotonic() > deadline:
                    raise
        self.pending(quiet=0.2)

    def next(self, timeout: float = 10.0) -> ZmqMessage:
        assert self._sock is not None, "start() first"
        if not self._sock.poll(int(timeout * 1000)):
            raise WaitTimeout(f"no ZMQ message within {timeout}s")
        frames = self._sock.recv_multipart()
        assert len(frames) == 3, f"expected 3 frames, got {len(frames)}"
        topic, body, seq = frames
        assert len(seq) == 4
        return ZmqMessage(topic.decode(), body, struct.unpack("<I", seq)[0])

    def collect(self, count: int, topic: str | None = None, timeout: float = 10.0) -> list[ZmqMessage]:
        """The next ``count`` messages (of ``topic`` only, when given; others are skipped)."""
        out: list[ZmqMessage] = []
        while len(out) < count:
            msg = self.next(timeout)
            if topic is None or msg.topic == topic:
                out.append(msg)
        return out

    def pending(self, topic: str | None = None, quiet: float = 0.3) -> list[ZmqMessage]:
        """Every message that arrives until none has come for ``quiet`` seconds."""
        out: list[ZmqMessage] = []
        while True:
            try:
                msg = self.next(quiet)
            except WaitTimeout:
                return out
            if topic is None or msg.topic == topic:
                out.append(msg)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> ZmqSubscriber:
        return self.start() if self._sock is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
