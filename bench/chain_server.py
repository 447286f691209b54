"""A synthetic regtest chain of big blocks, in memory or served over bitcoind's JSON-RPC, for the benchmarks.

Block ``h`` holds ``txs`` transactions whose ids are ``sha256(seed || h || i)``; its hash is
``sha256("block" || seed || h)``. Both the in-process ``SyntheticChain`` (the engine's ``ChainSource``,
answering with ready-made objects: no fetch cost) and the HTTP server (``serve``, a separate process
answering ``getblock`` and friends with the JSON Bitcoin Core sends, built per request as bitcoind does)
describe the same chain, so the engine's catch-up can be timed with and without fetching blocks.

The server's tip starts at ``--tip`` and moves with the non-Core call ``bench_settip`` (so an engine can
first start at one height and later find the rest to catch up on).

    python bench/chain_server.py --port PORT --blocks N --txs 4000 --tip H [--seed S]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.tx import decode_transaction
from common.types import BlockHash, Txid, Txids
from teos.chain.bitcoind import Block, BlockHeader, ChainInfo, RPCError, TxInfo


def block_hash(seed: bytes, height: int) -> bytes:
    """Internal-order hash of block ``height``."""
    return hashlib.sha256(b"block" + seed + struct.pack(">I", height)).digest()


def block_txids(seed: bytes, height: int, txs: int) -> list[bytes]:
    """Internal-order txids of block ``height`` (its first is the "coinbase")."""
    prefix = seed + struct.pack(">I", height)
    return [hashlib.sha256(prefix + struct.pack(">I", i)).digest() for i in range(txs)]


class SyntheticChain:
    """The chain as the engine's chain source (``tip`` can be moved).

    With ``prebuilt`` every block is built up front, so serving one costs nothing (the catch-up's
    "processing only" figure); otherwise each block is built when asked for and not kept, so the chain
    adds nothing to the memory the benchmark measures (a real bitcoind is another process).
    """

    def __init__(self, seed: bytes, blocks: int, txs: int, tip: int, prebuilt: bool = False) -> None:
        self.seed = seed
        self.txs = txs
        self.tip = tip
        self.hashes = [BlockHash(block_hash(seed, h)) for h in range(blocks)]
        self.height_of = {bh: h for h, bh in enumerate(self.hashes)}
        self.prebuilt = [self._build(h) for h in range(blocks)] if prebuilt else None

    def _build(self, h: int) -> Block:
        # txids held as bitcoind's blocks are parsed (``Txids``), so that both catch-ups process the same
        prev = self.hashes[h - 1] if h else None
        return Block(self.hashes[h], h, prev, Txids.from_raw(block_txids(self.seed, h, self.txs)))

    def block(self, h: int) -> Block:
        return self.prebuilt[h] if self.prebuilt is not None else self._build(h)

    def get_blockchain_info(self) -> ChainInfo:
        return ChainInfo("regtest", self.tip, self.hashes[self.tip], False, 0, False)

    def get_best_block_hash(self) -> BlockHash:
        return self.hashes[self.tip]

    def get_block_hash(self, height: int) -> BlockHash:
        if not 0 <= height <= self.tip:
            raise RPCError(-8, "Block height out of range")
        return self.hashes[height]

    def get_block(self, block_hash: BlockHash) -> Block:
        return self.block(self.height_of[block_hash])

    def get_block_header(self, block_hash: BlockHash) -> BlockHeader:
        h = self.height_of[block_hash]
        return BlockHeader(block_hash, h, self.hashes[h - 1] if h else None, self.tip - h + 1)

    def send_raw_transaction(self, raw_tx: bytes) -> Txid:
        return decode_transaction(raw_tx).txid

    def get_raw_transaction(self, txid: Txid, block_hash: BlockHash | None = None) -> TxInfo | None:
        return None

    def close(self) -> None:
        pass


# -- the JSON-RPC server ------------------------------------------------------------------------------


class _Raw(str):
    """A result already encoded as JSON."""


class _Chain:
    def __init__(self, seed: bytes, blocks: int, txs: int, tip: int) -> None:
        self.seed = seed
        self.blocks = blocks
        self.txs = txs
        self.tip = tip
        self.by_hash = {block_hash(seed, h)[::-1].hex(): h for h in range(blocks)}
        # The txid lists, as JSON, made once: serving a block then costs about what it costs bitcoind
        # (C++) rather than this Python process hashing 4000 txids per request on a shared core.
        self.tx_json = [json.dumps([t[::-1].hex() for t in block_txids(seed, h, txs)]) for h in range(blocks)]

    def height_of(self, hex_hash: Any) -> int:
        h = self.by_hash.get(hex_hash) if isinstance(hex_hash, str) else None
        if h is None:
            raise RPCError(-5, "Block not found")
        return h

    def header(self, h: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hash": block_hash(self.seed, h)[::-1].hex(),
            "confirmations": self.tip - h + 1 if h <= self.tip else -1,
            "height": h,
            "version": 0x20000000,
            "time": 1_700_000_000 + 600 * h,
            "nTx": self.txs,
        }
        if h > 0:
            out["previousblockhash"] = block_hash(self.seed, h - 1)[::-1].hex()
        if h < self.tip:
            out["nextblockhash"] = block_hash(self.seed, h + 1)[::-1].hex()
        return out

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "getblockchaininfo":
            return {"chain": "regtest", "blocks": self.tip, "headers": self.tip,
                    "bestblockhash": block_hash(self.seed, self.tip)[::-1].hex(), "pruned": False,
                    "initialblockdownload": False, "verificationprogress": 1}  # fmt: skip
        if method == "getbestblockhash":
            return block_hash(self.seed, self.tip)[::-1].hex()
        if method == "getblockcount":
            return self.tip
        if method == "getblockhash":
            h = params[0]
            if not isinstance(h, int) or not 0 <= h <= self.tip:
                raise RPCError(-8, "Block height out of range")
            return block_hash(self.seed, h)[::-1].hex()
        if method == "getblockheader":
            return self.header(self.height_of(params[0]))
        if method == "getblock":
            h = self.height_of(params[0])
            return _Raw(json.dumps(self.header(h))[:-1] + ', "tx": ' + self.tx_json[h] + "}")
        if method == "sendrawtransaction":
            return decode_transaction(bytes.fromhex(params[0])).txid.hex()
        if method == "getrawtransaction":
            raise RPCError(-5, "No such mempool or blockchain transaction")
        if method == "bench_settip":
            self.tip = min(int(params[0]), self.blocks - 1)
            return self.tip
        raise RPCError(-32601, "Method not found")


def serve(port: int, chain: _Chain) -> None:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in several writes: no 40 ms stalls

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            try:
                with lock:
                    result, error = chain.call(request["method"], list(request.get("params") or [])), None
            except RPCError as e:
                result, error = None, {"code": e.code, "message": e.message}
            if isinstance(result, _Raw):
                body = ('{"result": ' + result + ', "error": null, "id": '
                        + json.dumps(request.get("id")) + "}").encode()
            else:
                body = json.dumps({"result": result, "error": error, "id": request.get("id")}).encode()
            self.send_response(500 if error else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--blocks", type=int, required=True)
    parser.add_argument("--txs", type=int, default=4000)
    parser.add_argument("--tip", type=int, required=True)
    parser.add_argument("--seed", default="bench")
    args = parser.parse_args()
    serve(args.port, _Chain(args.seed.encode(), args.blocks, args.txs, args.tip))


if __name__ == "__main__":
    main()
