"""The tower's main job, narrated: ``./scripts/demo`` (``python -m teos.demo [--keep] [--paid]``).

It runs the bundled bitcoind simulator (``teos.regtest``) in this process and ``teosd`` as a subprocess,
both on loopback with temporary datadirs, then goes through what a user and a cheater do: a user
registers and sends an appointment (with ``common.client``, the user client every tool here shares, which
checks each receipt against the tower id); the revoked commitment is mined; the tower broadcasts the
penalty and follows it. It stops everything it started and exits 0, or non-zero with the logs' last lines.

``--paid`` runs a paid tower instead (docs/PAYMENTS.md): the user reads the signed terms, funds a payment
channel with a real transaction, opens it, pays for a registration (receipt and acknowledgement checked),
sends an appointment; the chain reaches the claim margin and the tower's claim is broadcast and confirmed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import crypto, script
from common.channel import ChannelId, ChannelParams
from common.channel_wire import make_get_channel_request
from common.client import TowerClient
from common.http import HttpError
from common.payment_client import PLACEHOLDER_ID, ChannelRecord, PaymentClient
from common.tx import TxOut
from common.types import Dialect, UserId
from teos.chain.bitcoind import rpc_call
from teos.devtools import free_port, wait_until
from teos.regtest.simulator import Simulator
from teos.regtest.wallet import Wallet

RPC_USER, RPC_PASSWORD = "teos", "teos-demo"


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Node:
    """The simulator, in this process, and RPC calls to it as to any bitcoind."""

    def __init__(self, datadir: Path) -> None:
        self.sim = Simulator(datadir, rpcuser=RPC_USER, rpcpassword=RPC_PASSWORD)

    def rpc(self, method: str, *params: Any) -> Any:
        return rpc_call("127.0.0.1", self.sim.rpc_port, RPC_USER, RPC_PASSWORD, method, params)


# The paid demo's terms: small, so that the claim margin is a few blocks away.
PAID_PRICE = 1_000
PAID_ARGS = [
    "--paymentprice", str(PAID_PRICE), "--paymentminconf", "1", "--paymentminblocks", "20",
    "--paymentmaxchannelblocks", "1000", "--paymentclaimmargin", "6", "--paymentbumpmargin", "2",
    "--paymentrebroadcast", "1", "--paymentclaimconfirmations", "3",
]  # fmt: skip


@contextlib.contextmanager
def _teosd(
    workdir: Path, node: _Node, api_port: int, extra: list[str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """teosd against ``node``, logging to ``workdir/teosd.log``; stopped with SIGTERM on the way out."""
    args = [
        sys.executable, "-m", "teos", "--datadir", str(workdir), "--btcnetwork", "regtest",
        "--apibind", "127.0.0.1", "--apiport", str(api_port), "--rpcport", str(free_port()),
        "--btcrpcconnect", "127.0.0.1", "--btcrpcport", str(node.sim.rpc_port), "--btcrpcuser", RPC_USER,
        "--zmqhashblock", node.sim.zmq_url, "--pollinterval", "5",
        *(extra or []),
    ]  # fmt: skip
    # Flags only, except the password: a secret on the command line is visible to every local user.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEOS_")}
    env["TEOS_BTCRPCPASSWORD"] = RPC_PASSWORD
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "teosd.log", "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _tower_id(log: Path) -> UserId:
    for line in log.read_text(errors="replace").splitlines():
        if "tower id=" in line:
            return UserId.from_hex(line.split("tower id=")[1].split()[0])
    raise RuntimeError("teosd has not logged its tower id")


def run_demo(workdir: Path, paid: bool = False) -> None:
    """The tower's main job, step by step, against the simulator (raises on any failure)."""
    node = _Node(workdir / "bitcoind")
    node.sim.start()
    try:
        _say(f"bitcoind simulator up (RPC 127.0.0.1:{node.sim.rpc_port}, ZMQ {node.sim.zmq_url})")
        wallet = Wallet(node.rpc, seed=b"teos-demo")
        _say("funding a wallet on the simulator (mining blocks to it)")
        wallet.fund()
        api_port = free_port()
        log = workdir / "teos" / "teosd.log"
        kind = f"a paid teosd ({PAID_PRICE} sat per registration)" if paid else "teosd"
        _say(f"starting {kind} (API http://127.0.0.1:{api_port}, datadir {workdir / 'teos'})")
        with _teosd(workdir / "teos", node, api_port, PAID_ARGS if paid else None) as teosd:
            try:
                (_narrate_paid if paid else _narrate)(node, wallet, teosd, api_port, log)
            except Exception:
                print(f"--- last lines of teosd's log ({log}):\n{_tail(log)}", file=sys.stderr)
                raise
    finally:
        node.sim.stop()


def _narrate(node: _Node, wallet: Wallet, teosd: subprocess.Popen[bytes], api_port: int, log: Path) -> None:
    user = TowerClient("127.0.0.1", api_port, Dialect.RUST)
    _wait_up(user, teosd)
    tower_id = _tower_id(log)
    _say(f"teosd is up at height {node.rpc('getblockcount')}; tower id {tower_id.hex()}")

    _say(f"registering user {user.user_id.hex()} (rust-teos dialect)")
    registration = user.check_registration(user.register(), tower_id)
    _say(f"registered: {registration['available_slots']} slots until block "
         f"{registration['subscription_expiry']}; receipt signature verified against the tower id")

    pair = wallet.breach_pair()
    commitment, penalty = pair.commitment, pair.penalty
    _say(f"built a channel state: revoked commitment {commitment.txid.hex()}")
    _say(f"                       and the penalty spending it {penalty.txid.hex()}")
    sent = user.add_appointment(commitment.txid, penalty.raw)
    receipt = user.check_appointment(sent, tower_id)
    _say(f"appointment sent: locator {sent.locator.hex()}, penalty encrypted under the commitment txid; "
         f"accepted at block {receipt['start_block']}, receipt signature verified")
    status, body = user.get_appointment(sent.locator)
    _say(f"get_appointment -> HTTP {status}, status {body['status']}")

    _say("the cheating party broadcasts the revoked commitment; mining a block with it")
    node.rpc("sendrawtransaction", commitment.hex)
    breach_block = node.rpc("generatetoaddress", 1, wallet.address())[0]
    started = time.monotonic()
    wait_until(lambda: penalty.txid.hex() in node.rpc("getrawmempool"), 30, "the penalty in the mempool")
    _say(f"breach seen in block {breach_block[:16]}...: the tower broadcast the penalty "
         f"{penalty.txid.hex()} {time.monotonic() - started:.2f}s later")

    def responded() -> Any:
        status, body = user.get_appointment(sent.locator)
        return body if status == 200 and body.get("status") == "dispute_responded" else None

    body = wait_until(responded, 15, "get_appointment to show dispute_responded")
    _say(f"get_appointment -> status {body['status']}, penalty_txid {body['appointment']['penalty_txid']}")

    first = node.rpc("generatetoaddress", 1, wallet.address())[0]
    mined = node.rpc("getblock", first)
    if penalty.txid.hex() not in mined["tx"]:
        raise RuntimeError("the penalty was not mined in the next block")
    _say(f"penalty mined in block {mined['height']} (1 confirmation)")
    node.rpc("generatetoaddress", 5, wallet.address())
    confirmations = node.rpc("getblockcount") - mined["height"] + 1
    _say(f"mined 5 more blocks: the penalty has {confirmations} confirmations; the tower follows it "
         "until it is irrevocably resolved")
    user.close()
    _say("stopping teosd (SIGTERM)")
    teosd.send_signal(signal.SIGTERM)
    if teosd.wait(20) != 0:
        raise RuntimeError(f"teosd exited with status {teosd.returncode}")
    _say("teosd stopped cleanly (exit 0)")


def _wait_up(user: TowerClient, teosd: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        if teosd.poll() is not None:
            raise RuntimeError(f"teosd exited with status {teosd.returncode}")
        with contextlib.suppress(OSError):
            return user.ping() == 200
        return False

    wait_until(up, 30, "teosd's API to answer")


def _narrate_paid(
    node: _Node, wallet: Wallet, teosd: subprocess.Popen[bytes], api_port: int, log: Path
) -> None:
    user = TowerClient("127.0.0.1", api_port, Dialect.RUST)
    _wait_up(user, teosd)
    tower_id = _tower_id(log)
    payments = PaymentClient(user, tower_id)
    _say(f"teosd is up at height {node.rpc('getblockcount')}; tower id {tower_id.hex()}")

    try:
        user.register()
        raise RuntimeError("a paid tower registered a user without a payment")
    except HttpError as e:
        if e.status != 402:
            raise
        payments.check_terms(e.body)
        _say("an unpaid registration is refused: HTTP 402 with the tower's terms")
    terms, tip = payments.terms()
    _say(f"terms (signature verified against the tower id): {terms.price} sat for {terms.subscription_slots} "
         f"slots and {terms.subscription_duration} blocks; payment key {terms.tower_key.hex()[:16]}...; "
         f"the tower claims {terms.claim_margin} blocks before a channel's expiry")

    secret = crypto.generate_secret_key()
    user_key = crypto.public_key(secret).raw
    expiry = (tip or int(node.rpc("getblockcount"))) + 40
    params = ChannelParams(PLACEHOLDER_ID, 50_000, user_key, terms.tower_key, expiry,
                           script.p2wpkh(user_key), terms.fee_rate)  # fmt: skip
    coin = wallet.take(1)[0]
    funding = wallet.build([coin], [TxOut(params.funding_value, params.script_pubkey)], change=True)
    node.rpc("sendrawtransaction", funding.hex)
    _say(f"funding a channel: {params.funding_value} sat to {params.address(terms.network)} "
         f"(2-of-2 with the tower, the user's alone after block {expiry}) in tx {funding.txid.hex()}")
    node.rpc("generatetoaddress", 1, wallet.address())
    params = replace(params, channel_id=ChannelId(funding.txid, 0))
    record = ChannelRecord(tower_id, f"127.0.0.1:{api_port}", terms, secret, params, funded=True)
    record = _open_once_seen(payments, record, int(node.rpc("getblockcount")))
    _say(f"channel {record.channel_id} opened: the tower checked the funding output with gettxout; "
         f"it can pay up to {params.max_amount} sat")

    paid = payments.pay(record, registrations=1)
    record = paid.record
    _say(f"paid {record.amount} sat (nonce {record.nonce}) for user {user.user_id.hex()[:16]}...: registered "
         f"with {paid.receipt['available_slots']} slots until block {paid.receipt['subscription_expiry']}; "
         "receipt and the tower's acknowledgement of the amount verified")

    pair = wallet.breach_pair()
    sent = user.add_appointment(pair.commitment.txid, pair.penalty.raw)
    receipt = user.check_appointment(sent, tower_id)
    _say(f"appointment sent: locator {sent.locator.hex()}, accepted at block {receipt['start_block']}")

    margin_height = expiry - terms.claim_margin
    blocks = margin_height - int(node.rpc("getblockcount"))
    _say(f"mining {blocks} blocks to the claim margin (height {margin_height}, {terms.claim_margin} blocks "
         "before expiry)")
    node.rpc("generatetoaddress", blocks, wallet.address())

    def claimed() -> Any:
        return payments.get_channel(record).status == "closing" or None

    wait_until(claimed, 30, "the tower to decide its claim")
    claim_txid = _claim_txid(user, payments, record)
    wait_until(lambda: claim_txid in node.rpc("getrawmempool"), 30, "the claim in the mempool")
    _say(f"the tower broadcast its claim {claim_txid}: the user's last signed payment plus its own signature")
    block = node.rpc("getblock", node.rpc("generatetoaddress", 1, wallet.address())[0])
    if claim_txid not in block["tx"]:
        raise RuntimeError("the claim was not mined in the next block")
    _say(f"claim confirmed in block {block['height']}, {expiry - block['height']} blocks before the "
         "channel's expiry")
    node.rpc("generatetoaddress", terms.claim_margin, wallet.address())
    wait_until(lambda: payments.get_channel(record).status == "claimed", 30, "the claim to be irrevocable")
    _say(f"the tower followed its claim to {terms.claim_margin + 1} confirmations: channel claimed, "
         f"{record.amount} sat earned")
    user.close()
    _say("stopping teosd (SIGTERM)")
    teosd.send_signal(signal.SIGTERM)
    if teosd.wait(20) != 0:
        raise RuntimeError(f"teosd exited with status {teosd.returncode}")
    _say("teosd stopped cleanly (exit 0)")


def _open_once_seen(payments: PaymentClient, record: ChannelRecord, funding_height: int) -> ChannelRecord:
    """Opens the channel once teosd's tip (the terms say it) has reached the funding block: asked once,
    since a tower limits the channels one address may open."""

    def seen() -> bool:
        tip = payments.terms()[1]
        return tip is not None and tip >= funding_height

    wait_until(seen, 30, "teosd to see the funding block", interval=0.2)
    return payments.open_channel(record)


def _claim_txid(user: TowerClient, payments: PaymentClient, record: ChannelRecord) -> str:
    status, body = user.request("POST", "/get_channel", make_get_channel_request(
        record.channel_id, record.user_secret).to_json())  # fmt: skip
    if status != 200 or not body["channel"]["claim_txid"]:
        raise RuntimeError(f"the channel shows no claim: {body}")
    txid: str = body["channel"]["claim_txid"]
    return txid


def main() -> None:
    parser = argparse.ArgumentParser(description="Shows the tower's main job against the bundled simulator.")
    parser.add_argument("--keep", action="store_true", help="keep the temporary datadirs (logs) afterwards")
    parser.add_argument("--paid", action="store_true", help="a paid tower: a payment channel, a paid "
                        "registration, an appointment, and the tower's claim confirmed")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="teos-demo-"))
    try:
        run_demo(workdir, paid=args.paid)
    except Exception as e:
        print(f"[demo] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"[demo] logs kept in {workdir}", file=sys.stderr)
        sys.exit(1)
    if args.keep:
        _say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    _say("done")


if __name__ == "__main__":
    main()
