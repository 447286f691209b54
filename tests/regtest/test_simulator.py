"""Simulator-only behaviour: persistence across restarts, cookie auth, fault knobs, ZMQ framing, the CLI."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.tx import TxOut, decode_transaction
from teos.regtest import scriptcheck
from teos.regtest.simulator import Simulator
from teos.regtest.wallet import Wallet
from tests.regtest.conftest import Client, http_request
from tests.support import RPCError, ZmqSubscriber, wait_until
from tests.support.bitcoind import BURN_ADDRESS, BitcoindHandle, HTTPStatusError, rpc_call


def rpc_error(call: Client | BitcoindHandle, method: str, *params: object) -> RPCError:
    fn = call.rpc if isinstance(call, BitcoindHandle) else call
    with pytest.raises(RPCError) as info:
        fn(method, *params)
    return info.value


# -- persistence ----------------------------------------------------------------------------------------


def test_chain_and_mempool_survive_clean_restart(simulator: BitcoindHandle) -> None:
    wallet = simulator.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    wallet.send(pair.commitment)
    best = simulator.rpc("getbestblockhash")
    height = simulator.rpc("getblockcount")
    simulator.stop()
    with pytest.raises(OSError):
        simulator.rpc("getblockcount", timeout=2)
    simulator.start()
    assert simulator.rpc("getbestblockhash") == best
    assert simulator.rpc("getblockcount") == height
    assert simulator.rpc("getrawmempool") == [pair.commitment.txid.hex()]
    # the UTXO set was rebuilt: the penalty spends the commitment, mining confirms both
    wallet.send(pair.penalty)
    simulator.mine(1)
    err = rpc_error(simulator, "sendrawtransaction", pair.penalty.hex)
    assert err.code == -27


def test_chain_survives_sigkill_and_invalidations_persist(simulator: BitcoindHandle) -> None:
    hashes = simulator.mine(5)
    simulator.rpc("invalidateblock", hashes[3])
    assert simulator.rpc("getblockcount") == 3
    simulator.kill()
    simulator.start()
    assert simulator.rpc("getblockcount") == 3
    assert simulator.rpc("getblockheader", hashes[4])["confirmations"] == -1
    simulator.rpc("reconsiderblock", hashes[3])
    assert simulator.rpc("getbestblockhash") == hashes[4]
    simulator.kill()
    simulator.start()
    assert simulator.rpc("getbestblockhash") == hashes[4]


def test_torn_journal_tail_is_dropped(tmp_path: Path) -> None:
    sim = Simulator(tmp_path / "d", rpcuser="u", rpcpassword="p")
    sim.start()
    hashes = sim.chain.generate(b"\x00\x14" + bytes(20), 3)
    sim.stop()
    journal = tmp_path / "d" / "regtest" / "sim" / "chain.dat"
    with open(journal, "ab") as f:
        f.write(b"B\xff\xff\x00\x00partial")
    again = Simulator(tmp_path / "d", rpcuser="u", rpcpassword="p")
    again.start()
    try:
        assert again.chain.tip.hash == hashes[-1]
    finally:
        again.stop()


# -- cookie ---------------------------------------------------------------------------------------------


def test_cookie_auth_written_and_removed(tmp_path: Path) -> None:
    sim = Simulator(tmp_path / "c")
    sim.start()
    try:
        cookie_file = tmp_path / "c" / "regtest" / ".cookie"
        text = cookie_file.read_text()
        user, _, password = text.partition(":")
        assert user == "__cookie__" and len(password) == 64 and int(password, 16) >= 0
        assert oct(cookie_file.stat().st_mode & 0o777) == "0o600"
        assert rpc_call("127.0.0.1", sim.rpc_port, user, password, "getblockcount", []) == 0
        with pytest.raises(HTTPStatusError) as info:
            rpc_call("127.0.0.1", sim.rpc_port, user, "0" * 64, "getblockcount", [])
        assert info.value.status == 401
    finally:
        sim.stop()
    assert not cookie_file.exists()


def test_no_cookie_with_password(sim: Simulator) -> None:
    assert not sim.cookie_path.exists()


# -- fault knobs ----------------------------------------------------------------------------------------


def test_warmup_answers_28_until_cleared(sim: Simulator, rpc: Client) -> None:
    rpc("sim_warmup", -1)
    err = rpc_error(rpc, "getblockcount")
    assert (err.code, err.message) == (-28, "Loading block index…")
    rpc("sim_warmup", -1, "Verifying blocks…")
    assert rpc_error(rpc, "getbestblockhash").message == "Verifying blocks…"
    rpc("sim_warmup", 0)
    assert rpc("getblockcount") == 0
    rpc("sim_warmup", 0.3)
    assert rpc_error(rpc, "getblockcount").code == -28
    assert wait_until(lambda: _answers(rpc), timeout=5)


def _answers(rpc: Client) -> bool:
    try:
        rpc("getblockcount")
        return True
    except (RPCError, OSError, http.client.HTTPException):
        return False


def test_prune_knob(sim: Simulator, rpc: Client) -> None:
    hashes = rpc("generatetoaddress", 5, BURN_ADDRESS)
    rpc("sim_prune", 3)
    info = rpc("getblockchaininfo")
    assert info["pruned"] is True and info["pruneheight"] == 3
    err = rpc_error(rpc, "getblock", hashes[1])
    assert (err.code, err.message) == (-1, "Block not available (pruned data)")
    assert rpc("getblock", hashes[3])["height"] == 4
    assert rpc("getblockheader", hashes[1])["height"] == 2  # headers stay available
    rpc("sim_prune", 0)
    assert rpc("getblockchaininfo")["pruned"] is False


def test_hang_and_refuse(sim: Simulator, rpc: Client) -> None:
    rpc("sim_hang", 0.5, "hang")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        rpc_call("127.0.0.1", sim.rpc_port, "alice", "secret", "getblockcount", [], timeout=0.2)
    assert rpc("getblockcount") == 0
    assert time.monotonic() - started >= 0.45

    rpc("sim_hang", 0.6, "refuse")
    assert wait_until(lambda: _refused(sim), timeout=5)
    assert wait_until(lambda: _answers(rpc), timeout=5)


def _refused(sim: Simulator) -> bool:
    try:
        rpc_call("127.0.0.1", sim.rpc_port, "alice", "secret", "getblockcount", [], timeout=1)
        return False
    except (ConnectionRefusedError, http.client.RemoteDisconnected, ConnectionResetError):
        return True


def test_sim_fail_and_latency(rpc: Client) -> None:
    rpc("sim_fail", "sendrawtransaction", -26, "mempool full", 2)
    assert rpc_error(rpc, "sendrawtransaction", "00").message == "mempool full"
    assert rpc_error(rpc, "sendrawtransaction", "00").message == "mempool full"
    assert rpc_error(rpc, "sendrawtransaction", "00").code == -22
    rpc("sim_latency", 0.2)
    started = time.monotonic()
    rpc("getblockcount")
    assert time.monotonic() - started >= 0.2
    rpc("sim_latency", 0)
    assert rpc_error(rpc, "sim_hang", 1, "sideways").code == -8


def test_zmq_framing_sequences_and_drops(sim: Simulator, rpc: Client) -> None:
    wallet = Wallet(rpc)
    with ZmqSubscriber(sim.zmq_url) as sub:
        sub.prime(lambda: rpc("generatetoaddress", 1, BURN_ADDRESS))
        first_seq = rpc("sim_status")["zmq_sequence"]["hashblock"]
        hashes = rpc("generatetoaddress", 2, BURN_ADDRESS)
        blocks = sub.collect(2, "hashblock")
        assert [m.body.hex() for m in blocks] == hashes
        assert [m.sequence for m in blocks] == [first_seq, first_seq + 1]
        assert all(len(m.body) == 32 for m in blocks)

        rpc("sim_dropzmq", "hashblock", 2)
        hashes = rpc("generatetoaddress", 3, BURN_ADDRESS)
        (after_gap,) = sub.collect(1, "hashblock")
        assert after_gap.sequence == first_seq + 4 and after_gap.body.hex() == hashes[2]

        rpc("sim_zmq", "kill")
        rpc("generatetoaddress", 1, BURN_ADDRESS)
        rpc("sim_zmq", "revive")

        # the subscriber reconnects by itself; keep mining until a block gets through
        def next_block_seen() -> bool:
            expected = rpc("generatetoaddress", 1, BURN_ADDRESS)[0]
            return any(m.body.hex() == expected for m in sub.pending("hashblock", quiet=0.2))

        assert wait_until(next_block_seen, timeout=10, interval=0.05)
    coins = wallet.fund(count=1)
    tx = wallet.build([coins[0]], [TxOut(coins[0].value, wallet.script_pubkey)])
    with ZmqSubscriber(sim.zmq_url, ("rawtx",)) as sub:
        sub.prime(lambda: rpc("generatetoaddress", 1, BURN_ADDRESS))
        rpc("sendrawtransaction", tx.hex)
        msg = sub.next()
        assert decode_transaction(msg.body).txid == tx.txid


# -- command line ---------------------------------------------------------------------------------------


def test_cli_help_documents_knobs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "teos.regtest", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for needle in (
        "--datadir",
        "--rpcport",
        "--zmqport",
        "--rpcuser",
        "--rpcpassword",
        ".cookie",
        "sim_warmup",
        "sim_dropzmq",
        "sim_prune",
        "sim_hang",
        "sim_zmq",
        "--warmup",
        "--prune-below",
        "--drop-zmq",
        "mempool-script-verify-flag-failed",
        "non-BIP68-final",
        "NOTHING is verified",
    ):
        assert needle in out, needle
    state = "ARE validated" if scriptcheck.available() else "are NOT validated"
    assert f"On this installation: scripts {state}" in " ".join(out.split())


def test_cli_ready_line_and_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "teos.regtest",
            "--datadir",
            str(tmp_path / "d"),
            "--rpcport",
            "0",
            "--zmqport",
            "0",
            "--warmup",
            "-1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("teos-regtest ready rpcport=")
        fields = dict(part.split("=", 1) for part in line.split()[2:])
        cookie = (tmp_path / "d" / "regtest" / ".cookie").read_text()
        user, _, password = cookie.partition(":")
        with pytest.raises(RPCError) as info:
            rpc_call("127.0.0.1", int(fields["rpcport"]), user, password, "getblockcount", [])
        assert info.value.code == -28
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not (tmp_path / "d" / "regtest" / ".cookie").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_is_quick(tmp_path: Path) -> None:
    started = time.monotonic()
    sim = Simulator(tmp_path / "q", rpcuser="u", rpcpassword="p")
    sim.start()
    try:
        assert time.monotonic() - started < 1.0
        assert http_request(sim.rpc_port, '{"id":1,"method":"getblockcount"}', auth=("u", "p")).status == 200
    finally:
        sim.stop()
    assert os.path.exists(tmp_path / "q" / "regtest" / "sim")
