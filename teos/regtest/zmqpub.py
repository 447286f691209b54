"""The simulator's ZMQ PUB socket: ``hashblock`` and ``rawtx`` as Bitcoin Core sends them.

Each message is three frames: the topic, the body (a block hash in display byte order, or a serialised
transaction with witness), and a 4-byte little-endian sequence number counted per topic from 0. Fault
knobs: ``drop(topic, n)`` swallows the next n messages of a topic (their sequence numbers are still used,
so subscribers see the gap they would see after a real loss) and ``kill()``/``revive()`` close and rebind the
socket on the same port.
"""

from __future__ import annotations

import logging
import struct
import threading

import zmq

from common.tx import Transaction
from common.types import BlockHash

logger = logging.getLogger(__name__)

TOPICS = ("hashblock", "rawtx")


class ZmqPublisher:
    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._socket: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()
        self._sequence = {topic: 0 for topic in TOPICS}
        self._drop = {topic: 0 for topic in TOPICS}
        self.sent = {topic: 0 for topic in TOPICS}

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._socket is not None

    def start(self) -> None:
        with self._lock:
            if self._ctx is None:
                self._ctx = zmq.Context()
            self._bind()

    def _bind(self) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        if self.port:
            sock.bind(self.url)
        else:
            sock.bind(f"tcp://{self.host}:*")
            endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
            assert isinstance(endpoint, bytes)
            self.port = int(endpoint.decode().rsplit(":", 1)[1])
        self._socket = sock

    def stop(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None

    def kill(self) -> None:
        """Closes the socket (subscribers hear nothing until ``revive``); sequence numbers carry on."""
        with self._lock:
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None

    def revive(self) -> None:
        with self._lock:
            if self._socket is None and self._ctx is not None:
                self._bind()

    def drop(self, topic: str, count: int) -> None:
        with self._lock:
            for t in TOPICS if topic == "all" else (topic,):
                if t not in self._drop:
                    raise ValueError(f"unknown topic {topic}")
                self._drop[t] = max(0, count)

    def pending_drops(self) -> dict[str, int]:
        with self._lock:
            return dict(self._drop)

    def sequences(self) -> dict[str, int]:
        with self._lock:
            return dict(self._sequence)

    def publish(self, topic: str, body: bytes) -> None:
        with self._lock:
            seq = self._sequence[topic]
            self._sequence[topic] = (seq + 1) & 0xFFFFFFFF
            if self._drop[topic] > 0:
                self._drop[topic] -= 1
                return
            if self._socket is None:
                return
            try:
                self._socket.send_multipart([topic.encode(), body, struct.pack("<I", seq)], flags=zmq.NOBLOCK)
                self.sent[topic] += 1
            except zmq.ZMQError as e:  # a full queue drops, as a PUB socket does
                logger.warning("zmq publish failed topic=%s error=%s", topic, e)

    # Notifier protocol for ChainState
    def rawtx(self, tx: Transaction) -> None:
        self.publish("rawtx", tx.raw)

    def hashblock(self, block_hash: BlockHash) -> None:
        self.publish("hashblock", block_hash.display)
