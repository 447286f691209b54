"""The simulator's HTTP JSON-RPC edge: Core's reply shapes and statuses, and hostile input never kills it."""

from __future__ import annotations

import json
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teos.regtest.simulator import Simulator
from tests.regtest.conftest import Client, http_request


def test_legacy_success_and_error_shapes(sim: Simulator) -> None:
    ok = http_request(sim.rpc_port, json.dumps({"jsonrpc": "1.0", "id": 7, "method": "getblockcount"}))
    assert ok.status == 200 and ok.headers["content-type"] == "application/json"
    assert ok.json() == {"result": 0, "error": None, "id": 7}
    assert ok.body.endswith(b"\n")

    missing = http_request(sim.rpc_port, json.dumps({"id": 1, "method": "nosuch", "params": []}))
    assert missing.status == 404
    assert missing.json() == {
        "result": None,
        "error": {"code": -32601, "message": "Method not found"},
        "id": 1,
    }

    failing = http_request(sim.rpc_port, json.dumps({"id": "x", "method": "getblockhash", "params": [5]}))
    assert failing.status == 500
    assert failing.json()["error"] == {"code": -8, "message": "Block height out of range"}

    invalid = http_request(sim.rpc_port, json.dumps({"id": 1, "method": 5}))
    assert invalid.status == 400 and invalid.json()["error"]["code"] == -32600


def test_jsonrpc2_shapes_and_notifications(sim: Simulator) -> None:
    ok = http_request(sim.rpc_port, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "getblockcount"}))
    assert ok.status == 200 and ok.json() == {"jsonrpc": "2.0", "result": 0, "id": 1}
    err = http_request(sim.rpc_port, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "nosuch"}))
    assert err.status == 200
    assert err.json() == {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 2}
    note = http_request(sim.rpc_port, json.dumps({"jsonrpc": "2.0", "method": "getblockcount"}))
    assert note.status == 204 and note.body == b""


def test_batch(sim: Simulator) -> None:
    batch = [
        {"id": 1, "method": "getblockcount"},
        {"id": 2, "method": "nosuch"},
        "not an object",
        {"jsonrpc": "2.0", "method": "getblockcount"},  # notification: no reply
    ]
    reply = http_request(sim.rpc_port, json.dumps(batch))
    assert reply.status == 200
    items = reply.json()
    assert [i.get("id") for i in items] == [1, 2, None]
    assert items[0]["result"] == 0
    assert items[1]["error"]["code"] == -32601
    assert items[2]["error"] == {"code": -32600, "message": "Invalid Request object"}


def test_auth_and_methods(sim: Simulator) -> None:
    for auth in (None, ("alice", "wrong"), ("bob", "secret")):
        reply = http_request(sim.rpc_port, json.dumps({"id": 1, "method": "getblockcount"}), auth=auth)
        assert reply.status == 401 and reply.body == b""
        assert reply.headers["www-authenticate"] == 'Basic realm="jsonrpc"'
    garbage = http_request(sim.rpc_port, "{}", auth=None, headers={"Authorization": "Basic !!!not-base64"})
    assert garbage.status == 401
    get = http_request(sim.rpc_port, method="GET")
    assert get.status == 405 and get.body == b"JSONRPC server handles only POST requests"
    assert http_request(sim.rpc_port, "{}", path="/rest/chaininfo.json").status == 404
    wallet_path = http_request(
        sim.rpc_port, json.dumps({"id": 1, "method": "getblockcount"}), path="/wallet/w"
    )
    assert wallet_path.status == 200


def test_parse_errors(sim: Simulator) -> None:
    for body in (b"{", b"\xff\xfe", b"", b"[1,", b"nul"):
        reply = http_request(sim.rpc_port, body)
        assert reply.status == 500
        assert reply.json() == {
            "result": None,
            "error": {"code": -32700, "message": "Parse error"},
            "id": None,
        }
    scalar = http_request(sim.rpc_port, b"42")
    assert scalar.status == 500 and scalar.json()["error"]["code"] == -32700


def test_parameter_errors(rpc: Client, sim: Simulator) -> None:
    def err(body: dict[str, object]) -> dict[str, object]:
        return http_request(sim.rpc_port, json.dumps({"id": 1, **body})).json()["error"]

    assert err({"method": "getblockhash", "params": ["x"]})["code"] == -3
    assert err({"method": "getblockhash", "params": []})["code"] == -1
    assert err({"method": "getblockcount", "params": [1, 2]})["code"] == -1
    assert err({"method": "getblock", "params": ["abc"]}) == {
        "code": -8,
        "message": "blockhash must be of length 64 (not 3, for 'abc')",
    }
    assert err({"method": "getblockhash", "params": {"nope": 1}})["code"] == -8
    assert err({"method": "getblockcount", "params": "str"})["code"] == -32600
    named = http_request(
        sim.rpc_port, json.dumps({"id": 1, "method": "getblockhash", "params": {"height": 0}})
    )
    assert named.json()["result"] == rpc("getbestblockhash")


def test_oversized_and_broken_requests_do_not_kill_the_server(sim: Simulator, rpc: Client) -> None:
    huge = http_request(sim.rpc_port, b"", headers={"Content-Length": str(2**40)})
    assert huge.status == 413
    with socket.create_connection(("127.0.0.1", sim.rpc_port), timeout=5) as s:
        s.sendall(b"\x00\x01\x02garbage\r\n\r\n")
        s.recv(1024)
    with socket.create_connection(("127.0.0.1", sim.rpc_port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # then hang up mid-body
    deep = "[" * 100_000 + "]" * 100_000
    assert http_request(sim.rpc_port, deep).status in (200, 500)
    assert rpc("getblockcount") == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    ),
    st.sampled_from(
        [
            "getblock",
            "getblockhash",
            "sendrawtransaction",
            "getrawtransaction",
            "generatetoaddress",
            "getblockheader",
            "decoderawtransaction",
            "testmempoolaccept",
            "invalidateblock",
        ]
    ),
)
def test_arbitrary_params_answer_with_rpc_errors(sim: Simulator, params: object, method: str) -> None:
    body = json.dumps({"id": 1, "method": method, "params": params})
    reply = http_request(sim.rpc_port, body)
    assert reply.status in (200, 400, 404, 500)
    payload = reply.json()
    if payload["error"] is not None:
        assert payload["error"]["code"] != -32603, payload  # never an internal error
