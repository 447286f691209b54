"""Assertions that hold for the simulator AND real Bitcoin Core (regtest, no txindex).

Every test runs on the ``bitcoind`` fixture (both kinds; the bitcoin-core one is skipped without a
binary), uses only Core's own RPCs, and checks the codes, messages and shapes the tower depends on
(observed on a real Bitcoin Core v31 regtest node). If one of these fails against real Core, the
simulator is what is wrong.
"""

from __future__ import annotations

import pytest

from common.tx import TxOut, decode_block, decode_header, decode_transaction
from common.types import Txid
from teos.regtest.wallet import Coin
from tests.support import RPCError, ZmqSubscriber, wait_until
from tests.support.bitcoind import BURN_ADDRESS, BitcoindHandle

pytestmark = pytest.mark.e2e

GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
NO_SUCH_MEMPOOL_TX = (
    "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction "
    "queries. Use gettransaction for wallet transactions."
)
SEND_DECODE_FAILED = "TX decode failed. Make sure the tx has at least one input."


def rpc_error(handle: BitcoindHandle, method: str, *params: object) -> RPCError:
    with pytest.raises(RPCError) as info:
        handle.rpc(method, *params)
    return info.value


def test_chain_info_shape(bitcoind: BitcoindHandle) -> None:
    info = bitcoind.rpc("getblockchaininfo")
    for key in (
        "bestblockhash",
        "blocks",
        "chain",
        "chainwork",
        "difficulty",
        "headers",
        "initialblockdownload",
        "mediantime",
        "pruned",
        "size_on_disk",
        "time",
        "verificationprogress",
        "warnings",
    ):
        assert key in info, key
    assert info["chain"] == "regtest"
    assert info["blocks"] == 0 and info["headers"] == 0
    assert info["bestblockhash"] == GENESIS
    assert info["pruned"] is False and "pruneheight" not in info
    assert bitcoind.rpc("getblockcount") == 0
    assert bitcoind.rpc("getbestblockhash") == GENESIS
    assert bitcoind.rpc("getblockhash", 0) == GENESIS
    err = rpc_error(bitcoind, "getblockhash", 1)
    assert (err.code, err.message) == (-8, "Block height out of range")
    network = bitcoind.rpc("getnetworkinfo")
    assert isinstance(network["version"], int) and network["subversion"].startswith("/Satoshi:")
    bitcoind.mine(1)
    assert bitcoind.rpc("getblockchaininfo")["initialblockdownload"] is False


def test_unknown_method_and_invalid_address(bitcoind: BitcoindHandle) -> None:
    err = rpc_error(bitcoind, "nosuchmethod")
    assert (err.code, err.message) == (-32601, "Method not found")
    err = rpc_error(bitcoind, "generatetoaddress", 1, "not-an-address")
    assert (err.code, err.message) == (-5, "Error: Invalid address")


def test_mined_blocks_have_coinbase_header_and_links(bitcoind: BitcoindHandle) -> None:
    hashes = bitcoind.mine(3)
    assert len(hashes) == 3 and len(set(hashes)) == 3
    assert bitcoind.rpc("getblockcount") == 3
    assert bitcoind.rpc("getbestblockhash") == hashes[-1]
    assert [bitcoind.rpc("getblockhash", h) for h in (1, 2, 3)] == hashes

    header = bitcoind.rpc("getblockheader", hashes[1])
    assert header["height"] == 2 and header["confirmations"] == 2
    assert header["previousblockhash"] == hashes[0] and header["nextblockhash"] == hashes[2]
    assert "nextblockhash" not in bitcoind.rpc("getblockheader", hashes[2])
    raw_header = bytes.fromhex(bitcoind.rpc("getblockheader", hashes[1], False))
    assert decode_header(raw_header).hash.hex() == hashes[1]

    block = decode_block(bytes.fromhex(bitcoind.rpc("getblock", hashes[1], 0)))
    assert block.hash.hex() == hashes[1]
    assert block.computed_merkle_root() == block.header.merkle_root
    coinbase = block.transactions[0]
    assert coinbase.is_coinbase
    assert coinbase.inputs[0].script_sig[:1] == b"\x52"  # BIP34: height 2 as OP_2
    assert coinbase.outputs[0].value == 50 * 100_000_000

    verbose = bitcoind.rpc("getblock", hashes[1])
    for key in (
        "bits",
        "chainwork",
        "confirmations",
        "difficulty",
        "hash",
        "height",
        "mediantime",
        "merkleroot",
        "nTx",
        "nonce",
        "previousblockhash",
        "size",
        "strippedsize",
        "time",
        "tx",
        "version",
        "versionHex",
        "weight",
        "nextblockhash",
    ):
        assert key in verbose, key
    assert verbose["tx"] == [coinbase.txid.hex()]
    full = bitcoind.rpc("getblock", hashes[1], 2)
    assert full["tx"][0]["txid"] == coinbase.txid.hex()
    assert decode_transaction(bytes.fromhex(full["tx"][0]["hex"])).txid == coinbase.txid

    missing = "00" * 32
    for method in ("getblock", "getblockheader"):
        err = rpc_error(bitcoind, method, missing)
        assert (err.code, err.message) == (-5, "Block not found")


def test_breach_pair_is_accepted_and_mined(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=4)
    pair = wallet.breach_pair()
    assert bitcoind.rpc("sendrawtransaction", pair.commitment.hex) == pair.commitment.txid.hex()
    assert bitcoind.rpc("sendrawtransaction", pair.penalty.hex) == pair.penalty.txid.hex()
    # the same transaction again is not an error
    assert bitcoind.rpc("sendrawtransaction", pair.penalty.hex) == pair.penalty.txid.hex()
    assert set(bitcoind.rpc("getrawmempool")) == {pair.commitment.txid.hex(), pair.penalty.txid.hex()}
    entry = bitcoind.rpc("getmempoolentry", pair.penalty.txid.hex())
    assert round(entry["fees"]["base"] * 1e8) == pair.penalty.fee
    assert entry["depends"] == [pair.commitment.txid.hex()]
    verbose_pool = bitcoind.rpc("getrawmempool", True)
    assert verbose_pool[pair.commitment.txid.hex()]["spentby"] == [pair.penalty.txid.hex()]

    mempool_view = bitcoind.rpc("getrawtransaction", pair.penalty.txid.hex(), True)
    assert mempool_view["txid"] == pair.penalty.txid.hex() and "confirmations" not in mempool_view
    assert mempool_view["hash"] == pair.penalty.wtxid.hex() != mempool_view["txid"]

    (block_hash,) = bitcoind.mine(1)
    assert bitcoind.rpc("getrawmempool") == []
    block = bitcoind.rpc("getblock", block_hash)
    assert pair.commitment.txid.hex() in block["tx"] and pair.penalty.txid.hex() in block["tx"]
    confirmed = bitcoind.rpc("getrawtransaction", pair.penalty.txid.hex(), True, block_hash)
    assert confirmed["blockhash"] == block_hash and confirmed["confirmations"] == 1
    assert confirmed["in_active_chain"] is True


def test_double_spend_in_mempool_rbf_rules(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    wallet.send(pair.commitment)
    wallet.send(pair.penalty)

    cheaper = wallet.conflicting(pair.penalty, fee=pair.penalty.fee - 10)
    err = rpc_error(bitcoind, "sendrawtransaction", cheaper.hex)
    assert err.code == -26
    assert err.message.startswith(
        f"insufficient fee, rejecting replacement {cheaper.txid.hex()}, less fees than conflicting txs; "
    )
    accepted = bitcoind.rpc("testmempoolaccept", [cheaper.hex])[0]
    assert accepted["allowed"] is False and accepted["reject-reason"] == "insufficient fee"

    richer = wallet.conflicting(pair.penalty, fee=pair.penalty.fee * 3)
    assert wallet.send(richer) == richer.txid.hex()
    assert set(bitcoind.rpc("getrawmempool")) == {pair.commitment.txid.hex(), richer.txid.hex()}
    # the evicted penalty now pays less than what replaced it
    err = rpc_error(bitcoind, "sendrawtransaction", pair.penalty.hex)
    assert err.code == -26 and err.message.startswith("insufficient fee, rejecting replacement")


def test_already_in_chain_codes(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    wallet.send(pair.commitment)
    bitcoind.mine(1)
    # confirmed with its output unspent
    err = rpc_error(bitcoind, "sendrawtransaction", pair.commitment.hex)
    assert (err.code, err.message) == (-27, "Transaction outputs already in utxo set")
    wallet.send(pair.penalty)
    bitcoind.mine(1)
    # confirmed and every output since spent: indistinguishable from a missing input
    err = rpc_error(bitcoind, "sendrawtransaction", pair.commitment.hex)
    assert (err.code, err.message) == (-25, "bad-txns-inputs-missingorspent")
    err = rpc_error(bitcoind, "sendrawtransaction", pair.penalty.hex)
    assert (err.code, err.message) == (-27, "Transaction outputs already in utxo set")
    # a conflicting spend of a confirmed output
    late = wallet.conflicting(pair.penalty, fee=pair.penalty.fee * 2)
    err = rpc_error(bitcoind, "sendrawtransaction", late.hex)
    assert (err.code, err.message) == (-25, "bad-txns-inputs-missingorspent")


def test_missing_inputs_and_decode_failures(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    ghost = Coin(Txid(bytes(range(32))), 0, 100_000, wallet.script_pubkey)
    tx = wallet.build([ghost], [TxOut(90_000, wallet.script_pubkey)])
    err = rpc_error(bitcoind, "sendrawtransaction", tx.hex)
    assert (err.code, err.message) == (-25, "bad-txns-inputs-missingorspent")
    assert bitcoind.rpc("testmempoolaccept", [tx.hex])[0]["reject-reason"] == "missing-inputs"

    for bad in ("", "00", "abc", "zz", "0100000000"):
        err = rpc_error(bitcoind, "sendrawtransaction", bad)
        assert (err.code, err.message) == (-22, SEND_DECODE_FAILED), bad
    err = rpc_error(bitcoind, "decoderawtransaction", "deadbeef")
    assert (err.code, err.message) == (-22, "TX decode failed")

    decoded = bitcoind.rpc("decoderawtransaction", tx.hex)
    assert decoded["txid"] == tx.txid.hex() and decoded["hash"] == tx.wtxid.hex()
    assert decoded["txid"] != decoded["hash"]
    assert decoded["vin"][0]["txinwitness"] == [w.hex() for w in tx.tx.inputs[0].witness]
    assert decoded["vout"][0]["scriptPubKey"]["address"] == wallet.address()
    assert decoded["vout"][0]["scriptPubKey"]["type"] == "witness_v0_keyhash"


def test_immature_coinbase_spend_rejected(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    (block_hash,) = bitcoind.mine(1, wallet.address())
    coinbase = decode_transaction(bytes.fromhex(bitcoind.rpc("getblock", block_hash, 2)["tx"][0]["hex"]))
    coin = Coin(coinbase.txid, 0, coinbase.outputs[0].value, coinbase.outputs[0].script_pubkey)
    spend = wallet.build([coin], [TxOut(coin.value, wallet.script_pubkey)])
    err = rpc_error(bitcoind, "sendrawtransaction", spend.hex)
    assert err.code == -26 and err.message.startswith("bad-txns-premature-spend-of-coinbase")


def test_getrawtransaction_not_found_cases(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=2)
    err = rpc_error(bitcoind, "getrawtransaction", "11" * 32)
    assert (err.code, err.message) == (-5, NO_SUCH_MEMPOOL_TX)
    pair = wallet.breach_pair()
    wallet.send(pair.commitment)
    assert bitcoind.rpc("getrawtransaction", pair.commitment.txid.hex()) == pair.commitment.hex
    (block_hash,) = bitcoind.mine(1)
    # confirmed, no txindex, no block hash given
    err = rpc_error(bitcoind, "getrawtransaction", pair.commitment.txid.hex())
    assert (err.code, err.message) == (-5, NO_SUCH_MEMPOOL_TX)
    assert (
        bitcoind.rpc("getrawtransaction", pair.commitment.txid.hex(), False, block_hash)
        == pair.commitment.hex
    )
    # the block does not hold it
    err = rpc_error(bitcoind, "getrawtransaction", pair.penalty.txid.hex(), False, block_hash)
    assert err.code == -5 and err.message.startswith("No such transaction found in the provided block")
    err = rpc_error(bitcoind, "getmempoolentry", pair.penalty.txid.hex())
    assert (err.code, err.message) == (-5, "Transaction not in mempool")


def test_reorg_returns_transactions_to_mempool(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    wallet.send(pair.commitment)
    wallet.send(pair.penalty)
    start = bitcoind.rpc("getblockcount")
    (with_txs, *rest) = bitcoind.mine(3)
    assert bitcoind.rpc("getrawmempool") == []

    assert bitcoind.rpc("invalidateblock", with_txs) is None
    assert bitcoind.rpc("getblockcount") == start
    assert set(bitcoind.rpc("getrawmempool")) == {pair.commitment.txid.hex(), pair.penalty.txid.hex()}
    assert bitcoind.rpc("getblockheader", rest[-1])["confirmations"] == -1
    assert bitcoind.rpc("getblockheader", with_txs)["confirmations"] == -1

    assert bitcoind.rpc("reconsiderblock", with_txs) is None
    assert bitcoind.rpc("getblockcount") == start + 3
    assert bitcoind.rpc("getbestblockhash") == rest[-1]
    assert bitcoind.rpc("getrawmempool") == []
    assert bitcoind.rpc("getblockheader", with_txs)["confirmations"] == 3


def test_regenerating_an_invalidated_block_is_refused(bitcoind: BitcoindHandle) -> None:
    bitcoind.mine(1)
    mocktime = bitcoind.rpc("getblockheader", bitcoind.rpc("getbestblockhash"))["time"] + 10
    bitcoind.rpc("setmocktime", mocktime)
    (tip,) = bitcoind.mine(1)
    bitcoind.rpc("invalidateblock", tip)
    err = rpc_error(bitcoind, "generatetoaddress", 1, BURN_ADDRESS)
    assert (err.code, err.message) == (-32603, "ProcessNewBlock, block not accepted")
    other = bitcoind.wallet().address()  # a different coinbase makes a different block
    (replacement,) = bitcoind.mine(1, other)
    assert replacement != tip and bitcoind.rpc("getbestblockhash") == replacement


def test_zmq_hashblock_after_mining_and_after_reorg(bitcoind: BitcoindHandle) -> None:
    with ZmqSubscriber(bitcoind.zmq_url, ("hashblock",)) as sub:
        sub.prime(lambda: bitcoind.mine(1))
        first = bitcoind.mine(3)
        messages = sub.collect(3, "hashblock")
        assert [m.hex for m in messages] == first
        seqs = [m.sequence for m in messages]
        assert seqs == list(range(seqs[0], seqs[0] + 3))

        bitcoind.rpc("invalidateblock", first[1])  # back to first[0]: disconnections publish nothing
        branch = bitcoind.mine(3, bitcoind.wallet().address())
        messages = sub.collect(3, "hashblock")
        assert [m.hex for m in messages] == branch
        assert messages[0].sequence == seqs[-1] + 1

        # back to the first branch: invalidate the new one, reconsider the old one
        bitcoind.rpc("reconsiderblock", first[1])
        assert bitcoind.rpc("getbestblockhash") == branch[-1]  # 4 blocks beat 3
        bitcoind.rpc("invalidateblock", branch[0])
        assert bitcoind.rpc("getbestblockhash") == first[-1]
        messages = sub.collect(2, "hashblock")
        assert [m.hex for m in messages] == first[1:]
        assert sub.pending("hashblock") == []


def test_zmq_rawtx_for_mempool_and_block(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    with ZmqSubscriber(bitcoind.zmq_url, ("rawtx",)) as sub:
        sub.prime(lambda: bitcoind.mine(1))
        wallet.send(pair.commitment)
        msg = sub.next()
        assert msg.topic == "rawtx" and msg.body == pair.commitment.raw
        (block_hash,) = bitcoind.mine(1)
        block_txs = bitcoind.rpc("getblock", block_hash)["tx"]
        published = [decode_transaction(m.body).txid.hex() for m in sub.collect(len(block_txs))]
        assert published == block_txs


def test_wait_until_sees_mempool(bitcoind: BitcoindHandle) -> None:
    wallet = bitcoind.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    wallet.send(pair.commitment)
    assert wait_until(lambda: pair.commitment.txid.hex() in bitcoind.rpc("getrawmempool"), timeout=5)


def test_zmq_reorg_to_a_longer_branch_announces_only_blocks_beyond_the_old_tip(
    bitcoind: BitcoindHandle,
) -> None:
    """Core publishes hashblock when the tip moves to more work than it had before the step, so a reorg
    from a 2-block branch to a 3-block one announces only the third block of the new branch; a reorg
    that starts from the fork point (invalidateblock) announces every block."""
    other = bitcoind.wallet().address()
    with ZmqSubscriber(bitcoind.zmq_url, ("hashblock",)) as sub:
        sub.prime(lambda: bitcoind.mine(1))
        a = bitcoind.mine(2)
        bitcoind.rpc("invalidateblock", a[0])
        b = bitcoind.mine(3, other)
        bitcoind.rpc("reconsiderblock", a[0])  # 2 blocks lose to 3: nothing happens
        assert bitcoind.rpc("getbestblockhash") == b[-1]
        bitcoind.rpc("invalidateblock", b[0])  # back to the fork, then up the a-branch
        assert bitcoind.rpc("getbestblockhash") == a[-1]
        bitcoind.rpc("reconsiderblock", b[0])  # from a[1] (2 blocks) straight to b[2] (3 blocks)
        assert bitcoind.rpc("getbestblockhash") == b[-1]
        announced = [m.hex for m in sub.collect(8, "hashblock")]
        assert announced == [*a, *b, *a, b[2]]
        assert sub.pending("hashblock") == []
