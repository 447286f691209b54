"""Simulator-only sides of script validation: the per-(wtxid, flags) cache, mempool.dat reloads, the
regtest flag schedule, and the loud mode without libbitcoinkernel. Core's answers themselves are checked
against real Core in tests/conformance/test_script_validation.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from teos.regtest import scriptcheck
from teos.regtest.interpreter import MANDATORY_FLAGS, Flag
from teos.regtest.simulator import Simulator
from teos.regtest.wallet import Wallet
from tests.regtest.conftest import PASSWORD, USER, Client
from tests.support import RPCError
from tests.support.bitcoind import BitcoindHandle

needs_kernel = pytest.mark.skipif(
    not scriptcheck.available(), reason=f"py-bitcoinkernel unavailable: {scriptcheck.unavailable_reason()}"
)


def test_regtest_flag_schedule_is_cores() -> None:
    """GetBlockScriptFlags with Core v31's regtest heights: BIP65/66 and CSV at 1, segwit at 0."""
    genesis = Flag.P2SH | Flag.WITNESS | Flag.TAPROOT | Flag.NULLDUMMY
    assert scriptcheck.block_script_flags(0) == genesis
    assert scriptcheck.block_script_flags(1) == MANDATORY_FLAGS
    assert scriptcheck.block_script_flags(5000) == MANDATORY_FLAGS


@needs_kernel
def test_a_mined_mempool_transaction_is_not_verified_again(sim: Simulator, rpc: Client) -> None:
    wallet = Wallet(rpc)
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    checker = sim.chain.scripts
    before = checker.verified_inputs
    wallet.send(pair.commitment)
    wallet.send(pair.penalty)
    assert checker.verified_inputs == before + 2  # one kernel run per input, policy and consensus at once
    hits = checker.cache_hits
    rpc("generatetoaddress", 1, wallet.address())
    assert rpc("getrawmempool") == []
    assert checker.verified_inputs == before + 2
    assert checker.cache_hits == hits + 2  # the block's (wtxid, flags) were cached by the mempool


@needs_kernel
def test_transactions_not_from_the_mempool_are_verified_in_blocks(sim: Simulator, rpc: Client) -> None:
    wallet = Wallet(rpc)
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    before = sim.chain.scripts.verified_inputs
    rpc("generateblock", wallet.address(), [pair.commitment.hex, pair.penalty.hex])
    assert sim.chain.scripts.verified_inputs == before + 2


@needs_kernel
def test_mempool_dat_reload_verifies_scripts(tmp_path: Path) -> None:
    """A forged transaction written into mempool.dat (by hand, or by an older simulator that validated
    nothing) does not come back at start; valid ones do."""
    datadir = tmp_path / "sim"
    sim = Simulator(datadir, rpcuser=USER, rpcpassword=PASSWORD)
    sim.start()
    try:
        rpc = Client(sim)
        wallet = Wallet(rpc)
        wallet.fund(count=3)
        good = wallet.breach_pair().commitment
        bad = wallet.forged(wallet.breach_pair().commitment)
        wallet.send(good)
    finally:
        sim.stop()
    mempool_dat = datadir / "regtest" / "sim" / "mempool.dat"
    mempool_dat.write_text(json.dumps([good.hex, bad.hex]))
    sim = Simulator(datadir, rpcuser=USER, rpcpassword=PASSWORD)
    sim.start()
    try:
        assert Client(sim)("getrawmempool") == [good.txid.hex()]
    finally:
        sim.stop()


def test_without_the_kernel_the_simulator_says_so_and_validates_nothing(
    monkeypatch: pytest.MonkeyPatch, bitcoind_factory: Callable[..., BitcoindHandle]
) -> None:
    monkeypatch.setenv("TEOS_REGTEST_NO_KERNEL", "1")
    node = bitcoind_factory("simulator")
    warnings = node.rpc("getnetworkinfo")["warnings"]
    assert len(warnings) == 1 and "scripts and signatures are NOT validated" in warnings[0]
    log = (node.datadir / "node.log").read_text()
    assert "WARNING" in log and "NOT validated" in log
    wallet = node.wallet()
    wallet.fund(count=2)
    pair = wallet.breach_pair()
    forged = wallet.forged(pair.commitment)
    assert node.rpc("sendrawtransaction", forged.hex) == forged.txid.hex()  # Core would refuse it


@needs_kernel
def test_with_the_kernel_getnetworkinfo_has_no_warning(simulator: BitcoindHandle) -> None:
    assert simulator.rpc("getnetworkinfo")["warnings"] == []
    wallet = simulator.wallet()
    wallet.fund(count=2)
    forged = wallet.forged(wallet.breach_pair().commitment)
    with pytest.raises(RPCError) as info:
        simulator.rpc("sendrawtransaction", forged.hex)
    assert info.value.code == -26
