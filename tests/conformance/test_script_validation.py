"""Script, signature and relative lock-time validation: the simulator refuses what Bitcoin Core refuses.

Each test runs on the ``bitcoind`` fixture (the simulator, and real Bitcoin Core when a binary is found) and
asserts Core's exact codes and messages (Core v31 words every script failure met in the mempool
``mempool-script-verify-flag-failed (<reason>)`` and, in blocks, ``block-script-verify-flag-failed
(<reason>)``, each followed by ``, input N of <txid> (wtxid <wtxid>), spending <txid>:<n>``). The
transactions are a Lightning-shaped commitment whose ``to_local`` output is "revocation key OR
(to_self_delay CSV AND delayed key)", its penalty, the owner's delayed claim, and their invalid variants.
Where the simulator cannot verify scripts (py-bitcoinkernel unavailable), its variants are skipped.
"""

from __future__ import annotations

import pytest

from common.tx import (
    COINBASE_VOUT,
    NULL_TXID,
    Block,
    BlockHeader,
    Transaction,
    TxIn,
    TxOut,
    check_proof_of_work,
    merkle_root,
    witness_commitment_script,
)
from common.types import BlockHash
from teos.regtest.address import script_for_address
from teos.regtest.script import push_int
from teos.regtest.wallet import BreachPair, SignedTx, Wallet
from tests.support import RPCError
from tests.support.bitcoind import BURN_ADDRESS, BitcoindHandle

pytestmark = pytest.mark.e2e

NULLFAIL = "Signature must be zero for failed CHECK(MULTI)SIG operation"
EVAL_FALSE = "Script evaluated without error but finished with a false/empty top stack element"
UNSATISFIED_LOCKTIME = "Locktime requirement not satisfied"
MINIMALIF = "OP_IF/NOTIF argument must be minimal"


def require_validation(node: BitcoindHandle) -> None:
    """Skips on a simulator that does not verify scripts (it says so in getnetworkinfo's warnings)."""
    warnings = node.rpc("getnetworkinfo")["warnings"]
    for warning in warnings if isinstance(warnings, list) else [warnings]:
        if "NOT validated" in warning:
            pytest.skip(f"the simulator does not verify scripts here: {warning}")


def rpc_error(node: BitcoindHandle, method: str, *params: object) -> RPCError:
    with pytest.raises(RPCError) as info:
        node.rpc(method, *params)
    return info.value


def input_debug(tx: SignedTx, index: int = 0) -> str:
    """CScriptCheck's debug text for input ``index`` of ``tx``."""
    txin = tx.tx.inputs[index]
    return f"input {index} of {tx.txid} (wtxid {tx.wtxid}), spending {txin.prev_txid}:{txin.prev_vout}"


def script_reject(tx: SignedTx, reason: str, where: str = "mempool") -> str:
    return f"{where}-script-verify-flag-failed ({reason}), {input_debug(tx)}"


def funded(node: BitcoindHandle, to_self_delay: int = 144) -> tuple[Wallet, BreachPair]:
    require_validation(node)
    wallet = node.wallet()
    wallet.fund(count=3)
    return wallet, wallet.breach_pair(to_self_delay=to_self_delay)


def test_forged_commitment_signature_is_rejected_then_the_valid_one_accepted(
    bitcoind: BitcoindHandle,
) -> None:
    wallet, pair = funded(bitcoind)
    forged = wallet.forged(pair.commitment)
    assert forged.txid == pair.commitment.txid and forged.wtxid != pair.commitment.wtxid

    err = rpc_error(bitcoind, "sendrawtransaction", forged.hex)
    assert (err.code, err.message) == (-26, script_reject(forged, NULLFAIL))
    result = bitcoind.rpc("testmempoolaccept", [forged.hex])[0]
    assert result["allowed"] is False
    assert result["reject-reason"] == f"mempool-script-verify-flag-failed ({NULLFAIL})"
    assert result["reject-details"] == script_reject(forged, NULLFAIL)

    # a block may not carry it either: with consensus flags the failed CHECKSIG leaves false on the stack
    height = bitcoind.rpc("getblockcount")
    err = rpc_error(bitcoind, "generateblock", BURN_ADDRESS, [forged.hex])
    assert (err.code, err.message) == (
        -25,
        f"TestBlockValidity failed: {script_reject(forged, EVAL_FALSE, 'block')}",
    )
    assert bitcoind.rpc("getblockcount") == height
    assert bitcoind.rpc("getrawmempool") == []

    assert bitcoind.rpc("sendrawtransaction", pair.commitment.hex) == pair.commitment.txid.hex()
    (block_hash,) = bitcoind.mine(1)
    assert pair.commitment.txid.hex() in bitcoind.rpc("getblock", block_hash)["tx"]


def test_penalty_signed_by_the_wrong_key_is_rejected(bitcoind: BitcoindHandle) -> None:
    wallet, pair = funded(bitcoind)
    wallet.send(pair.commitment)
    bitcoind.mine(1)
    wrong = wallet.penalty_signed_by_wrong_key(pair)
    assert wrong.txid == pair.penalty.txid and wrong.wtxid != pair.penalty.wtxid

    err = rpc_error(bitcoind, "sendrawtransaction", wrong.hex)
    assert (err.code, err.message) == (-26, script_reject(wrong, NULLFAIL))
    err = rpc_error(bitcoind, "generateblock", BURN_ADDRESS, [wrong.hex])
    assert (err.code, err.message) == (
        -25,
        f"TestBlockValidity failed: {script_reject(wrong, EVAL_FALSE, 'block')}",
    )

    # the real penalty (revocation branch, revocation key) is accepted and mined
    assert wallet.send(pair.penalty) == pair.penalty.txid.hex()
    (block_hash,) = bitcoind.mine(1)
    assert pair.penalty.txid.hex() in bitcoind.rpc("getblock", block_hash)["tx"]
    assert bitcoind.rpc("getrawmempool") == []


def test_delayed_claim_waits_for_to_self_delay(bitcoind: BitcoindHandle) -> None:
    delay = 6
    wallet, pair = funded(bitcoind, to_self_delay=delay)
    claim = wallet.delayed_claim(pair)
    assert claim.tx.inputs[0].sequence == delay

    # the commitment unconfirmed: its output counts from the next block, so the lock has not passed
    wallet.send(pair.commitment)
    err = rpc_error(bitcoind, "sendrawtransaction", claim.hex)
    assert (err.code, err.message) == (-26, "non-BIP68-final")

    bitcoind.mine(delay - 1)  # delay - 1 confirmations: one block short
    err = rpc_error(bitcoind, "sendrawtransaction", claim.hex)
    assert (err.code, err.message) == (-26, "non-BIP68-final")
    result = bitcoind.rpc("testmempoolaccept", [claim.hex])[0]
    assert result["allowed"] is False and result["reject-reason"] == "non-BIP68-final"
    err = rpc_error(bitcoind, "generateblock", BURN_ADDRESS, [claim.hex])
    assert (err.code, err.message) == (
        -25,
        f"TestBlockValidity failed: bad-txns-nonfinal, contains a non-BIP68-final transaction {claim.txid}",
    )

    bitcoind.mine(1)  # delay confirmations: the CSV branch is open
    assert wallet.send(claim) == claim.txid.hex()
    (block_hash,) = bitcoind.mine(1)
    assert claim.txid.hex() in bitcoind.rpc("getblock", block_hash)["tx"]
    assert bitcoind.rpc("getrawmempool") == []


def test_delayed_claim_with_a_short_sequence_fails_its_script(bitcoind: BitcoindHandle) -> None:
    """BIP68 is satisfied (sequence delay - 1, commitment buried deeper) but OP_CHECKSEQUENCEVERIFY
    demands the full delay: a consensus failure, so no block takes it either."""
    delay = 4
    wallet, pair = funded(bitcoind, to_self_delay=delay)
    wallet.send(pair.commitment)
    bitcoind.mine(delay + 1)
    short = wallet.delayed_claim(pair, sequence=delay - 1)

    err = rpc_error(bitcoind, "sendrawtransaction", short.hex)
    assert (err.code, err.message) == (-26, script_reject(short, UNSATISFIED_LOCKTIME))
    err = rpc_error(bitcoind, "generateblock", BURN_ADDRESS, [short.hex])
    assert (err.code, err.message) == (
        -25,
        f"TestBlockValidity failed: {script_reject(short, UNSATISFIED_LOCKTIME, 'block')}",
    )


def test_policy_only_failure_is_refused_by_the_mempool_but_valid_in_a_block(
    bitcoind: BitcoindHandle,
) -> None:
    """A non-minimal OP_IF argument breaks only the MINIMALIF policy flag: the mempool refuses the claim,
    a block (generateblock applies consensus flags only) takes it."""
    delay = 3
    wallet, pair = funded(bitcoind, to_self_delay=delay)
    wallet.send(pair.commitment)
    bitcoind.mine(delay)
    sloppy = wallet.delayed_claim(pair, false_branch=b"\x00")

    err = rpc_error(bitcoind, "sendrawtransaction", sloppy.hex)
    assert (err.code, err.message) == (-26, script_reject(sloppy, MINIMALIF))
    block_hash = bitcoind.rpc("generateblock", BURN_ADDRESS, [sloppy.hex])["hash"]
    assert sloppy.txid.hex() in bitcoind.rpc("getblock", block_hash)["tx"]
    assert bitcoind.rpc("getbestblockhash") == block_hash


def test_reorg_drops_a_claim_whose_relative_lock_no_longer_holds(bitcoind: BitcoindHandle) -> None:
    """Disconnected transactions return to the mempool only while BIP68 still lets them into the next
    block, and a reorg that shortens the commitment's burial evicts a claim already in the mempool."""
    delay = 2
    wallet, pair = funded(bitcoind, to_self_delay=delay)
    wallet.send(pair.commitment)
    commitment_block, second = bitcoind.mine(delay)
    claim = wallet.delayed_claim(pair)
    wallet.send(claim)
    (claim_block,) = bitcoind.mine(1)

    bitcoind.rpc("invalidateblock", claim_block)  # the commitment keeps `delay` confirmations
    assert bitcoind.rpc("getrawmempool") == [claim.txid.hex()]
    bitcoind.rpc("invalidateblock", second)  # one confirmation left: the claim must go
    assert bitcoind.rpc("getrawmempool") == []
    bitcoind.rpc("invalidateblock", commitment_block)  # the commitment returns, its claim does not
    assert bitcoind.rpc("getrawmempool") == [pair.commitment.txid.hex()]
    err = rpc_error(bitcoind, "sendrawtransaction", claim.hex)
    assert (err.code, err.message) == (-26, "non-BIP68-final")


def block_with(node: BitcoindHandle, txs: list[Transaction]) -> Block:
    """A block on the tip carrying ``txs`` (checked by nobody): BIP34 coinbase paying nothing, the witness
    commitment, a time past the tip's, and a nonce meeting regtest's target."""
    tip = node.rpc("getblockheader", node.rpc("getbestblockhash"))
    height = tip["height"] + 1
    coinbase_in = TxIn(NULL_TXID, COINBASE_VOUT, push_int(height) + b"\x00", 0xFFFFFFFF, (bytes(32),))
    draft = Transaction(2, (coinbase_in,), (TxOut(0, script_for_address(BURN_ADDRESS)),), 0)
    commitment = TxOut(0, witness_commitment_script([draft, *txs]))
    coinbase = Transaction(2, (coinbase_in,), (*draft.outputs, commitment), 0)
    root = merkle_root([tx.txid.raw for tx in (coinbase, *txs)])
    prev = BlockHash.from_hex(tip["hash"])
    nonce = 0
    while True:
        header = BlockHeader(0x20000000, prev, root, tip["time"] + 1, 0x207FFFFF, nonce)
        if check_proof_of_work(header):
            return Block(header, (coinbase, *txs))
        nonce += 1


def test_submitblock_refuses_a_forged_signature(bitcoind: BitcoindHandle) -> None:
    wallet, pair = funded(bitcoind)
    tip = bitcoind.rpc("getbestblockhash")
    forged = wallet.forged(pair.commitment)
    result = bitcoind.rpc("submitblock", block_with(bitcoind, [forged.tx]).raw.hex())
    assert result == f"block-script-verify-flag-failed ({EVAL_FALSE})"
    assert bitcoind.rpc("getbestblockhash") == tip

    good = block_with(bitcoind, [pair.commitment.tx])
    assert bitcoind.rpc("submitblock", good.raw.hex()) is None
    assert bitcoind.rpc("getbestblockhash") == good.hash.hex()
