"""The channel on a real chain: the simulator, and real Bitcoin Core when one is found (``bitcoind``).

A funding output made by a real wallet transaction, a channel opened against it through ``gettxout``,
payments signed by the user and validated by the handler, the tower's claim (and a CPFP bump of it)
accepted and confirmed; a refund refused while non-final and confirmed after expiry; a claim carrying a
bad user signature refused by the node; and a PSBT-funded channel (finalized by Core itself when present).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest

from common import channel, psbt, script, sighash
from common.channel import ChannelId, ChannelParams
from common.channel_wire import PaymentError, Refusal, make_open_request, make_pay_request
from common.tx import Transaction, TxOut
from common.types import Dialect, Txid
from teos.payments.chain import RpcFundingChain
from teos.payments.claims import BlockConnected, BroadcastResult, Claimer
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.state import ChannelStatus, ClaimStatus
from teos.payments.store import ChannelStore
from teos.payments.tower_key import TowerPaymentKey
from teos.regtest.wallet import SignedTx
from teos.storage.atomic import MemoryAtomicStore
from tests.payments.support import FakeLedger, pubkey, secret, user_id
from tests.support.bitcoind import BitcoindHandle, RPCError

pytestmark = pytest.mark.e2e

PRICE = 10_000
CONFIG = PaymentConfig(
    price=PRICE,
    min_funding_confirmations=2,
    min_blocks_before_expiry=20,
    max_channel_blocks=1_000,
    fee_rate=2_000,
    claim_margin=10,
    bump_margin=5,
    claim_confirmations=3,
)
TOWER = TowerPaymentKey.from_tower_secret(secret("e2e tower identity"))
USER_SECRET = secret("e2e channel user")
USER_KEY = pubkey(USER_SECRET)
CHANGE = script.p2wpkh(pubkey(secret("e2e user change")))


def fund_channel(node: BitcoindHandle, value: int, expiry: int) -> ChannelParams:
    """A real wallet transaction paying ``value`` to the channel's P2WSH; broadcast, not yet mined."""
    wallet = node.wallet()
    coin = wallet.fund(count=1, value=2 * value)[0]
    spk = channel.funding_script_pubkey(USER_KEY, TOWER.public_key, expiry)
    funding = wallet.build([coin], [TxOut(value, spk)], change=True)
    node.rpc("sendrawtransaction", funding.hex)
    return ChannelParams(
        ChannelId(funding.txid, 0), value, USER_KEY, TOWER.public_key, expiry, CHANGE, CONFIG.fee_rate
    )


def make_handler(node: BitcoindHandle, store: ChannelStore) -> PaymentHandler:
    return PaymentHandler(
        CONFIG, store, RpcFundingChain(node.rpc), FakeLedger(), FixedPrice(PRICE), TOWER.public_key, 100, 144
    )


def height(node: BitcoindHandle) -> int:
    return int(node.rpc("getblockcount"))


def send(node: BitcoindHandle, tx: Transaction | SignedTx) -> str:
    return str(node.rpc("sendrawtransaction", tx.raw.hex()))


def block_spender(node: BitcoindHandle, block_hash: str, outpoint: tuple[Txid, int]) -> Txid | None:
    """The transaction of a block that spends ``outpoint`` (what the engine will feed the Claimer)."""
    block: dict[str, Any] = node.rpc("getblock", block_hash, 2)
    for tx in block["tx"]:
        for vin in tx.get("vin", []):
            if vin.get("txid") == outpoint[0].hex() and vin.get("vout") == outpoint[1]:
                return Txid.from_hex(tx["txid"])
    return None


def test_open_pay_claim_bump_and_confirm(bitcoind: BitcoindHandle) -> None:
    node = bitcoind
    expiry = height(node) + 200  # fund() below mines 102 blocks first
    params = fund_channel(node, 300_000, expiry + 102)
    store = ChannelStore(MemoryAtomicStore())
    handler = make_handler(node, store)

    with pytest.raises(PaymentError) as info:  # in the mempool only
        handler.open_channel(make_open_request(params, USER_SECRET))
    assert info.value.reason is Refusal.FUNDING_UNCONFIRMED
    node.mine(1)
    with pytest.raises(PaymentError) as info:
        handler.open_channel(make_open_request(params, USER_SECRET))
    assert info.value.reason is Refusal.FUNDING_UNCONFIRMED
    node.mine(1)
    state = handler.open_channel(make_open_request(params, USER_SECRET))
    assert state.status is ChannelStatus.OPEN

    if node.kind == "bitcoin-core":  # Core's own reading of the script and its address
        decoded = node.rpc("decodescript", params.witness_script.hex())
        assert decoded["segwit"]["address"] == params.address("regtest")
        assert decoded["asm"] == (
            f"OP_IF {TOWER.public_key.hex()} OP_CHECKSIGVERIFY "
            f"OP_ELSE {params.expiry} OP_CHECKLOCKTIMEVERIFY OP_DROP "
            f"OP_ENDIF {USER_KEY.hex()} OP_CHECKSIG"
        )

    handler.pay(make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    paid = handler.pay(make_pay_request(params, 2, 3 * PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    assert paid.outcome.available_slots == 300

    claimer = Claimer(CONFIG, store, TOWER)
    record = claimer.start_claim(params.channel_id, height(node))
    claim = claimer.claim_transaction(record)
    assert send(node, claim) == claim.txid.hex()
    claimer.on_event(params.channel_id, BroadcastResult(height(node), accepted=True))
    child = claimer.bump(record, 20_000)
    assert send(node, child) == child.txid.hex()  # the CPFP child is valid too
    mempool = node.rpc("getrawmempool")
    assert claim.txid.hex() in mempool and child.txid.hex() in mempool

    (block_hash,) = node.mine(1)
    assert block_spender(node, block_hash, (params.channel_id.txid, 0)) == claim.txid
    claimer.on_event(params.channel_id, BlockConnected(height(node), claim.txid))
    assert node.rpc("gettxout", params.channel_id.txid.hex(), 0, True) is None
    assert node.rpc("gettxout", child.txid.hex(), 0, True)["confirmations"] == 1
    change = node.rpc("gettxout", claim.txid.hex(), 1, True)
    assert change["scriptPubKey"]["hex"] == CHANGE.hex()
    assert round(change["value"] * 100_000_000) == 300_000 - 3 * PRICE - params.payment_fee(True)
    for _ in range(2):
        node.mine(1)
        claimer.on_event(params.channel_id, BlockConnected(height(node), None))
    claim_record = store.get_claim(params.channel_id)
    snap = store.get(params.channel_id)
    assert claim_record is not None and claim_record.record.status is ClaimStatus.COMPLETE
    assert snap is not None and snap.state.status is ChannelStatus.CLAIMED

    with pytest.raises(PaymentError) as info:
        handler.pay(make_pay_request(params, 3, 4 * PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    assert info.value.reason is Refusal.CHANNEL_CLOSED


def test_refund_is_non_final_until_expiry_then_confirms(bitcoind: BitcoindHandle) -> None:
    node = bitcoind
    params = fund_channel(node, 100_000, height(node) + 102 + 30)
    node.mine(2)
    handler = make_handler(node, ChannelStore(MemoryAtomicStore()))
    handler.open_channel(make_open_request(params, USER_SECRET))
    destination = script.p2wpkh(USER_KEY)
    refund = channel.refund_tx(params, destination, 2_000, USER_SECRET)

    with pytest.raises(RPCError) as info:
        send(node, refund)
    assert info.value.code == -26 and "non-final" in info.value.message
    node.mine(params.expiry - height(node) - 1)
    assert height(node) == params.expiry - 1  # the next block is the expiry height itself
    with pytest.raises(RPCError) as info:
        send(node, refund)
    assert "non-final" in info.value.message
    node.mine(1)
    assert send(node, refund) == refund.txid.hex()
    node.mine(1)
    out = node.rpc("gettxout", refund.txid.hex(), 0, True)
    assert out["confirmations"] == 1 and out["scriptPubKey"]["hex"] == destination.hex()
    with pytest.raises(PaymentError) as pay_info:  # the funding output is gone
        handler.pay(make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET))
    assert pay_info.value.reason in (Refusal.EXPIRY_TOO_NEAR, Refusal.FUNDING_SPENT)


def test_a_payment_with_a_bad_signature_is_refused(bitcoind: BitcoindHandle) -> None:
    node = bitcoind
    params = fund_channel(node, 100_000, height(node) + 102 + 100)
    node.mine(2)
    handler = make_handler(node, ChannelStore(MemoryAtomicStore()))
    handler.open_channel(make_open_request(params, USER_SECRET))
    forged = channel.sign_payment(params, PRICE, secret("mallory"))
    good = make_pay_request(params, 1, PRICE, user_id(1), Dialect.RUST, USER_SECRET)
    with pytest.raises(PaymentError) as info:
        handler.pay(replace(good, payment_signature=forged))
    assert info.value.reason is Refusal.BAD_PAYMENT_SIGNATURE

    # The same forgery co-signed and broadcast anyway: the node's script check must refuse it.
    tx = channel.payment_tx(params, PRICE)
    tower_sig = sighash.sign(TOWER.secret, channel.payment_sighash(params, PRICE))
    bad_claim = channel.with_witness(tx, (forged, tower_sig, b"\x01", params.witness_script))
    try:
        send(node, bad_claim)
    except RPCError as e:
        assert e.code == -26 and "script-verify" in e.message, e
    else:
        assert node.kind == "simulator", "Bitcoin Core accepted a claim with a forged signature"
        pytest.skip("this simulator build does not verify scripts (the refusal is checked on Core)")


def test_a_channel_funded_through_a_psbt(bitcoind: BitcoindHandle) -> None:
    """The client's PSBT for a wallet to sign: the funding output carries its witness script; signed here
    (and finalized by Core itself when present), it funds a channel the tower opens."""
    node = bitcoind
    wallet = node.wallet()
    coin_key = secret("e2e psbt coin")
    coin_script = script.p2wpkh(pubkey(coin_key))
    source = wallet.build(
        [wallet.fund(count=1, value=400_000)[0]], [TxOut(350_000, coin_script)], change=True
    )
    send(node, source)
    node.mine(1)
    expiry = height(node) + 100
    spk = channel.funding_script_pubkey(USER_KEY, TOWER.public_key, expiry)
    change = TxOut(350_000 - 200_000 - 500, script.p2wpkh(pubkey(secret("psbt change"))))
    p = channel.funding_psbt(
        USER_KEY, TOWER.public_key, expiry, 200_000, [(source.txid, 0, TxOut(350_000, coin_script))], change
    )
    unsigned = p.tx
    assert unsigned.outputs[0].script_pubkey == spk
    text = p.to_base64()
    if node.kind == "bitcoin-core":
        decoded = node.rpc("decodepsbt", text)
        assert decoded["tx"]["txid"] == unsigned.txid.hex()
        assert decoded["outputs"][0]["witness_script"]["hex"] == p.outputs[0][b"\x01"].hex()
    signed = psbt.parse_base64(text)
    signed.sign_input(0, coin_key)
    if node.kind == "bitcoin-core":
        core = node.rpc("finalizepsbt", signed.to_base64())
        assert core["complete"]
    signed.finalize()
    funding = signed.extract()
    if node.kind == "bitcoin-core":
        assert core["hex"] == funding.raw.hex()
    send(node, funding)
    node.mine(2)
    params = ChannelParams(
        ChannelId(funding.txid, 0), 200_000, USER_KEY, TOWER.public_key, expiry, CHANGE, CONFIG.fee_rate
    )
    state = make_handler(node, ChannelStore(MemoryAtomicStore())).open_channel(
        make_open_request(params, USER_SECRET)
    )
    assert state.params.funding_value == 200_000
    assert hashlib.sha256(params.witness_script).digest() == spk[2:]
