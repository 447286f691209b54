"""BitcoindClient against a tiny JSON-RPC server on loopback: answers, typed errors, auth, retries."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.types import BlockHash, Txid
from teos.chain.bitcoind import (
    TRANSIENT_ERRORS,
    BitcoindClient,
    BitcoindConfig,
    BitcoindUnreachable,
    BitcoindUnreadable,
    BitcoindWarmingUp,
    Cancelled,
    RetryPolicy,
    RPCError,
    TxInfo,
    excerpt,
    retry_call,
)
from teos.chain.carrier import BroadcastStatus, Carrier
from teos.devtools import free_port

HASH = "00" * 31 + "01"

Answer = tuple[int, bytes]
Responder = Callable[[str, list[Any], str], Answer]


class Server:
    """Answers each call with ``responder(method, params, auth) -> (status, body bytes)``."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.calls: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = base64.b64decode(self.headers["Authorization"].split()[1]).decode()
                outer.calls.append((body["method"], auth))
                status, data = outer.responder(body["method"], body["params"], auth)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(result: Any) -> Answer:
    return 200, json.dumps({"result": result, "error": None, "id": 1}).encode()


def err(code: int, message: str, status: int = 500) -> Answer:
    return status, json.dumps({"result": None, "error": {"code": code, "message": message}, "id": 1}).encode()


Serve = Callable[[Responder], tuple[Server, BitcoindClient]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[Server] = []

    def make(responder: Responder) -> tuple[Server, BitcoindClient]:
        s = Server(responder)
        servers.append(s)
        client = BitcoindClient(BitcoindConfig("127.0.0.1", s.port, "u", "p", timeout=2))
        return s, client

    yield make
    for s in servers:
        s.close()


def test_results_and_typed_helpers(serve: Serve) -> None:
    answers = {
        "getbestblockhash": HASH,
        "getblockcount": 7,
        "getblock": {"hash": HASH, "height": 7, "previousblockhash": "11" * 32, "tx": ["22" * 32, "33" * 32]},
        "getblockchaininfo": {"chain": "regtest", "blocks": 7, "bestblockhash": HASH, "pruned": False},
    }
    server, client = serve(lambda m, p, a: ok(answers[m]))
    assert client.get_best_block_hash() == BlockHash.from_hex(HASH)
    assert client.get_block_count() == 7
    block = client.get_block(BlockHash.from_hex(HASH))
    assert block.height == 7 and block.prev_hash == BlockHash.from_hex("11" * 32)
    assert [t.hex() for t in block.txids] == ["22" * 32, "33" * 32]
    info = client.get_blockchain_info()
    assert info.chain == "regtest" and not info.pruned and info.prune_height == 0
    assert server.calls[0] == ("getbestblockhash", "u:p")


def test_rpc_errors_are_typed(serve: Serve) -> None:
    def answer(method: str, params: list[Any], auth: str) -> Answer:
        if method == "getblock":
            return err(-5, "Block not found")
        if method == "getrawtransaction":
            return err(-5, "No such mempool transaction.")
        return err(-28, "Loading block index…")

    _, client = serve(answer)
    with pytest.raises(RPCError) as e:
        client.get_block(BlockHash.from_hex(HASH))
    assert e.value.code == -5 and e.value.message == "Block not found"
    with pytest.raises(BitcoindWarmingUp):
        client.get_best_block_hash()
    from common.types import Txid

    assert client.get_raw_transaction(Txid.from_hex(HASH)) is None


def test_401_says_check_credentials(serve: Serve) -> None:
    _, client = serve(lambda m, p, a: (401, b""))
    with pytest.raises(BitcoindUnreachable, match="check rpcuser/rpcpassword"):
        client.get_block_count()


def test_http_error_without_json_is_unreachable(serve: Serve) -> None:
    _, client = serve(lambda m, p, a: (503, b"<html>busy</html>"))
    with pytest.raises(BitcoindUnreachable, match="HTTP 503"):
        client.get_block_count()


def test_connection_refused_is_unreachable() -> None:
    client = BitcoindClient(BitcoindConfig("127.0.0.1", free_port(), "u", "p", timeout=1))
    with pytest.raises(BitcoindUnreachable):
        client.call("getblockcount")


def test_cookie_is_read_again_after_a_reconnect(serve: Serve, tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:first")
    server, _ = serve(lambda m, p, a: ok(1) if a == "__cookie__:second" or m == "one" else (401, b""))
    client = BitcoindClient(BitcoindConfig("127.0.0.1", server.port, cookie_file=cookie, timeout=2))
    assert client.call("one") == 1
    cookie.write_text("__cookie__:second")  # bitcoind restarted
    client.close()  # what a dropped connection does
    assert client.call("two") == 1
    assert [a for _, a in server.calls] == ["__cookie__:first", "__cookie__:second"]


def test_one_connection_per_thread(serve: Serve) -> None:
    _, client = serve(lambda m, p, a: ok(p[0]))
    results: list[int] = []

    def work(i: int) -> None:
        for _ in range(20):
            results.append(client.call("echo", i))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([i for i in range(4) for _ in range(20)])


def test_retry_backs_off_then_succeeds() -> None:
    attempts: list[int] = []
    delays: list[float] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise BitcoindUnreachable("down")
        return "ok"

    stop = threading.Event()
    result = retry_call(flaky, stop, RetryPolicy(0.001, 0.004), on_error=lambda e, d: delays.append(d))
    assert result == "ok" and delays == [0.001, 0.002, 0.004]


def test_retry_gives_up_after_max_wait_and_is_cancellable() -> None:
    def down() -> None:
        raise BitcoindWarmingUp(-28, "Verifying blocks…")

    with pytest.raises(BitcoindWarmingUp):
        retry_call(down, threading.Event(), RetryPolicy(0.001, 0.002, max_wait=0.01))
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        retry_call(down, stop, RetryPolicy(0.001, 0.002))


def test_non_transient_errors_are_not_retried() -> None:
    calls: list[int] = []

    def bad() -> None:
        calls.append(1)
        raise RPCError(-5, "Block not found")

    with pytest.raises(RPCError):
        retry_call(bad, threading.Event(), RetryPolicy(0.001, 0.002))
    assert len(calls) == 1


# -- answers that parse but do not answer the question --------------------------------------------------


OTHER = "22" * 32
BLOCK = {"hash": HASH, "height": 7, "previousblockhash": "11" * 32, "tx": ["33" * 32]}


@pytest.mark.parametrize(
    "method,answer,problem",
    [
        ("getblock", {**BLOCK, "hash": OTHER}, "another block"),
        ("getblock", {k: v for k, v in BLOCK.items() if k != "previousblockhash"}, "no previousblockhash"),
        ("getblock", {**BLOCK, "tx": []}, "tx is not a list"),
        ("getblock", {**BLOCK, "height": True}, "height is not an integer"),
        ("getblock", {**BLOCK, "height": 2**31}, "height is not an integer"),
        ("getblockheader", {**BLOCK, "confirmations": -2}, "confirmations is not an integer"),
        ("getblockheader", {**BLOCK, "confirmations": 1.5}, "confirmations is not an integer"),
        (
            "getblockchaininfo",
            {"chain": "nonet", "blocks": 1, "bestblockhash": HASH, "pruned": False},
            "chain",
        ),
        (
            "getblockchaininfo",
            {"chain": "main", "blocks": 1, "bestblockhash": HASH, "pruned": True},
            "no pruneheight",
        ),
        (
            "getblockchaininfo",
            {"chain": "main", "blocks": 1, "bestblockhash": HASH, "pruned": "no"},
            "pruned",
        ),
        ("getrawtransaction", {"txid": OTHER, "confirmations": 1}, "another transaction"),
        ("getblockcount", "7", "not an integer"),
        ("getbestblockhash", HASH.upper()[:-1] + "G", "not 64 hex digits"),
    ],
)
def test_answers_that_are_not_answers_are_unreadable(
    serve: Serve, method: str, answer: Any, problem: str
) -> None:
    _, client = serve(lambda m, p, a: ok(answer))
    calls: dict[str, Callable[[], Any]] = {
        "getblock": lambda: client.get_block(BlockHash.from_hex(HASH)),
        "getblockheader": lambda: client.get_block_header(BlockHash.from_hex(HASH)),
        "getblockchaininfo": client.get_blockchain_info,
        "getrawtransaction": lambda: client.get_raw_transaction(Txid.from_hex("33" * 32)),
        "getblockcount": client.get_block_count,
        "getbestblockhash": client.get_best_block_hash,
    }
    with pytest.raises(BitcoindUnreadable) as e:
        calls[method]()
    assert e.value.method == method and problem in e.value.problem
    assert isinstance(e.value, TRANSIENT_ERRORS) and str(e.value).startswith(
        f"bitcoind answered something unreadable to {method}: "
    )


@pytest.mark.parametrize(
    "status,body,problem",
    [
        (500, b'{"result": null, "error": {"code": "x", "message": 5}, "id": 1}', "malformed error"),
        (200, b'{"error": null, "id": 1}', "no result"),
        (502, b'{"result": 1, "error": null, "id": 1}', "HTTP 502 without an error"),
        (200, b"[1, 2]", "not an object"),
        (503, b"Work queue depth exceeded", "not JSON"),
    ],
)
def test_bodies_that_are_not_json_rpc_answers_are_unreadable(
    serve: Serve, status: int, body: bytes, problem: str
) -> None:
    _, client = serve(lambda m, p, a: (status, body))
    with pytest.raises(BitcoindUnreadable) as e:
        client.call("getblockcount")
    assert problem in e.value.problem and e.value.excerpt == " ".join(body.decode().split())


def test_excerpt_is_one_short_printable_line() -> None:
    text = excerpt(b"<html>\r\n<body>\x00" + b"x" * 500)
    assert "\n" not in text and len(text) <= 120 and text.endswith("...")
    assert excerpt({"a": [1, 2]}) == '{"a":[1,2]}'


def test_carrier_takes_another_txid_for_no_answer() -> None:
    class Lying:
        def send_raw_transaction(self, raw_tx: bytes) -> Txid:
            return Txid.from_hex(OTHER)

        def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
            return None

    result = Carrier(Lying()).send(b"\x00", Txid.from_hex("33" * 32))
    assert result.status is BroadcastStatus.UNREACHABLE and "unreadable" in result.message
