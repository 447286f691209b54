"""``teos-regtest``: run the bitcoind regtest simulator until SIGTERM/SIGINT or the ``stop`` RPC."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from teos.regtest import faults, scriptcheck
from teos.regtest.simulator import Simulator

DESCRIPTION = """\
A bitcoind regtest stand-in for testing the tower: Bitcoin Core's JSON-RPC over HTTP on 127.0.0.1
(JSON-RPC 1.0/2.0, batches, basic auth), ZMQ hashblock and rawtx on one PUB endpoint (3 frames: topic,
body, 4-byte little-endian sequence per topic), and a chain persisted in DATADIR/regtest/sim/ so a restart
keeps it. Prints one ready line "teos-regtest ready rpcport=P zmqport=Z datadir=D" once it serves.

Authentication: with --rpcpassword, user/password only; without it, a cookie "__cookie__:<hex>" is
written to DATADIR/regtest/.cookie (mode 600) and removed at a clean stop, as Bitcoin Core does.

Scripts and signatures: every input entering the mempool or a block is verified by Bitcoin Core's own
interpreter (libbitcoinkernel, from the py-bitcoinkernel package, import name pbk), with Core's policy flags
in the mempool and the consensus flags of the height in blocks; rejections carry Core's codes and messages
(-26 "mempool-script-verify-flag-failed (<reason>), input N of ...", "non-BIP68-final"; in blocks
"block-script-verify-flag-failed (<reason>)", "bad-txns-nonfinal"). BIP68 relative lock-times are enforced.
Where py-bitcoinkernel cannot be loaded (it has wheels for CPython 3.11-3.13), NOTHING is verified: any
witness is accepted, a WARNING is logged at start and getnetworkinfo lists it under "warnings".
On this installation: {validation}.

Fidelity limits: no real proof of work (bits 207fffff, the nonce is ground until the double-SHA256 block
hash meets that target, which takes about two tries); no P2P; no sigop, non-standard input or witness
(AreInputsStandard/IsWitnessStandard) or package limits. Blocks, coinbases (BIP34 height, BIP141 witness
commitment, 50 BTC halving every 150 blocks), txids, UTXO set, coinbase maturity, double spends, fees, full
RBF, reorganisations and their mempool effects are real.

Fault knobs, also available at runtime as RPCs that real Bitcoin Core answers with -32601:
  sim_warmup(seconds, [message])   answer -28 "Loading block index…" for seconds (<0: until sim_warmup(0))
  sim_dropzmq(topic, n)            drop the next n hashblock/rawtx/all messages (sequence still advances)
  sim_prune(height)                pretend blocks below height are pruned (getblock -1); 0 turns it off
  sim_hang(seconds, [mode])        mode "hang": hold requests unanswered; "refuse": close the RPC port
  sim_zmq("kill"|"revive")         close the ZMQ socket / rebind it on the same port
  sim_fail(method, code, message, [count])  make the next count calls of method fail with that error
  sim_latency(seconds)             delay every RPC answer
  sim_garble(method, kind, [count], [seconds])  malform the next count answers to method: wrong_type,
                                   wrong_field_type, missing_field, bad_value, cut_body, cut_stream,
                                   html_500, busy_503 (Core's "Work queue depth exceeded"), hang
                                   (seconds, default 3); sim_garble(method) clears
  sim_status()                     show the knobs and the ZMQ sequence numbers
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = list(sys.argv[1:] if argv is None else argv)
    if not {"-h", "--help"} & set(args):
        validation = "run with --help to see"  # loading the kernel here would log before logging is set
    elif scriptcheck.available():
        validation = "scripts ARE validated (libbitcoinkernel loaded)"
    else:
        validation = f"scripts are NOT validated ({scriptcheck.unavailable_reason()})"
    p = argparse.ArgumentParser(
        prog="teos-regtest",
        description=DESCRIPTION.format(validation=validation),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--datadir", required=True, help="data directory (chain in DATADIR/regtest/sim/)")
    p.add_argument("--rpcport", type=int, default=18443, help="RPC port on 127.0.0.1 (0: any free port)")
    p.add_argument("--zmqport", type=int, default=28332, help="ZMQ PUB port on 127.0.0.1 (0: any free port)")
    p.add_argument("--rpcuser", default=None, help="RPC user (with --rpcpassword)")
    p.add_argument("--rpcpassword", default=None, help="RPC password; without it cookie auth is used")
    p.add_argument(
        "--txindex", action="store_true", help="like -txindex: getrawtransaction finds confirmed txs"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer -28 'Loading block index…' for SECONDS after start (<0: until sim_warmup(0))",
    )
    p.add_argument(
        "--prune-below", type=int, default=0, metavar="HEIGHT", help="pretend blocks below HEIGHT are pruned"
    )
    p.add_argument(
        "--drop-zmq",
        action="append",
        default=[],
        metavar="TOPIC:N",
        help="drop the first N messages of TOPIC (hashblock, rawtx or all); repeatable",
    )
    p.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay every RPC answer")
    p.add_argument(
        "--garble",
        action="append",
        default=[],
        metavar="METHOD:KIND[:N]",
        help="malform the first N (default 1) answers to METHOD in the way KIND says (see sim_garble)",
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING...)")
    return p.parse_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sim = Simulator(args.datadir, args.rpcport, args.zmqport, args.rpcuser, args.rpcpassword, args.txindex)
    drops = []
    for item in args.drop_zmq:
        topic, _, count = item.partition(":")
        try:
            drops.append((topic, int(count)))
        except ValueError:
            print(f"teos-regtest: bad --drop-zmq {item!r}, expected TOPIC:N", file=sys.stderr)
            return 2

    garbles = []
    for item in args.garble:
        method, _, rest = item.partition(":")
        kind, _, count = rest.partition(":")
        try:
            garbles.append([method, faults.check_kind(kind), int(count or 1)])
        except ValueError as e:
            print(f"teos-regtest: bad --garble {item!r}, expected METHOD:KIND[:N] ({e})", file=sys.stderr)
            return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sim.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.warmup:
        sim.fault("sim_warmup", [args.warmup])
    try:
        sim.start()
    except OSError as e:
        print(f"teos-regtest: cannot start: {e}", file=sys.stderr)
        sim.stop()
        return 1
    for topic, count in drops:
        sim.fault("sim_dropzmq", [topic, count])
    if args.prune_below:
        sim.fault("sim_prune", [args.prune_below])
    if args.latency:
        sim.fault("sim_latency", [args.latency])
    for garble in garbles:
        sim.fault("sim_garble", garble)
    print(
        f"teos-regtest ready rpcport={sim.rpc_port} zmqport={sim.zmq_port} datadir={sim.datadir}", flush=True
    )
    while not sim.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
