"""What script validation costs the teos-regtest simulator.

Prints, per input: Bitcoin Core's interpreter through libbitcoinkernel (consensus flags), the Python port
with Core's standard policy flags (it words the reject reasons), a full uncached mempool check (both), and
a cache hit (what mining an already verified mempool transaction costs); then a workload through a running
simulator (fund a wallet, broadcast commitment/penalty pairs, mine them) with its verification counters.

    .venv/bin/python bench/regtest_scripts.py [--pairs 50] [--rounds 2000]
    TEOS_REGTEST_NO_KERNEL=1 .venv/bin/python bench/regtest_scripts.py   # the same workload, unverified
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable

from common.tx import TxOut
from common.types import Txid
from teos.regtest import scriptcheck
from teos.regtest.interpreter import STANDARD_FLAGS, TxContext, verify_input
from teos.regtest.scriptcheck import ScriptChecker, block_script_flags
from teos.regtest.simulator import Simulator
from teos.regtest.wallet import Coin, SignedTx, Wallet


def per_call_us(fn: Callable[[], object], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds * 1e6


def offline_spends() -> dict[str, tuple[SignedTx, list[TxOut]]]:
    """A P2WPKH spend and a to_local revocation-branch spend, signed, without any node."""
    wallet = Wallet(lambda *args: None, seed=b"bench")
    coin = Coin(Txid(hashlib.sha256(b"bench-prev").digest()), 0, 1_000_000, wallet.script_pubkey)
    wallet.add_coin(coin)  # breach_pair spends it
    pair = wallet.breach_pair()
    p2wpkh = pair.commitment
    return {
        "p2wpkh": (p2wpkh, [TxOut(coin.value, coin.script_pubkey)]),
        "to_local": (pair.penalty, [TxOut(pair.commitment.tx.outputs[0].value, pair.to_local.script_pubkey)]),
    }


def bench_inputs(rounds: int) -> None:
    for name, (tx, spent) in offline_spends().items():
        bench_input(name, tx, spent, rounds)


def bench_input(name: str, tx: SignedTx, spent: list[TxOut], rounds: int) -> None:
    flags = block_script_flags(200)
    port = per_call_us(lambda: verify_input(TxContext(tx.tx, spent), 0, int(STANDARD_FLAGS)), rounds)
    print(f"{name:9s} port, standard flags:         {port:8.1f} us/input")
    if not scriptcheck.available():
        return
    kernel = per_call_us(lambda: ScriptChecker(cache_size=0).check(tx.tx, spent, flags), rounds)
    print(f"{name:9s} kernel, consensus flags:      {kernel:8.1f} us/input (uncached)")

    def mempool() -> None:
        checker = ScriptChecker()
        checker.check(tx.tx, spent, int(STANDARD_FLAGS))  # port + kernel
        checker.check(tx.tx, spent, flags)  # ConsensusScriptChecks: a cache hit

    print(f"{name:9s} mempool (policy + consensus): {per_call_us(mempool, rounds):8.1f} us/input (uncached)")
    warm = ScriptChecker()
    warm.check(tx.tx, spent, flags)
    hit = per_call_us(lambda: warm.check(tx.tx, spent, flags), rounds)
    print(f"{name:9s} cache hit (block after pool): {hit:8.1f} us")


def bench_workload(pairs: int) -> None:
    with tempfile.TemporaryDirectory() as datadir:
        sim = Simulator(datadir, rpcuser="bench", rpcpassword="bench")
        sim.start()
        try:
            rpc = sim.dispatcher.call
            wallet = Wallet(lambda method, *params: rpc(method, list(params)), seed=b"bench-workload")
            start = time.perf_counter()
            wallet.fund(count=pairs + 2)
            funded = time.perf_counter()
            built = [wallet.breach_pair() for _ in range(pairs)]
            sent = time.perf_counter()
            for pair in built:
                wallet.send(pair.commitment)
                wallet.send(pair.penalty)
            broadcast = time.perf_counter()
            rpc("generatetoaddress", [1, wallet.address()])
            mined = time.perf_counter()
            checker = sim.chain.scripts
            state = "verified" if scriptcheck.available() else "NOT verified"
            print(f"workload ({state}): fund {funded - start:.3f} s, build {sent - funded:.3f} s, ")
            print(
                f"  broadcast {2 * pairs} txs {broadcast - sent:.3f} s "
                f"({(broadcast - sent) / (2 * pairs) * 1000:.2f} ms/tx), "
                f"mine them {mined - broadcast:.3f} s"
            )
            print(f"  inputs run through the kernel: {checker.verified_inputs}, hits: {checker.cache_hits}")
        finally:
            sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=50, help="commitment/penalty pairs in the workload")
    parser.add_argument("--rounds", type=int, default=2000, help="repetitions of each per-input measurement")
    args = parser.parse_args()
    print(f"libbitcoinkernel: {'loaded' if scriptcheck.available() else scriptcheck.unavailable_reason()}")
    bench_inputs(args.rounds)
    bench_workload(args.pairs)


if __name__ == "__main__":
    main()
