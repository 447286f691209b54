"""Malformed answers from a bitcoind, rendered the same way wherever a test needs one.

A tower meets broken answers from bitcoind when something sits in between (a reverse proxy, a load
balancer that answers for a dead node, a connection cut by a firewall) or when the node itself is
overloaded: Bitcoin Core answers HTTP 503 ``text/plain`` "Work queue depth exceeded" when its RPC work
queue is full. This module turns one fault *kind* and the answer bitcoind really gave into the bytes to
send instead, so the simulator's fault knob and the tests' faulting JSON-RPC proxy
(``tests/support/rpcproxy.py``) break answers identically. It does no I/O: callers write the
``FaultReply`` (or hold and drop the connection when it says so).

The kinds, from the least to the most visible:

- ``wrong_type``: a well-formed JSON-RPC answer whose ``result`` has another JSON type (a number for a
  txid, a list for a block object, a string for a count).
- ``wrong_field_type``: an object ``result`` whose fields have other types (``"height": "7"``,
  ``"tx": "..."``); for a scalar result, as ``wrong_type``.
- ``missing_field``: an object ``result`` without the fields the tower reads (hash, height, tx...); for
  a scalar result, an answer with no ``result`` member at all.
- ``bad_value``: values of the right type but out of range, in turn: hashes and txids one hex digit
  short (the "Txid must be 64 hex characters" case) and non-hex text; heights and counts beyond 2^32;
  heights and counts below -2^32 (an answer without numbers gets its text changed every time).
- ``cut_body``: the answer cut in half, with a ``Content-Length`` that matches the cut: a complete HTTP
  message whose JSON does not parse.
- ``cut_stream``: the full ``Content-Length`` announced, half the body sent, the connection closed.
- ``html_500``: HTTP 500 with a ``text/html`` error page, as a reverse proxy sends for a dead upstream.
- ``busy_503``: HTTP 503 ``text/plain`` "Work queue depth exceeded", exactly as Bitcoin Core sends it.
- ``hang``: no answer; the connection is held for ``seconds`` and then closed.

The kinds that rewrite the answer (``TRANSFORMS``) apply only to successful answers: an answer that
carries a JSON-RPC error (e.g. -8 "Block height out of range", which the tower relies on) is passed on
unchanged, and the fault waits for the next call (``applies``).

``FaultQueue`` holds the faults queued per method ("the next N calls of getblock answer html_500, then
the next N a hang"), as the simulator's knob and the proxy both need: ``take_before`` is asked before the
call is answered (error pages and hangs replace the answer), ``take_after`` with the real answer (the
kinds that rewrite it).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

WRONG_TYPE = "wrong_type"
WRONG_FIELD_TYPE = "wrong_field_type"
MISSING_FIELD = "missing_field"
BAD_VALUE = "bad_value"
CUT_BODY = "cut_body"
CUT_STREAM = "cut_stream"
HTML_500 = "html_500"
BUSY_503 = "busy_503"
HANG = "hang"

KINDS: tuple[str, ...] = (
    WRONG_TYPE,
    WRONG_FIELD_TYPE,
    MISSING_FIELD,
    BAD_VALUE,
    CUT_BODY,
    CUT_STREAM,
    HTML_500,
    BUSY_503,
    HANG,
)
# Kinds that rewrite bitcoind's real answer (they need it, and skip answers carrying an error).
TRANSFORMS = frozenset({WRONG_TYPE, WRONG_FIELD_TYPE, MISSING_FIELD, BAD_VALUE, CUT_BODY, CUT_STREAM})

DEFAULT_HANG_SECONDS = 3.0

# The members of object results the tower reads, per method: ``missing_field`` removes them and
# ``wrong_field_type``/``bad_value`` change them (other members are left as they are, so the fault bites).
READ_FIELDS: dict[str, tuple[str, ...]] = {
    "getblock": ("hash", "height", "previousblockhash", "tx"),
    "getblockheader": ("hash", "height", "previousblockhash", "confirmations"),
    "getblockchaininfo": (
        "chain",
        "blocks",
        "bestblockhash",
        "pruned",
        "pruneheight",
        "initialblockdownload",
    ),
    "getrawtransaction": ("txid", "confirmations", "blockhash"),
}

BUSY_BODY = b"Work queue depth exceeded"
HTML_BODY = (
    b"<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\r\n"
    b"<center><h1>500 Internal Server Error</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


@dataclass(frozen=True)
class Taken:
    """One fault to deliver now: its kind, how many of that kind were delivered for the method before
    (``render``'s ``n``) and how long a hang holds."""

    kind: str
    n: int
    seconds: float


@dataclass
class _Rule:
    kind: str
    remaining: int
    seconds: float


class FaultQueue:
    """Faults queued per method, delivered in order, each ``count`` times; thread-safe."""

    def __init__(self) -> None:
        self._rules: dict[str, deque[_Rule]] = {}
        self._delivered: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, method: str, kind: str, count: int = 1, seconds: float = DEFAULT_HANG_SECONDS) -> None:
        """Queues ``count`` faults of ``kind`` for ``method``, after those already queued for it."""
        check_kind(kind)
        if count < 1:
            raise ValueError("count must be at least 1")
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        with self._lock:
            self._rules.setdefault(method, deque()).append(_Rule(kind, count, seconds))

    def clear(self, method: str | None = None) -> None:
        """Drops the faults still queued (for ``method``, or for every method)."""
        with self._lock:
            if method is None:
                self._rules.clear()
            else:
                self._rules.pop(method, None)

    def pending(self, method: str | None = None) -> int:
        """Faults queued and not delivered yet."""
        with self._lock:
            queues = [self._rules.get(method, deque())] if method is not None else list(self._rules.values())
            return sum(r.remaining for q in queues for r in q)

    def delivered(self, method: str | None = None, kind: str | None = None) -> int:
        """Faults delivered so far (for ``method`` and ``kind`` when given)."""
        with self._lock:
            return sum(
                n
                for (m, k), n in self._delivered.items()
                if (method is None or m == method) and (kind is None or k == kind)
            )

    def delivered_by_method(self) -> dict[str, int]:
        """Faults delivered so far, per method."""
        out: Counter[str] = Counter()
        with self._lock:
            for (method, _), n in self._delivered.items():
                out[method] += n
        return dict(out)

    def snapshot(self) -> dict[str, list[tuple[str, int]]]:
        """The queued faults, method -> [(kind, remaining)] (for a status call)."""
        with self._lock:
            return {m: [(r.kind, r.remaining) for r in q] for m, q in self._rules.items()}

    def take_before(self, method: str) -> Taken | None:
        """The fault that answers this call in bitcoind's place (error page, hang), if one is next."""
        return self._take(method, None, before=True)

    def take_after(self, method: str, reply: Any) -> Taken | None:
        """The fault that rewrites bitcoind's answer ``reply`` to this call, if one is next and applies."""
        return self._take(method, reply, before=False)

    def _take(self, method: str, reply: Any, before: bool) -> Taken | None:
        with self._lock:
            rules = self._rules.get(method)
            if not rules:
                return None
            rule = rules[0]
            rewrites = rule.kind in TRANSFORMS
            if before == rewrites or (rewrites and not applies(rule.kind, reply)):
                return None
            rule.remaining -= 1
            if rule.remaining <= 0:
                rules.popleft()
                if not rules:
                    del self._rules[method]
            n = self._delivered[(method, rule.kind)]
            self._delivered[(method, rule.kind)] += 1
            return Taken(rule.kind, n, rule.seconds)


class UnknownFault(ValueError):
    """The fault kind is not one of ``KINDS``."""


@dataclass(frozen=True)
class FaultReply:
    """What to send instead of bitcoind's answer.

    ``hold`` seconds pass before anything is sent; with ``answer`` False nothing is sent at all and the
    connection is closed after the hold. Otherwise ``status``, ``headers`` (``Content-Length`` among
    them, which may announce more than is sent) and ``body[:send]`` are written, and the connection is
    closed afterwards when ``close`` is set.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    send: int | None = None  # bytes of ``body`` written (None: all of it)
    close: bool = False
    hold: float = 0.0
    answer: bool = True

    @property
    def sent_body(self) -> bytes:
        return self.body if self.send is None else self.body[: self.send]

    def write(self, handler: BaseHTTPRequestHandler, stopping: threading.Event) -> None:
        """Sends this reply on ``handler``'s connection (the simulator's server and the tests' proxy);
        ``stopping`` cuts a hold short."""
        if self.hold > 0:
            stopping.wait(self.hold)
        if not self.answer:
            handler.close_connection = True
            return
        handler.send_response(self.status)
        for name, value in self.headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(self.sent_body)
        handler.wfile.flush()
        if self.close:
            handler.close_connection = True


def check_kind(kind: str) -> str:
    """Returns ``kind`` if it is known, else raises UnknownFault naming the known ones."""
    if kind not in KINDS:
        raise UnknownFault(f"unknown fault kind {kind!r}; one of: {', '.join(KINDS)}")
    return kind


def applies(kind: str, reply: Any) -> bool:
    """Whether ``kind`` breaks this answer (``reply``: bitcoind's parsed answer, None if it had none).

    Kinds that rewrite the answer apply only to a successful JSON-RPC object answer; the others (error
    pages, hangs) apply to any call."""
    if kind not in TRANSFORMS:
        return True
    return isinstance(reply, dict) and not reply.get("error") and "result" in reply


def encode(reply: Any) -> bytes:
    """A JSON-RPC answer as Bitcoin Core writes it: compact JSON and a newline."""
    return (json.dumps(reply, separators=(",", ":")) + "\n").encode()


def render_taken(taken: Taken, method: str, reply: Any = None) -> FaultReply:
    """``render`` for a fault taken from a ``FaultQueue``."""
    return render(taken.kind, method, reply, taken.n, taken.seconds)


def render(
    kind: str, method: str, reply: Any = None, n: int = 0, seconds: float = DEFAULT_HANG_SECONDS
) -> FaultReply:
    """What to send instead of ``reply`` (bitcoind's parsed answer to ``method``) for fault ``kind``.

    ``n`` counts the faults of this kind already sent for the method (0 for the first): ``bad_value``
    changes, in turn, the text, the numbers (too large), the numbers (too small); an answer that the
    turn would leave as it was gets text and numbers changed. ``seconds`` is how long ``hang`` holds
    the connection."""
    check_kind(kind)
    if kind == HTML_500:
        return _plain(500, "text/html", HTML_BODY)
    if kind == BUSY_503:
        return _plain(503, "text/plain", BUSY_BODY)
    if kind == HANG:
        return FaultReply(hold=seconds, answer=False, close=True)
    if not applies(kind, reply):
        raise ValueError(f"fault {kind!r} rewrites a successful answer; got {reply!r:.200}")
    if kind == CUT_BODY:
        body = encode(reply)
        return _json(200, body[: len(body) // 2])
    if kind == CUT_STREAM:
        body = encode(reply)
        return FaultReply(200, _headers("application/json", len(body)), body, len(body) // 2, close=True)
    result = reply["result"]
    fields = READ_FIELDS.get(method)
    if kind == WRONG_TYPE:
        return _json(200, encode({**reply, "result": other_type(result)}))
    if kind == WRONG_FIELD_TYPE:
        return _json(200, encode({**reply, "result": _map_fields(result, fields, other_type)}))
    if kind == MISSING_FIELD:
        if isinstance(result, dict):
            kept = {k: v for k, v in result.items() if fields is not None and k not in fields}
            return _json(200, encode({**reply, "result": kept}))
        return _json(200, encode({k: v for k, v in reply.items() if k != "result"}))
    changed = _map_fields(result, fields, lambda v: _out_of_range(v, n % 3))
    if changed == result:
        changed = _map_fields(result, fields, lambda v: _out_of_range(v, 3))
    return _json(200, encode({**reply, "result": changed}))


def other_type(value: Any) -> Any:
    """A value of another JSON type, derived from ``value`` (a number for text, text for a number...)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return [value]
    return {}  # null


def _out_of_range(value: Any, mode: int) -> Any:
    """A value of the same JSON type that no honest bitcoind sends. ``mode`` picks what changes: 0 the
    text (hex one digit short, other text made non-hex), 1 the numbers (beyond 2^32), 2 the numbers
    (below -2^32), 3 text and numbers (beyond 2^32); lists and objects have each item changed."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        if mode not in (0, 3):
            return value
        if value and all(c in "0123456789abcdefABCDEF" for c in value):
            return value[:-1]
        return "zz" + hashlib.sha256(value.encode()).hexdigest()[2:]
    if isinstance(value, int | float):
        if mode in (1, 3):
            return 2**32 + 7
        return -(2**32) - 7 if mode == 2 else value
    if isinstance(value, list):
        return [_out_of_range(v, mode) for v in value]
    if isinstance(value, dict):
        return {k: _out_of_range(v, mode) for k, v in value.items()}
    return value


def _map_fields(result: Any, fields: tuple[str, ...] | None, change: Callable[[Any], Any]) -> Any:
    """``change`` applied to the read fields of an object result (all fields when unknown), or to a
    scalar or list result as a whole."""
    if isinstance(result, dict):
        return {k: (change(v) if fields is None or k in fields else v) for k, v in result.items()}
    return change(result)


def _headers(content_type: str, length: int) -> tuple[tuple[str, str], ...]:
    return (("Content-Type", content_type), ("Content-Length", str(length)))


def _json(status: int, body: bytes) -> FaultReply:
    return FaultReply(status, _headers("application/json", len(body)), body)


def _plain(status: int, content_type: str, body: bytes) -> FaultReply:
    return FaultReply(status, _headers(content_type, len(body)), body)
