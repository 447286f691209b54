"""The fault renderer (``teos.regtest.faults``) and the tests' faulting JSON-RPC proxy in front of a real
node: each kind gives the bytes it promises, faults are delivered N times in order, and everything else
passes through unchanged."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from typing import Any

import pytest

from teos.regtest import faults
from tests.support.bitcoind import BitcoindHandle, RPCError
from tests.support.rpcproxy import RpcProxy
from tests.support.wait import wait_until

TXID = "ab" * 32
BLOCK = {
    "hash": "11" * 32,
    "height": 7,
    "previousblockhash": "22" * 32,
    "tx": ["33" * 32, "44" * 32],
    "bits": "207fffff",
}


def ok(result: Any) -> dict[str, Any]:
    return {"result": result, "error": None, "id": 1}


def parsed(reply: faults.FaultReply) -> Any:
    return json.loads(reply.sent_body)


# -- rendering -------------------------------------------------------------------------------------


def test_every_kind_is_known_and_unknown_ones_are_refused() -> None:
    assert len(set(faults.KINDS)) == len(faults.KINDS) == 9
    with pytest.raises(faults.UnknownFault, match="one of: wrong_type"):
        faults.render("nonsense", "getblock", ok(BLOCK))


def test_wrong_type_changes_the_type_of_the_whole_result() -> None:
    assert parsed(faults.render("wrong_type", "sendrawtransaction", ok(TXID)))["result"] == 64
    assert parsed(faults.render("wrong_type", "getblockcount", ok(7)))["result"] == "7"
    assert parsed(faults.render("wrong_type", "getblock", ok(BLOCK)))["result"] == [BLOCK]
    assert isinstance(parsed(faults.render("wrong_type", "getrawmempool", ok([TXID])))["result"], dict)


def test_wrong_field_type_changes_the_fields_the_tower_reads() -> None:
    result = parsed(faults.render("wrong_field_type", "getblock", ok(BLOCK)))["result"]
    assert result["hash"] == 64 and result["height"] == "7" and result["previousblockhash"] == 64
    assert result["tx"] == {"0": "33" * 32, "1": "44" * 32}
    assert result["bits"] == "207fffff"  # not read by the tower: left alone


def test_missing_field_drops_the_read_fields_or_the_result_member() -> None:
    result = parsed(faults.render("missing_field", "getblock", ok(BLOCK)))["result"]
    assert result == {"bits": "207fffff"}
    reply = parsed(faults.render("missing_field", "getbestblockhash", ok(TXID)))
    assert "result" not in reply and reply["id"] == 1


def test_bad_value_gives_out_of_range_values_of_the_same_type_in_turn() -> None:
    short = parsed(faults.render("bad_value", "sendrawtransaction", ok(TXID)))["result"]
    assert short == TXID[:-1]
    text = parsed(faults.render("bad_value", "getblock", ok(BLOCK), n=0))["result"]
    assert text["hash"] == "11" * 31 + "1" and text["height"] == 7 and all(len(t) == 63 for t in text["tx"])
    high = parsed(faults.render("bad_value", "getblock", ok(BLOCK), n=1))["result"]
    assert high["height"] > 2**32 and high["hash"] == BLOCK["hash"] and high["tx"] == BLOCK["tx"]
    low = parsed(faults.render("bad_value", "getblockheader", ok({"confirmations": 3}), n=2))["result"]
    assert low["confirmations"] < -(2**32)
    # Text only or numbers only: the fault still bites, whatever its turn.
    assert parsed(faults.render("bad_value", "getbestblockhash", ok(TXID), n=1))["result"] == TXID[:-1]
    assert parsed(faults.render("bad_value", "getblockcount", ok(7), n=0))["result"] > 2**32
    chain = parsed(faults.render("bad_value", "getblockchaininfo", ok({"chain": "regtest"})))["result"]
    assert chain["chain"].startswith("zz")


def test_cut_body_is_a_complete_message_that_does_not_parse() -> None:
    reply = faults.render("cut_body", "getblock", ok(BLOCK))
    assert dict(reply.headers)["Content-Length"] == str(len(reply.sent_body)) and not reply.close
    with pytest.raises(ValueError):
        json.loads(reply.sent_body)


def test_cut_stream_announces_more_than_it_sends_and_closes() -> None:
    reply = faults.render("cut_stream", "getblock", ok(BLOCK))
    assert int(dict(reply.headers)["Content-Length"]) == len(reply.body) > len(reply.sent_body)
    assert reply.close


def test_error_pages_and_hang() -> None:
    html = faults.render("html_500", "getblock")
    assert html.status == 500 and dict(html.headers)["Content-Type"] == "text/html"
    busy = faults.render("busy_503", "sendrawtransaction")
    assert (busy.status, busy.sent_body) == (503, b"Work queue depth exceeded")
    assert dict(busy.headers)["Content-Type"] == "text/plain"
    hang = faults.render("hang", "getblock", seconds=1.5)
    assert hang.hold == 1.5 and not hang.answer


def test_rewriting_kinds_apply_only_to_successful_answers() -> None:
    error = {"result": None, "error": {"code": -8, "message": "Block height out of range"}, "id": 1}
    for kind in faults.TRANSFORMS:
        assert not faults.applies(kind, error) and faults.applies(kind, ok(TXID))
        with pytest.raises(ValueError):
            faults.render(kind, "getblockhash", error)
    assert faults.applies("html_500", error) and faults.applies("hang", None)


def test_fault_queue_delivers_in_order_each_count_times() -> None:
    queue = faults.FaultQueue()
    queue.add("getblock", "busy_503", count=2)
    queue.add("getblock", "wrong_type")
    queue.add("getblock", "hang", seconds=0.5)
    assert queue.pending() == 4 and queue.snapshot() == {
        "getblock": [("busy_503", 2), ("wrong_type", 1), ("hang", 1)]
    }
    assert queue.take_before("getbestblockhash") is None
    assert queue.take_after("getblock", ok(BLOCK)) is None  # an error page is next: it answers before
    assert queue.take_before("getblock") == faults.Taken("busy_503", 0, faults.DEFAULT_HANG_SECONDS)
    assert queue.take_before("getblock") == faults.Taken("busy_503", 1, faults.DEFAULT_HANG_SECONDS)
    assert queue.take_before("getblock") is None  # a rewrite is next: it needs the answer
    error = {"result": None, "error": {"code": -5, "message": "Block not found"}, "id": 1}
    assert queue.take_after("getblock", error) is None  # errors pass, the fault waits
    taken = queue.take_after("getblock", ok(BLOCK))
    assert taken is not None and (taken.kind, taken.n) == ("wrong_type", 0)
    assert queue.take_before("getblock") == faults.Taken("hang", 0, 0.5)
    assert queue.pending() == 0 and queue.delivered("getblock") == 4 and queue.delivered(kind="busy_503") == 2
    queue.add("getblock", "html_500", count=5)
    queue.clear("getblock")
    assert queue.pending() == 0 and queue.snapshot() == {}
    with pytest.raises(ValueError):
        queue.add("getblock", "html_500", count=0)
    with pytest.raises(faults.UnknownFault):
        queue.add("getblock", "teapot")


# -- the proxy in front of a node ---------------------------------------------------------------------


def raw_call(port: int, node: BitcoindHandle, method: str, *params: Any) -> tuple[int, bytes]:
    """One JSON-RPC call through the proxy: (HTTP status, body)."""
    auth = base64.b64encode(f"{node.rpc_user}:{node.rpc_password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"jsonrpc": "1.0", "id": "t", "method": method, "params": list(params)})
        headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
        conn.request("POST", "/", body, headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def result(port: int, node: BitcoindHandle, method: str, *params: Any) -> Any:
    return json.loads(raw_call(port, node, method, *params)[1])["result"]


@pytest.fixture
def proxy(bitcoind: BitcoindHandle) -> Any:
    with RpcProxy(bitcoind.rpc_host, bitcoind.rpc_port) as p:
        yield p


def test_proxy_forwards_and_delivers_faults_in_order_n_times(
    bitcoind: BitcoindHandle, proxy: RpcProxy
) -> None:
    height = bitcoind.rpc("getblockcount")
    assert result(proxy.port, bitcoind, "getblockcount") == height
    proxy.inject("getblockcount", "busy_503", count=2)
    proxy.inject("getblockcount", "wrong_type", count=1)
    assert proxy.pending("getblockcount") == 3
    for _ in range(2):
        assert raw_call(proxy.port, bitcoind, "getblockcount") == (503, b"Work queue depth exceeded")
    assert result(proxy.port, bitcoind, "getblockcount") == str(height)
    assert result(proxy.port, bitcoind, "getblockcount") == height
    assert proxy.pending() == 0 and proxy.delivered("getblockcount") == 3
    assert proxy.delivered("getblockcount", "busy_503") == 2 and proxy.calls("getblockcount") == 5


def test_proxy_passes_errors_on_without_spending_a_rewriting_fault(
    bitcoind: BitcoindHandle, proxy: RpcProxy
) -> None:
    proxy.inject("getblockhash", "wrong_type")
    status, body = raw_call(proxy.port, bitcoind, "getblockhash", 10_000)
    assert status == 500 and json.loads(body)["error"]["code"] == -8
    assert proxy.pending("getblockhash") == 1
    assert result(proxy.port, bitcoind, "getblockhash", 0) == 64 and proxy.pending() == 0


def test_proxy_cut_stream_and_hang_close_the_connection(simulator: BitcoindHandle) -> None:
    with RpcProxy(simulator.rpc_host, simulator.rpc_port) as proxy:
        proxy.inject("getblock", "cut_stream")
        best = simulator.rpc("getbestblockhash")
        with pytest.raises(http.client.IncompleteRead):
            raw_call(proxy.port, simulator, "getblock", best)
        proxy.inject("getbestblockhash", "hang", seconds=0.5)
        started = time.monotonic()
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            raw_call(proxy.port, simulator, "getbestblockhash")
        assert time.monotonic() - started >= 0.5
        assert result(proxy.port, simulator, "getbestblockhash") == best


def test_proxy_stop_releases_a_hanging_request(simulator: BitcoindHandle) -> None:
    proxy = RpcProxy(simulator.rpc_host, simulator.rpc_port).start()
    proxy.inject("getblockcount", "hang", seconds=60)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    body = b'{"method":"getblockcount","params":[],"id":1}'
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_until(lambda: proxy.calls("getblockcount") == 1, 10)
    started = time.monotonic()
    proxy.stop()
    assert sock.recv(100) == b"" and time.monotonic() - started < 15
    sock.close()


# -- the simulator's knob ------------------------------------------------------------------------------


def direct(node: BitcoindHandle, method: str, *params: Any) -> tuple[int, bytes]:
    return raw_call(node.rpc_port, node, method, *params)


def test_simulator_knob_breaks_answers_like_the_proxy(simulator: BitcoindHandle) -> None:
    height = simulator.rpc("getblockcount")
    best = simulator.rpc("getbestblockhash")
    simulator.rpc("sim_garble", "getblockcount", "busy_503", 2)
    simulator.rpc("sim_garble", "getblockcount", "wrong_type")
    simulator.rpc("sim_garble", "getbestblockhash", "bad_value")
    status = simulator.rpc("sim_status")
    assert status["garble"]["getblockcount"] == [
        {"kind": "busy_503", "remaining": 2},
        {"kind": "wrong_type", "remaining": 1},
    ]
    assert direct(simulator, "getblockcount") == (503, b"Work queue depth exceeded")
    assert direct(simulator, "getblockcount") == (503, b"Work queue depth exceeded")
    assert json.loads(direct(simulator, "getblockcount")[1])["result"] == str(height)
    assert simulator.rpc("getblockcount") == height
    assert simulator.rpc("getbestblockhash") == best[:-1]
    assert simulator.rpc("sim_status")["garbled"] == {"getblockcount": 3, "getbestblockhash": 1}
    # errors are not rewritten, and the fault waits for a successful answer
    simulator.rpc("sim_garble", "getblockhash", "missing_field")
    _status, body = direct(simulator, "getblockhash", 10_000)
    assert json.loads(body)["error"]["code"] == -8
    assert "result" not in json.loads(direct(simulator, "getblockhash", 0)[1])


def test_simulator_knob_hang_cut_and_clear(simulator: BitcoindHandle) -> None:
    simulator.rpc("sim_garble", "getblockcount", "hang", 1, 0.3)
    simulator.rpc("sim_garble", "getblockcount", "cut_stream")
    started = time.monotonic()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        direct(simulator, "getblockcount")
    assert time.monotonic() - started >= 0.3
    with pytest.raises(http.client.IncompleteRead):
        direct(simulator, "getblockcount")
    simulator.rpc("sim_garble", "getblock", "html_500", 5)
    simulator.rpc("sim_garble", "getblock")
    assert simulator.rpc("sim_status")["garble"] == {}
    simulator.rpc("sim_garble", "getblock", "html_500", 5)
    simulator.rpc("sim_garble", "getblockcount", "html_500", 5)
    simulator.rpc("sim_garble")
    assert simulator.rpc("sim_status")["garble"] == {}
    assert isinstance(simulator.rpc("getblock", simulator.rpc("getbestblockhash")), dict)


def test_simulator_knob_refuses_unknown_kinds_and_counts(simulator: BitcoindHandle) -> None:
    for args in (("getblock", "teapot"), ("getblock", "hang", 0), ("getblock", "hang", "x")):
        with pytest.raises(RPCError) as e:
            simulator.rpc("sim_garble", *args)
        assert e.value.code == -8
    assert simulator.rpc("sim_status")["garble"] == {}


def test_simulator_garble_flag_at_start(bitcoind_factory: Any) -> None:
    flags = ("--garble", "getbestblockhash:html_500:2", "--garble", "getblock:hang")
    node = bitcoind_factory(extra_args=flags)
    assert node.rpc("sim_status")["garble"]["getbestblockhash"] == [{"kind": "html_500", "remaining": 2}]
    assert direct(node, "getbestblockhash")[0] == 500
    assert direct(node, "getbestblockhash")[0] == 500
    assert len(node.rpc("getbestblockhash")) == 64
