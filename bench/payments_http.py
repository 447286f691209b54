"""Paid tower over HTTP: what payments cost teosd, and whether a flood of them can blind it.

Starts ``teos-regtest`` and a paid ``teosd`` (free loopback ports, temporary datadirs), funds and opens one
channel per thread with real transactions, then measures, one after the other:

1. accepted ``/pay`` per second: ``--threads`` threads, each its own user on its own channel, over a
   keep-alive connection (each payment: the worker's signature checks, a ``gettxout``, a compare-and-swap
   and a grant synced to disk, a signed receipt and acknowledgement);
2. forged ``/pay`` refused per second (a signature that is not the channel key's: refused in the API
   worker, nothing asked of bitcoind, nothing written);
3. a flood of ``/open_channel`` with valid signatures for outpoints that do not exist (each costs a
   ``gettxout``, at most two at once) from ``--threads`` threads, while blocks are mined: how long teosd
   takes to process each block during the flood, against the same without the flood.

Every client of the benchmark is on 127.0.0.1, so teosd runs with ``--behindproxy`` (as behind Tor): no
per-address limit (request rate, threads, channel openings) thins the load, and what is measured is
teosd's own capacity and its global bounds.

Prints one JSON object of figures; asserts nothing.

    .venv/bin/python bench/payments_http.py [--payments 400] [--threads 8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import crypto, script
from common.channel import ChannelId, ChannelParams
from common.channel_wire import make_open_request
from common.client import TowerClient
from common.cookie import read_cookie
from common.payment_client import PLACEHOLDER_ID, ChannelRecord, PaymentClient
from common.tx import TxOut
from common.types import Dialect, Txid
from teos.cli.teos_cli import AdminClient
from teos.devtools import free_port, wait_until
from tests.support.bitcoind import SimulatorHandle
from tests.support.processes import Teosd, teosd_args

PRICE = 1_000


def _processed(admin: AdminClient) -> int:
    height: int = admin.get_tower_info()["last_processed_block"]["height"] or 0
    return height


def _reached(admin: AdminClient, target: int) -> bool:
    return _processed(admin) >= target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=400, help="accepted payments to time (in all)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the flood")
    parser.add_argument("--blocks", type=int, default=10, help="blocks mined with and without the flood")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="payments-http-"))
    node = SimulatorHandle(work / "bitcoind")
    node.start()
    api_port, admin_port = free_port(), free_port()
    extra = ["--pollinterval", "1", "--paymentprice", str(PRICE), "--paymentminconf", "1",
             "--paymentminblocks", "20", "--paymentclaimmargin", "10", "--paymentbumpmargin", "4",
             "--rpcport", str(admin_port),
             "--behindproxy"]  # fmt: skip  # every client here is 127.0.0.1: measure the global bounds
    cmd = teosd_args(work / "teos", api_port, node.rpc_host, node.rpc_port, node.rpc_user, node.rpc_password,
                     node.zmq_url, extra)  # fmt: skip
    teosd = Teosd(work / "teos", cmd, api_port)
    figures: dict[str, object] = {}
    try:
        teosd.start()
        teosd.wait_ready(60)
        tower_id = teosd.tower_id()
        admin = AdminClient("127.0.0.1", admin_port, read_cookie(work / "teos" / "regtest"))
        wallet = node.wallet()
        wallet.fund(count=args.threads, value=5_000_000)
        coins = wallet.take(args.threads)
        users = [TowerClient("127.0.0.1", api_port, Dialect.RUST) for _ in range(args.threads)]
        terms, _ = PaymentClient(users[0], tower_id).terms()
        expiry = node.rpc("getblockcount") + 1000
        records = []
        for i, coin in enumerate(coins):
            secret = hashlib.sha256(f"bench channel {i}".encode()).digest()
            key = crypto.public_key(secret).raw
            params = ChannelParams(PLACEHOLDER_ID, 4_000_000, key, terms.tower_key, expiry,
                                   script.p2wpkh(key), terms.fee_rate)  # fmt: skip
            tx = wallet.build([coin], [TxOut(params.funding_value, params.script_pubkey)], change=True)
            node.rpc("sendrawtransaction", tx.hex)
            params = replace(params, channel_id=ChannelId(tx.txid, 0))
            records.append(ChannelRecord(tower_id, "", terms, secret, params, funded=True))
        node.mine(1)
        wait_until(lambda: _processed(admin) >= node.rpc("getblockcount"), 30, "teosd at the tip")
        records = [PaymentClient(u, tower_id).open_channel(r) for u, r in zip(users, records, strict=True)]

        # 1. accepted payments
        per_thread = max(1, args.payments // args.threads)
        latencies: list[float] = []
        lock = threading.Lock()

        def pay(i: int) -> None:
            client, record = PaymentClient(users[i], tower_id), records[i]
            mine: list[float] = []
            for _ in range(per_thread):
                t0 = time.perf_counter()
                record = client.pay(record).record
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=pay, args=(i,)) for i in range(args.threads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        latencies.sort()
        figures["pay_accepted_per_s"] = round(len(latencies) / elapsed, 1)
        figures["pay_p50_ms"] = round(1000 * latencies[len(latencies) // 2], 1)
        figures["pay_p99_ms"] = round(1000 * latencies[int(len(latencies) * 0.99)], 1)

        # 2. forged payments
        forged_done = [0]

        def forge(i: int) -> None:
            client = users[i]
            record = records[i]
            body = {"channel_id": str(record.channel_id), "nonce": 10**6, "amount": 10**6 * PRICE,
                    "payment_tx": "00", "payment_signature": "00", "user_id": client.user_id.hex(),
                    "signature": crypto.sign(b"forged", os.urandom(32))}  # fmt: skip
            n = 0
            until = time.perf_counter() + args.seconds / 2
            while time.perf_counter() < until:
                status, _ = client.request("POST", "/pay", body)
                assert status == 400
                n += 1
            with lock:
                forged_done[0] += n

        threads = [threading.Thread(target=forge, args=(i,)) for i in range(args.threads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        figures["pay_forged_refused_per_s"] = round(forged_done[0] / (time.perf_counter() - start), 1)

        # 3. blocks during an /open_channel flood
        def block_latency(n: int) -> list[float]:
            out = []
            for _ in range(n):
                target = node.rpc("getblockcount") + 1
                t0 = time.perf_counter()
                node.mine(1)
                wait_until(functools.partial(_reached, admin, target), 60, "the block processed")
                out.append(time.perf_counter() - t0)
            return out

        quiet = block_latency(args.blocks)
        stop = threading.Event()
        opened = [0, 0]  # answered, of which 503 (the funding checks were busy)

        def flood(i: int) -> None:
            client = TowerClient("127.0.0.1", api_port, Dialect.RUST)
            secret = os.urandom(32)
            key = crypto.public_key(secret).raw
            n = busy = 0
            while not stop.is_set():
                cid = ChannelId(Txid(os.urandom(32)), 0)
                params = ChannelParams(cid, 100_000, key, terms.tower_key, expiry, script.p2wpkh(key),
                                       terms.fee_rate)  # fmt: skip
                status, _ = client.request(
                    "POST", "/open_channel", make_open_request(params, secret).to_json()
                )
                n += 1
                busy += status == 503
            with lock:
                opened[0] += n
                opened[1] += busy

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(args.threads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        flooded = block_latency(args.blocks)
        stop.set()
        for t in threads:
            t.join()
        figures["open_flood_requests_per_s"] = round(opened[0] / (time.perf_counter() - start), 1)
        figures["open_flood_answered_503_share"] = round(opened[1] / max(1, opened[0]), 3)
        figures["block_to_processed_ms_quiet_median"] = round(1000 * statistics.median(quiet), 1)
        figures["block_to_processed_ms_flood_median"] = round(1000 * statistics.median(flooded), 1)
        figures["block_to_processed_ms_flood_max"] = round(1000 * max(flooded), 1)
        figures["threads"] = args.threads
    finally:
        teosd.stop()
        node.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
