"""teos-client with a paid teosd (subprocess, real HTTP) and the ``bitcoind`` fixture: the user's whole
journey through the command line, funding through a PSBT its own wallet signs, or through a Bitcoin Core
wallet; the refund of a channel the tower had nothing to claim."""

from __future__ import annotations

import hashlib
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey

from common import bech32, psbt, script
from common.tx import TxOut, decode_transaction
from common.types import Dialect, Txid
from teos.cli.teos_client import run
from teos.cli.wallet_rpc import WalletRPC
from teos.devtools import wait_until
from teos.regtest.wallet import Coin
from tests.daemon.conftest import TeosdFactory
from tests.payments.tower import PRICE, SLOTS, PaidTower, height, mine_to, start_paid_tower
from tests.support.bitcoind import BitcoindHandle

pytestmark = pytest.mark.e2e


def cli(datadir: Path, *args: str) -> tuple[int, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--datadir", str(datadir), *args], out=out, err=err)
    text = out.getvalue() or err.getvalue()
    return code, json.loads(text) if text else None


def ok(datadir: Path, *args: str) -> Any:
    code, answer = cli(datadir, *args)
    assert code == 0, answer
    return answer


def processed(tower: PaidTower, node: BitcoindHandle) -> None:
    target = height(node)
    wait_until(lambda: tower.admin().get_tower_info()["last_processed_block"]["height"] >= target, 30, "tip")


def coin_for_key(node: BitcoindHandle, secret: bytes, value: int) -> Coin:
    """A confirmed P2WPKH coin of ``value`` for ``secret``: the user's own wallet, which signs the PSBT."""
    spk = script.p2wpkh(PrivateKey(secret).public_key.format())
    wallet = node.wallet()
    wallet.fund(count=1, value=value + 50_000)
    source = wallet.build(wallet.take(1), [TxOut(value, spk)], change=True)
    node.rpc("sendrawtransaction", source.hex)
    node.mine(1)
    return Coin(source.txid, 0, value, spk)


@pytest.mark.parametrize("dialect", [Dialect.RUST, Dialect.PYTHON])
def test_a_user_funds_with_a_psbt_pays_and_is_protected(
    bitcoind: BitcoindHandle, teosd_factory: TeosdFactory, tmp_path: Path, dialect: Dialect
) -> None:
    node = bitcoind
    tower = start_paid_tower(node, teosd_factory)
    spec = f"{tower.tower_id.hex()}@127.0.0.1:{tower.daemon.api_port}"
    home = tmp_path / "client"

    code, refused = cli(home, "--dialect", dialect.value, "register", spec)
    assert code == 1 and refused["details"]["terms"]["price"] == PRICE  # 402: explained, terms checked
    terms = ok(home, "terms", spec)
    assert terms["terms"]["price"] == PRICE and terms["tip_height"] == height(node)

    secret = hashlib.sha256(b"the user's wallet key").digest()
    coin = coin_for_key(node, secret, 300_000)
    processed(tower, node)
    change = script.p2wpkh(PrivateKey(hashlib.sha256(b"wallet change").digest()).public_key.format())
    funded = ok(home, "fundchannel", spec, "--amount", "200000", "--blocks", "100",
                "--input", f"{coin.txid.hex()}:{coin.vout}:{coin.value}:{coin.script_pubkey.hex()}",
                "--input-change-address", _address(change), "--fee", "2000")  # fmt: skip
    assert funded["expiry"] == height(node) + 100
    assert stat.S_IMODE(Path(funded["channel_file"]).stat().st_mode) == 0o600

    # The user's wallet signs the PSBT (Core finalizes it too when it is there) and broadcasts it.
    signed = psbt.parse_base64(funded["psbt"])
    signed.sign_input(0, secret)
    if node.kind == "bitcoin-core":
        assert node.rpc("finalizepsbt", signed.to_base64())["complete"]
    signed.finalize()
    funding = signed.extract()
    node.rpc("sendrawtransaction", funding.raw.hex())
    node.mine(1)
    processed(tower, node)
    channel_id = f"{funding.txid.hex()}:0"
    opened = ok(home, "openchannel", channel_id)
    assert opened["status"] == "open" and opened["max_amount"] > 190_000

    paid = ok(home, "--dialect", dialect.value, "pay", "--registrations", "2")
    assert paid["registrations"] == 2 and paid["available_slots"] == 2 * SLOTS
    assert paid["channel"]["amount"] == 2 * PRICE and paid["dialect"] == dialect.value

    # The registration is the tower's usual one: appointments are accepted against it.
    pair = node.wallet().breach_pair()
    receipt = ok(home, "add_appointment", "--dispute-txid", pair.commitment.txid.hex(),
                 "--penalty-rawtx", pair.penalty.raw.hex())  # fmt: skip
    assert receipt["available_slots"] == 2 * SLOTS - 1

    # A client that lost its state resumes from the tower's signed answer.
    Path(opened["channel_file"]).write_text(
        json.dumps({**json.loads(Path(opened["channel_file"]).read_text()), "nonce": 0, "amount": 0})
    )
    state = ok(home, "getchannel")
    assert (state["nonce"], state["amount"]) == (1, 2 * PRICE)
    again = ok(home, "pay")
    assert again["channel"]["nonce"] == 2 and again["available_slots"] == 3 * SLOTS - 1
    assert [c["channel_id"] for c in ok(home, "listchannels")["channels"]] == [channel_id]


def _address(script_pubkey: bytes) -> str:
    return bech32.script_to_address(script_pubkey, "regtest")


def test_a_channel_funded_by_a_core_wallet_and_refunded_after_expiry(
    bitcoind_factory: Any, teosd_factory: TeosdFactory, tmp_path: Path
) -> None:
    """Bitcoin Core only (the simulator has no wallet): ``fundchannel --bitcoind`` sends from a Core
    wallet; the channel is never paid, so after its expiry the user's refund takes it all back."""
    node: BitcoindHandle = bitcoind_factory("bitcoin-core", extra_args=("-disablewallet=0",))
    node.rpc("createwallet", "user")
    url = f"http://{node.rpc_user}:{node.rpc_password}@127.0.0.1:{node.rpc_port}/wallet/user"
    core = WalletRPC(url)
    node.mine(101, address=core.call("getnewaddress"))
    tower = start_paid_tower(node, teosd_factory)
    spec = f"{tower.tower_id.hex()}@127.0.0.1:{tower.daemon.api_port}"
    home = tmp_path / "client"
    processed(tower, node)

    funded = ok(home, "fundchannel", spec, "--amount", "150000", "--blocks", "30", "--bitcoind", url)
    txid, vout = funded["channel_id"].split(":")
    tx = decode_transaction(bytes.fromhex(node.rpc("getrawtransaction", txid)))
    assert tx.outputs[int(vout)].value == 150_000
    node.mine(1)
    processed(tower, node)
    assert ok(home, "openchannel", funded["channel_id"])["status"] == "open"

    mine_to(node, funded["expiry"] - 1)
    code, early = cli(home, "refund", "--bitcoind", url)
    assert code == 1 and "non-final" in early["error"]
    node.mine(1)
    refunded = ok(home, "refund", "--bitcoind", url)
    node.mine(1)
    out = node.rpc("gettxout", refunded["refund_txid"], 0, True)
    assert out["confirmations"] == 1 and round(out["value"] * 100_000_000) > 149_000
    processed(tower, node)
    wait_until(lambda: _status(tower, Txid.from_hex(txid)) == "unpaid", 30, "the tower to see it unpaid")


def _status(tower: PaidTower, txid: Txid) -> str:
    for line in tower.channels()["channels"]:
        if line["channel_id"].startswith(txid.hex()):
            status: str = line["status"]
            return status
    return ""
