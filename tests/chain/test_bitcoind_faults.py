"""The bitcoind client treats every answer as untrusted input, over the real wire.

The tests' faulting proxy sits between ``BitcoindClient`` and a real node (the simulator, and Bitcoin Core
when one is installed) and breaks the answers to each RPC the tower makes, in each way the fault module
knows (wrong types, missing fields, out-of-range values, cut bodies, an HTML 500, Core's text/plain 503, a
hang). Every one must surface as a transient-class error of the client that names the method (the engine
retries those), never as a ValueError, TypeError, KeyError or AttributeError from deep inside a parser,
and never as a value: a garbled answer must not be taken for a block, a txid or a height. Unparsable
bodies, error pages and wrong shapes say "unreadable" with a short excerpt of what came back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.types import BlockHash
from teos.chain.bitcoind import TRANSIENT_ERRORS, BitcoindClient, BitcoindConfig
from teos.regtest import faults
from tests.support.bitcoind import BitcoindHandle
from tests.support.rpcproxy import RpcProxy

pytestmark = pytest.mark.e2e

CLIENT_TIMEOUT = 1.0
HANG = 2.0  # longer than the client's timeout: a true hang, not a dropped connection
# Kinds where no part of an answer arrives: the client reports bitcoind unreachable, not unreadable.
NO_ANSWER = {faults.HANG, faults.CUT_STREAM}
EXCERPTS = {faults.HTML_500: "500 Internal Server Error", faults.BUSY_503: "Work queue depth exceeded"}


@pytest.fixture
def setup(bitcoind: BitcoindHandle) -> Iterator[tuple[BitcoindHandle, RpcProxy, BitcoindClient, Any]]:
    wallet = bitcoind.wallet()
    wallet.fund(2)
    pending = wallet.breach_pair().commitment
    wallet.send(pending)  # in the mempool: sendrawtransaction and getrawtransaction of it succeed again
    with RpcProxy(bitcoind.rpc_host, bitcoind.rpc_port) as proxy:
        client = BitcoindClient(
            BitcoindConfig(
                "127.0.0.1", proxy.port, bitcoind.rpc_user, bitcoind.rpc_password, timeout=CLIENT_TIMEOUT
            )
        )
        try:
            yield bitcoind, proxy, client, pending
        finally:
            client.close()


def calls(node: BitcoindHandle, client: BitcoindClient, pending: Any) -> dict[str, Callable[[], Any]]:
    """Each RPC the tower makes, as the tower makes it, with arguments bitcoind answers successfully."""
    best = BlockHash.from_hex(node.rpc("getbestblockhash"))
    height = int(node.rpc("getblockcount"))
    return {
        "getbestblockhash": client.get_best_block_hash,
        "getblockcount": client.get_block_count,
        "getblockhash": lambda: client.get_block_hash(height),
        "getblock": lambda: client.get_block(best),
        "getblockheader": lambda: client.get_block_header(best),
        "getblockchaininfo": client.get_blockchain_info,
        "sendrawtransaction": lambda: client.send_raw_transaction(pending.raw),
        "getrawtransaction": lambda: client.get_raw_transaction(pending.txid),
    }


@pytest.mark.parametrize(
    "method",
    [
        "getbestblockhash",
        "getblockcount",
        "getblockhash",
        "getblock",
        "getblockheader",
        "getblockchaininfo",
        "sendrawtransaction",
        "getrawtransaction",
    ],
)
def test_every_malformed_answer_is_a_transient_error_naming_the_method(
    setup: tuple[BitcoindHandle, RpcProxy, BitcoindClient, Any], method: str
) -> None:
    node, proxy, client, pending = setup
    call = calls(node, client, pending)[method]
    expected = call()  # what the honest answer gives
    problems = []
    for kind in faults.KINDS:
        # Twice: the client re-opens a dropped connection once before giving up.
        proxy.inject(method, kind, count=2, seconds=HANG)
        try:
            value = call()
        except TRANSIENT_ERRORS as e:
            text = str(e)
            if method not in text:
                problems.append(f"{kind}: the error does not name {method}: {text!r}")
            if kind not in NO_ANSWER and "unreadable" not in text:
                problems.append(f"{kind}: the error does not say the answer was unreadable: {text!r}")
            if kind in EXCERPTS and EXCERPTS[kind] not in text:
                problems.append(f"{kind}: no excerpt of the answer in the error: {text!r}")
            if len(text) > 400:
                problems.append(f"{kind}: the error is not short ({len(text)} characters)")
        except Exception as e:  # every kind is reported, not just the first
            problems.append(f"{kind}: {type(e).__name__} escaped the client: {e}")
        else:
            problems.append(f"{kind}: the garbled answer was taken for a value: {value!r}")
        proxy.clear()
        assert call() == expected, f"after {kind}, an honest answer is read again"
    assert not problems, "\n".join(problems)
