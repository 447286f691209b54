"""The simulator's RPC methods: Bitcoin Core's names, parameters, result shapes and errors.

``RpcDispatcher.call(method, params)`` checks the parameters the way Core's RPCHelpMan does (count,
named parameters, JSON types; errors -1, -8, -3), runs the method against the ``ChainState`` and returns a
JSON-ready value or raises ``RpcError``. Methods prefixed ``sim_`` are the simulator's fault knobs (real
Core answers -32601 to them); they are documented in ``teos-regtest --help``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from common.tx import (
    Block,
    Transaction,
    TxDecodeError,
    check_proof_of_work,
    decode_block,
    decode_transaction,
    decode_transaction_hex,
)
from common.types import BlockHash, Txid
from teos.regtest import errors as E
from teos.regtest import scriptcheck
from teos.regtest.address import (
    AddressError,
    address_for_script,
    descriptor_for_script,
    script_for_address,
    script_type,
)
from teos.regtest.chain import (
    COIN,
    INCREMENTAL_RELAY_FEE_PER_KVB,
    MEMPOOL_HEIGHT,
    MIN_RELAY_FEE_PER_KVB,
    REGTEST_BITS,
    BlockEntry,
    BlockNotAccepted,
    ChainState,
    MempoolEntry,
    bits_to_target,
)
from teos.regtest.errors import RpcError, TxReject
from teos.regtest.script import to_asm

CORE_VERSION = 319900
SUBVERSION = "/Satoshi:31.99.0(teos-regtest)/"
DEFAULT_MAX_FEERATE = 0.10  # BTC/kvB, sendrawtransaction and testmempoolaccept
NO_SUCH_MEMPOOL_TX = (
    "No such mempool transaction. Use -txindex or provide a block hash to enable blockchain transaction "
    "queries. Use gettransaction for wallet transactions."
)
NO_SUCH_TX_TXINDEX = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."


class NodeControl(Protocol):
    """What the RPC layer needs from the running simulator besides the chain."""

    txindex: bool
    started_at: float

    def request_stop(self) -> None: ...

    def fault(self, name: str, args: list[Any]) -> Any: ...


def btc(sats: int) -> float:
    return round(sats / COIN, 8)


def difficulty(bits: int) -> float:
    shift = (bits >> 24) & 0xFF
    diff = float(0x0000FFFF) / float(bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


_JSON_TYPES = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "object")


@dataclass(frozen=True)
class Param:
    name: str
    types: tuple[str, ...]  # accepted JSON types: "number", "string", "bool", "array", "object"
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class Method:
    func: Callable[..., Any]
    params: tuple[Param, ...]


def parse_hash(value: Any, name: str) -> bytes:
    """Core's ParseHashV: 64 hex characters, else -8 with Core's wording; returns display-order bytes."""
    if not isinstance(value, str):
        raise RpcError(
            E.RPC_TYPE_ERROR, f"JSON value of type {_json_type(value)} is not of expected type string"
        )
    if len(value) != 64:
        raise RpcError(
            E.RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')"
        )
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RpcError(
            E.RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')"
        ) from None


def _verbosity(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    raise RpcError(E.RPC_TYPE_ERROR, f"JSON value of type {_json_type(value)} is not of expected type number")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise RpcError(
            E.RPC_TYPE_ERROR, f"JSON value of type {_json_type(value)} is not of expected type number"
        )
    return int(value)


def _amount(value: Any) -> int:
    """An amount in BTC (number or numeric string) to satoshis, as Core's AmountFromValue."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RpcError(E.RPC_TYPE_ERROR, "Amount is not a number or string")
    try:
        sats = round(float(value) * COIN)
    except ValueError:
        raise RpcError(E.RPC_TYPE_ERROR, "Invalid amount") from None
    if sats < 0:
        raise RpcError(E.RPC_TYPE_ERROR, "Amount out of range")
    return sats


class RpcDispatcher:
    def __init__(self, chain: ChainState, node: NodeControl) -> None:
        self.chain = chain
        self.node = node
        self.methods: dict[str, Method] = {}
        self._register()

    # -- dispatch ---------------------------------------------------------------------------------------
    def call(self, name: str, params: list[Any] | dict[str, Any]) -> Any:
        method = self.methods.get(name)
        if method is None:
            raise RpcError(E.RPC_METHOD_NOT_FOUND, "Method not found")
        args = self._bind(name, method, params)
        return method.func(*args)

    def _bind(self, name: str, method: Method, params: list[Any] | dict[str, Any]) -> list[Any]:
        if isinstance(params, dict):
            names = [p.name for p in method.params]
            for key in params:
                if key not in names:
                    raise RpcError(E.RPC_INVALID_PARAMETER, f"Unknown named parameter {key}")
            positional = [params.get(p.name) for p in method.params]
        else:
            positional = list(params)
        if len(positional) > len(method.params) or any(
            p.required and (i >= len(positional) or positional[i] is None)
            for i, p in enumerate(method.params)
        ):
            usage = " ".join(p.name if p.required else f"( {p.name} )" for p in method.params)
            raise RpcError(E.RPC_MISC_ERROR, f"{name} {usage}".rstrip())
        args = []
        wrong: list[str] = []
        for i, p in enumerate(method.params):
            value = positional[i] if i < len(positional) else None
            if value is None:
                args.append(p.default)
                continue
            if p.types and _json_type(value) not in p.types:
                wrong.append(
                    f'    "Position {i + 1} ({p.name})": "JSON value of type {_json_type(value)} is not of '
                    f'expected type {p.types[0]}"'
                )
            args.append(value)
        if wrong:
            raise RpcError(E.RPC_TYPE_ERROR, "Wrong type passed:\n{\n" + ",\n".join(wrong) + "\n}")
        return args

    def _add(self, name: str, func: Callable[..., Any], *params: Param) -> None:
        self.methods[name] = Method(func, params)

    def _register(self) -> None:
        S, N, B, A = ("string",), ("number",), ("bool",), ("array",)
        NB = ("number", "bool")
        add = self._add
        add("getblockchaininfo", self.getblockchaininfo)
        add("getnetworkinfo", self.getnetworkinfo)
        add("getblockcount", lambda: self.chain.height)
        add("getbestblockhash", lambda: self.chain.tip.hash.hex())
        add("getdifficulty", lambda: difficulty(self.chain.tip.block.header.bits))
        add("getconnectioncount", lambda: 0)
        add("ping", lambda: None)
        add("uptime", lambda: int(time.time() - self.node.started_at))
        add("help", self.help, Param("command", S))
        add("stop", self.stop, Param("wait", N))
        add("getblockhash", self.getblockhash, Param("height", N, True))
        add(
            "getblockheader",
            self.getblockheader,
            Param("blockhash", S, True),
            Param("verbose", B, default=True),
        )
        add("getblock", self.getblock, Param("blockhash", S, True), Param("verbosity", NB, default=1))
        add("getchaintips", self.getchaintips)
        add(
            "getrawtransaction",
            self.getrawtransaction,
            Param("txid", S, True),
            Param("verbose", NB, default=0),
            Param("blockhash", S),
        )
        add(
            "decoderawtransaction",
            self.decoderawtransaction,
            Param("hexstring", S, True),
            Param("iswitness", B),
        )
        add(
            "sendrawtransaction",
            self.sendrawtransaction,
            Param("hexstring", S, True),
            Param("maxfeerate", ("number", "string"), default=DEFAULT_MAX_FEERATE),
            Param("maxburnamount", ("number", "string"), default=0),
        )
        add(
            "testmempoolaccept",
            self.testmempoolaccept,
            Param("rawtxs", A, True),
            Param("maxfeerate", ("number", "string"), default=DEFAULT_MAX_FEERATE),
        )
        add(
            "getrawmempool",
            self.getrawmempool,
            Param("verbose", B, default=False),
            Param("mempool_sequence", B, default=False),
        )
        add("getmempoolentry", self.getmempoolentry, Param("txid", S, True))
        add("getmempoolinfo", self.getmempoolinfo)
        add(
            "gettxout",
            self.gettxout,
            Param("txid", S, True),
            Param("n", N, True),
            Param("include_mempool", B, default=True),
        )
        add(
            "generatetoaddress",
            self.generatetoaddress,
            Param("nblocks", N, True),
            Param("address", S, True),
            Param("maxtries", N, default=1_000_000),
        )
        add(
            "generateblock",
            self.generateblock,
            Param("output", S, True),
            Param("transactions", A, True),
            Param("submit", B, default=True),
        )
        add("submitblock", self.submitblock, Param("hexdata", S, True), Param("dummy", S))
        add("invalidateblock", self.invalidateblock, Param("blockhash", S, True))
        add("reconsiderblock", self.reconsiderblock, Param("blockhash", S, True))
        add("setmocktime", self.setmocktime, Param("timestamp", N, True))
        add(
            "estimatesmartfee",
            self.estimatesmartfee,
            Param("conf_target", N, True),
            Param("estimate_mode", S, default="economical"),
        )
        add("validateaddress", self.validateaddress, Param("address", S, True))
        add("getindexinfo", self.getindexinfo, Param("index_name", S))
        for knob, nparams in (
            ("sim_warmup", 2),
            ("sim_dropzmq", 2),
            ("sim_prune", 1),
            ("sim_hang", 2),
            ("sim_zmq", 1),
            ("sim_fail", 4),
            ("sim_latency", 1),
            ("sim_garble", 4),
            ("sim_status", 0),
        ):
            self._add_knob(knob, nparams)

    def _add_knob(self, knob: str, nparams: int) -> None:
        params = tuple(Param(f"arg{i + 1}", ()) for i in range(nparams))
        self._add(knob, lambda *args: self.node.fault(knob, list(args)), *params)

    # -- lookups ----------------------------------------------------------------------------------------
    def _entry(self, value: Any, name: str = "blockhash") -> BlockEntry:
        block_hash = BlockHash.from_display_bytes(parse_hash(value, name))
        entry = self.chain.blocks.get(block_hash)
        if entry is None:
            raise RpcError(E.RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        return entry

    def _txid(self, value: Any, name: str = "txid") -> Txid:
        return Txid.from_display_bytes(parse_hash(value, name))

    def _script(self, address: str, message: str = "Error: Invalid address") -> bytes:
        try:
            return script_for_address(address)
        except AddressError:
            raise RpcError(E.RPC_INVALID_ADDRESS_OR_KEY, message) from None

    # -- chain info -------------------------------------------------------------------------------------
    def getblockchaininfo(self) -> dict[str, Any]:
        c = self.chain
        with c.lock:
            tip = c.tip
            header = tip.block.header
            info: dict[str, Any] = {
                "chain": "regtest",
                "blocks": c.height,
                "headers": max(e.height for e in c.blocks.values() if not e.failed),
                "bestblockhash": tip.hash.hex(),
                "bits": f"{header.bits:08x}",
                "target": f"{bits_to_target(header.bits):064x}",
                "difficulty": difficulty(header.bits),
                "time": header.time,
                "mediantime": c.median_time_past(tip),
                "verificationprogress": 1,
                "initialblockdownload": c.is_initial_block_download(),
                "chainwork": f"{tip.chainwork:064x}",
                "size_on_disk": c.size_on_disk,
                "pruned": c.prune_below > 0,
            }
            if c.prune_below > 0:
                info["pruneheight"] = min(c.prune_below, c.height + 1)
                info["automatic_pruning"] = False
            info["warnings"] = []
            return info

    def getnetworkinfo(self) -> dict[str, Any]:
        return {
            "version": CORE_VERSION,
            "subversion": SUBVERSION,
            "protocolversion": 70016,
            "localservices": "0000000000000c08",
            "localservicesnames": ["WITNESS", "NETWORK_LIMITED", "P2P_V2"],
            "localrelay": True,
            "timeoffset": 0,
            "networkactive": True,
            "connections": 0,
            "connections_in": 0,
            "connections_out": 0,
            "networks": [],
            "relayfee": btc(MIN_RELAY_FEE_PER_KVB),
            "incrementalfee": btc(INCREMENTAL_RELAY_FEE_PER_KVB),
            "localaddresses": [],
            "warnings": [w for w in (scriptcheck.validation_warning(),) if w],
        }

    def getindexinfo(self, index_name: str | None) -> dict[str, Any]:
        if not self.node.txindex or index_name not in (None, "txindex"):
            return {}
        return {"txindex": {"synced": True, "best_block_height": self.chain.height}}

    def help(self, command: str | None) -> str:
        if command is not None:
            if command not in self.methods:
                return f"help: unknown command: {command}"
            params = " ".join(p.name for p in self.methods[command].params)
            return f"{command} {params}".rstrip()
        return "\n".join(sorted(self.methods))

    def stop(self, wait: Any) -> str:
        self.node.request_stop()
        return "Bitcoin Core stopping"

    def getblockhash(self, height: Any) -> str:
        h = _int(height)
        with self.chain.lock:
            if h < 0 or h > self.chain.height:
                raise RpcError(E.RPC_INVALID_PARAMETER, "Block height out of range")
            return self.chain.active[h].hex()

    def _header_json(self, entry: BlockEntry) -> dict[str, Any]:
        c = self.chain
        h = entry.block.header
        out: dict[str, Any] = {
            "hash": entry.hash.hex(),
            "confirmations": c.confirmations(entry),
            "height": entry.height,
            "version": h.version,
            "versionHex": f"{h.version & 0xFFFFFFFF:08x}",
            "merkleroot": h.merkle_root[::-1].hex(),
            "time": h.time,
            "mediantime": c.median_time_past(entry),
            "nonce": h.nonce,
            "bits": f"{h.bits:08x}",
            "target": f"{bits_to_target(h.bits):064x}",
            "difficulty": difficulty(h.bits),
            "chainwork": f"{entry.chainwork:064x}",
            "nTx": len(entry.block.transactions),
        }
        if entry.height > 0:
            out["previousblockhash"] = entry.prev.hex()
        nxt = c.next_hash(entry)
        if nxt is not None:
            out["nextblockhash"] = nxt.hex()
        return out

    def getblockheader(self, blockhash: Any, verbose: Any) -> Any:
        with self.chain.lock:
            entry = self._entry(blockhash, "hash")
            if not verbose:
                return entry.block.header.serialize().hex()
            return self._header_json(entry)

    def getblock(self, blockhash: Any, verbosity: Any) -> Any:
        level = _verbosity(verbosity, 1)
        c = self.chain
        with c.lock:
            entry = self._entry(blockhash)
            if c.is_pruned(entry):
                raise RpcError(E.RPC_MISC_ERROR, "Block not available (pruned data)")
            block = entry.block
            if level <= 0:
                return block.raw.hex()
            out = self._header_json(entry)
            nxt = out.pop("nextblockhash", None)
            out.update({"strippedsize": block.stripped_size, "size": block.size, "weight": block.weight})
            coinbase = block.transactions[0]
            cb_in = coinbase.inputs[0]
            out["coinbase_tx"] = {
                "version": coinbase.version,
                "locktime": coinbase.locktime,
                "sequence": cb_in.sequence,
                "coinbase": cb_in.script_sig.hex(),
                **({"witness": cb_in.witness[0].hex()} if cb_in.witness else {}),
            }
            if level == 1:
                out["tx"] = [tx.txid.hex() for tx in block.transactions]
            else:
                fees = c.block_fees(entry)
                spent = dict(entry.undo) if (level >= 3 and entry.undo is not None) else None
                txs = []
                for tx in block.transactions:
                    item = self.tx_json(tx, spent=spent)
                    if fees is not None and tx.txid in fees:
                        item["fee"] = btc(fees[tx.txid])
                    txs.append(item)
                out["tx"] = txs
            if nxt is not None:
                out["nextblockhash"] = nxt
            return out

    def getchaintips(self) -> list[dict[str, Any]]:
        c = self.chain
        with c.lock:
            tips = [e for e in c.blocks.values() if not c.children.get(e.hash)]
            if c.tip not in tips:
                tips.append(c.tip)
            out = []
            for e in sorted(tips, key=lambda e: -e.height):
                if e.hash == c.tip.hash:
                    status = "active"
                elif c.has_invalid_ancestry(e):
                    status = "invalid"
                else:
                    status = "valid-fork"
                fork = e
                while not c.in_active_chain(fork):
                    fork = c.blocks[fork.prev]
                out.append(
                    {
                        "height": e.height,
                        "hash": e.hash.hex(),
                        "branchlen": e.height - fork.height,
                        "status": status,
                    }
                )
            return out

    # -- transactions -----------------------------------------------------------------------------------
    def tx_json(self, tx: Transaction, spent: dict[Any, Any] | None = None) -> dict[str, Any]:
        """Core's TxToUniv (decoderawtransaction and friends)."""
        vin = []
        for txin in tx.inputs:
            if tx.is_coinbase:
                item: dict[str, Any] = {"coinbase": txin.script_sig.hex()}
            else:
                item = {
                    "txid": txin.prev_txid.hex(),
                    "vout": txin.prev_vout,
                    "scriptSig": {"asm": to_asm(txin.script_sig, True), "hex": txin.script_sig.hex()},
                }
            if txin.witness:
                item["txinwitness"] = [w.hex() for w in txin.witness]
            if spent is not None and txin.outpoint in spent:
                coin = spent[txin.outpoint]
                item["prevout"] = {
                    "generated": coin.coinbase,
                    "height": coin.height,
                    "value": btc(coin.value),
                    "scriptPubKey": self._script_json(coin.script_pubkey),
                }
            item["sequence"] = txin.sequence
            vin.append(item)
        vout = [
            {"value": btc(out.value), "n": n, "scriptPubKey": self._script_json(out.script_pubkey)}
            for n, out in enumerate(tx.outputs)
        ]
        return {
            "txid": tx.txid.hex(),
            "hash": tx.wtxid.hex(),
            "version": tx.version,
            "size": tx.size,
            "vsize": tx.vsize,
            "weight": tx.weight,
            "locktime": tx.locktime,
            "vin": vin,
            "vout": vout,
            "hex": tx.hex(),
        }

    @staticmethod
    def _script_json(script: bytes) -> dict[str, Any]:
        out: dict[str, Any] = {
            "asm": to_asm(script),
            "desc": descriptor_for_script(script),
            "hex": script.hex(),
        }
        address = address_for_script(script)
        if address is not None:
            out["address"] = address
        out["type"] = script_type(script)
        return out

    def decoderawtransaction(self, hexstring: str, iswitness: Any) -> dict[str, Any]:
        try:
            tx = decode_transaction_hex(hexstring)
        except TxDecodeError:
            raise RpcError(E.RPC_DESERIALIZATION_ERROR, "TX decode failed") from None
        out = self.tx_json(tx)
        del out["hex"]
        return out

    def getrawtransaction(self, txid_hex: Any, verbose: Any, blockhash: Any) -> Any:
        level = _verbosity(verbose, 0)
        txid = self._txid(txid_hex, "parameter 1")
        c = self.chain
        with c.lock:
            entry: BlockEntry | None = None
            tx: Transaction | None = None
            if blockhash is not None:
                block_hash = BlockHash.from_display_bytes(parse_hash(blockhash, "parameter 3"))
                entry = c.blocks.get(block_hash)
                if entry is None:
                    raise RpcError(E.RPC_INVALID_ADDRESS_OR_KEY, "Block hash not found")
                if entry.height == 0 and entry.block.transactions[0].txid == txid:
                    raise RpcError(
                        E.RPC_INVALID_ADDRESS_OR_KEY,
                        "The genesis block coinbase is not considered an "
                        "ordinary transaction and cannot be retrieved",
                    )
                if c.is_pruned(entry):
                    raise RpcError(E.RPC_MISC_ERROR, "Block not available (pruned data)")
                tx = next((t for t in entry.block.transactions if t.txid == txid), None)
                if tx is None:
                    raise RpcError(
                        E.RPC_INVALID_ADDRESS_OR_KEY,
                        "No such transaction found in the provided block. "
                        "Use gettransaction for wallet transactions.",
                    )
            else:
                mem = c.mempool.get(txid)
                if mem is not None:
                    tx = mem.tx
                elif self.node.txindex and txid in c.tx_index:
                    entry = c.blocks[c.tx_index[txid]]
                    if entry.height == 0:
                        raise RpcError(
                            E.RPC_INVALID_ADDRESS_OR_KEY,
                            "The genesis block coinbase is not considered "
                            "an ordinary transaction and cannot be retrieved",
                        )
                    tx = next(t for t in entry.block.transactions if t.txid == txid)
                else:
                    message = NO_SUCH_TX_TXINDEX if self.node.txindex else NO_SUCH_MEMPOOL_TX
                    raise RpcError(E.RPC_INVALID_ADDRESS_OR_KEY, message)
            if level <= 0:
                return tx.hex()
            spent = (
                dict(entry.undo) if (level >= 2 and entry is not None and entry.undo is not None) else None
            )
            if level >= 2 and entry is None:
                mem_entry = c.mempool.get(txid)
                spent = dict(mem_entry.spent_coins) if mem_entry is not None else None
            out = self.tx_json(tx, spent=spent)
            if blockhash is not None and entry is not None:
                out["in_active_chain"] = c.in_active_chain(entry)
            if entry is not None:
                out["blockhash"] = entry.hash.hex()
                confirmations = c.confirmations(entry)
                out["confirmations"] = max(confirmations, 0)
                if confirmations > 0:
                    out["time"] = entry.block.header.time
                    out["blocktime"] = entry.block.header.time
            return out

    def _decode_for_send(self, hexstring: str) -> Transaction:
        try:
            return decode_transaction_hex(hexstring)
        except TxDecodeError:
            raise RpcError(
                E.RPC_DESERIALIZATION_ERROR, "TX decode failed. Make sure the tx has at least one input."
            ) from None

    def sendrawtransaction(self, hexstring: str, maxfeerate: Any, maxburnamount: Any) -> str:
        tx = self._decode_for_send(hexstring)
        max_rate = _amount(maxfeerate)
        max_burn = _amount(maxburnamount)
        for out in tx.outputs:
            if out.script_pubkey[:1] == b"\x6a" and out.value > max_burn:
                raise RpcError(
                    E.RPC_VERIFY_ERROR,
                    "Unspendable output exceeds maximum configured by user (maxburnamount)",
                )
        c = self.chain
        with c.lock:
            for n in range(len(tx.outputs)):
                if (tx.txid, n) in c.utxo:
                    raise RpcError(
                        E.RPC_VERIFY_ALREADY_IN_UTXO_SET, "Transaction outputs already in utxo set"
                    )
            if tx.txid in c.mempool:
                return tx.txid.hex()
            try:
                fee, _, _ = c.check_for_mempool(tx)
                if max_rate and fee > -(-max_rate * tx.vsize // 1000):
                    raise RpcError(
                        E.RPC_VERIFY_ERROR,
                        "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
                    )
                c.accept_to_mempool(tx)
            except TxReject as e:
                if e.missing_inputs:
                    raise RpcError(E.RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent") from None
                raise RpcError(E.RPC_VERIFY_REJECTED, e.text) from None
            return tx.txid.hex()

    def testmempoolaccept(self, rawtxs: list[Any], maxfeerate: Any) -> list[dict[str, Any]]:
        if not 1 <= len(rawtxs) <= 25:
            raise RpcError(E.RPC_INVALID_PARAMETER, "Array must contain between 1 and 25 transactions.")
        max_rate = _amount(maxfeerate)
        txs = []
        for raw in rawtxs:
            try:
                txs.append(decode_transaction_hex(raw) if isinstance(raw, str) else decode_transaction(b""))
            except TxDecodeError:
                raise RpcError(E.RPC_DESERIALIZATION_ERROR, f"TX decode failed: {raw}") from None
        c = self.chain
        results = []
        with c.lock:
            for tx in txs:
                item: dict[str, Any] = {"txid": tx.txid.hex(), "wtxid": tx.wtxid.hex()}
                try:
                    fee, _, _ = c.check_for_mempool(tx)
                except TxReject as e:
                    item["allowed"] = False
                    item["reject-reason"] = "missing-inputs" if e.missing_inputs else e.reason
                    if not e.missing_inputs:
                        item["reject-details"] = e.text
                    results.append(item)
                    continue
                if max_rate and fee > -(-max_rate * tx.vsize // 1000):
                    item["allowed"] = False
                    item["reject-reason"] = "max-fee-exceeded"
                else:
                    item["allowed"] = True
                    item["vsize"] = tx.vsize
                    item["fees"] = {
                        "base": btc(fee),
                        "effective-feerate": btc(fee * 1000 // tx.vsize),
                        "effective-includes": [tx.wtxid.hex()],
                    }
                results.append(item)
        return results

    def _mempool_entry_json(self, entry: MempoolEntry) -> dict[str, Any]:
        c = self.chain
        txid = entry.tx.txid
        ancestors = c.mempool_ancestors(txid)
        descendants = c._descendants(txid)
        anc_fee = entry.fee + sum(c.mempool[t].fee for t in ancestors)
        desc_fee = sum(c.mempool[t].fee for t in descendants if t in c.mempool)
        return {
            "vsize": entry.tx.vsize,
            "weight": entry.tx.weight,
            "time": entry.time,
            "height": entry.height,
            "descendantcount": len(descendants),
            "descendantsize": sum(c.mempool[t].tx.vsize for t in descendants if t in c.mempool),
            "ancestorcount": len(ancestors) + 1,
            "ancestorsize": entry.tx.vsize + sum(c.mempool[t].tx.vsize for t in ancestors),
            "wtxid": entry.tx.wtxid.hex(),
            "fees": {
                "base": btc(entry.fee),
                "modified": btc(entry.fee),
                "ancestor": btc(anc_fee),
                "descendant": btc(desc_fee),
            },
            "depends": [t.hex() for t in c.mempool_parents(entry)],
            "spentby": [t.hex() for t in c.mempool_children(entry)],
            "bip125-replaceable": True,
            "unbroadcast": False,
        }

    def getrawmempool(self, verbose: bool, mempool_sequence: bool) -> Any:
        c = self.chain
        with c.lock:
            if verbose and mempool_sequence:
                raise RpcError(
                    E.RPC_INVALID_PARAMETER, "Verbose results cannot contain mempool sequence values."
                )
            if verbose:
                return {txid.hex(): self._mempool_entry_json(e) for txid, e in c.mempool.items()}
            txids = [txid.hex() for txid in c.mempool]
            if mempool_sequence:
                return {"txids": txids, "mempool_sequence": c._mempool_seq}
            return txids

    def getmempoolentry(self, txid_hex: Any) -> dict[str, Any]:
        txid = self._txid(txid_hex, "txid")
        with self.chain.lock:
            entry = self.chain.mempool.get(txid)
            if entry is None:
                raise RpcError(E.RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
            return self._mempool_entry_json(entry)

    def getmempoolinfo(self) -> dict[str, Any]:
        c = self.chain
        with c.lock:
            return {
                "loaded": True,
                "size": len(c.mempool),
                "bytes": sum(e.tx.vsize for e in c.mempool.values()),
                "usage": sum(len(e.tx.raw) * 4 for e in c.mempool.values()),
                "total_fee": btc(sum(e.fee for e in c.mempool.values())),
                "maxmempool": 300_000_000,
                "mempoolminfee": btc(MIN_RELAY_FEE_PER_KVB),
                "minrelaytxfee": btc(MIN_RELAY_FEE_PER_KVB),
                "incrementalrelayfee": btc(INCREMENTAL_RELAY_FEE_PER_KVB),
                "unbroadcastcount": 0,
                "fullrbf": True,
            }

    def gettxout(self, txid_hex: Any, n: Any, include_mempool: bool) -> dict[str, Any] | None:
        txid = self._txid(txid_hex, "txid")
        c = self.chain
        with c.lock:
            coin = c.gettxout((txid, _int(n)), bool(include_mempool))
            if coin is None:
                return None
            confirmations = 0 if coin.height == MEMPOOL_HEIGHT else c.height - coin.height + 1
            return {
                "bestblock": c.tip.hash.hex(),
                "confirmations": confirmations,
                "value": btc(coin.value),
                "scriptPubKey": self._script_json(coin.script_pubkey),
                "coinbase": coin.coinbase,
            }

    # -- mining -----------------------------------------------------------------------------------------
    def generatetoaddress(self, nblocks: Any, address: str, maxtries: Any) -> list[str]:
        count = _int(nblocks)
        script = self._script(address)
        hashes = []
        for _ in range(max(count, 0)):
            with self.chain.lock:
                try:
                    block = self.chain.create_block(script)
                    hashes.append(self.chain.process_new_block(block).hash.hex())
                except BlockNotAccepted:
                    raise RpcError(E.RPC_INTERNAL_ERROR, "ProcessNewBlock, block not accepted") from None
                except TxReject as e:  # only if the mempool holds something a block may not
                    raise RpcError(E.RPC_INTERNAL_ERROR, f"TestBlockValidity failed: {e.text}") from None
        return hashes

    def generateblock(self, output: str, transactions: list[Any], submit: Any) -> dict[str, Any]:
        script = self._script(output, "Error: Invalid address or descriptor")
        c = self.chain
        with c.lock:
            txs: list[Transaction] = []
            for item in transactions:
                if not isinstance(item, str):
                    raise RpcError(E.RPC_TYPE_ERROR, "JSON value is not a string as expected")
                if len(item) == 64:
                    try:
                        txid = Txid.from_hex(item)
                    except ValueError:
                        txid = None
                    if txid is not None:
                        mem = c.mempool.get(txid)
                        if mem is None:
                            raise RpcError(
                                E.RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool."
                            )
                        txs.append(mem.tx)
                        continue
                try:
                    txs.append(decode_transaction_hex(item))
                except TxDecodeError:
                    raise RpcError(
                        E.RPC_DESERIALIZATION_ERROR,
                        f"Transaction decode failed for {item}. Make sure the tx has at least one input.",
                    ) from None
            try:
                block = c.create_block(script, txs)
            except TxReject as e:
                raise RpcError(E.RPC_VERIFY_ERROR, f"TestBlockValidity failed: {e.text}") from None
            if submit is False:
                return {"hash": block.hash.hex(), "hex": block.raw.hex()}
            try:
                c.process_new_block(block)
            except BlockNotAccepted:
                raise RpcError(E.RPC_INTERNAL_ERROR, "ProcessNewBlock, block not accepted") from None
            return {"hash": block.hash.hex()}

    def submitblock(self, hexdata: str, dummy: Any) -> str | None:
        try:
            block: Block = decode_block(bytes.fromhex(hexdata))
        except (TxDecodeError, ValueError):
            raise RpcError(E.RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
        c = self.chain
        with c.lock:
            known = c.blocks.get(block.hash)
            if known is not None:
                return "duplicate-invalid" if c.has_invalid_ancestry(known) else "duplicate"
            if block.header.prev_hash not in c.blocks:
                return "prev-blk-not-found"
            if block.header.prev_hash != c.tip.hash:
                return "inconclusive"  # side branches are accepted only when made here (not validated)
            if not block.transactions or not block.transactions[0].is_coinbase:
                return "bad-cb-missing"
            if block.computed_merkle_root() != block.header.merkle_root:
                return "bad-txnmrklroot"
            if block.header.bits != REGTEST_BITS:
                return "bad-diffbits"
            if not check_proof_of_work(block.header):
                return "high-hash"
            try:
                c._validate_block_txs(block.transactions[1:], c.height + 1, c.median_time_past(c.tip))
            except TxReject as e:
                return e.reason
            try:
                c.process_new_block(block)
            except BlockNotAccepted as e:
                return str(e)
            return None

    def invalidateblock(self, blockhash: Any) -> None:
        with self.chain.lock:
            entry = self._entry(blockhash)
            if entry.height == 0:
                raise RpcError(E.RPC_MISC_ERROR, "Cannot invalidate the genesis block")
            self.chain.invalidate(entry)

    def reconsiderblock(self, blockhash: Any) -> None:
        with self.chain.lock:
            self.chain.reconsider(self._entry(blockhash))

    def setmocktime(self, timestamp: Any) -> None:
        t = _int(timestamp)
        if t < 0:
            raise RpcError(E.RPC_INVALID_PARAMETER, "Mocktime cannot be negative: " + str(t))
        self.chain.mocktime = t

    def estimatesmartfee(self, conf_target: Any, estimate_mode: str) -> dict[str, Any]:
        target = _int(conf_target)
        if not 1 <= target <= 1008:
            raise RpcError(E.RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
        return {"errors": ["Insufficient data or no feerate found"], "blocks": max(target, 2)}

    def validateaddress(self, address: str) -> dict[str, Any]:
        try:
            script = script_for_address(address)
        except AddressError:
            return {
                "isvalid": False,
                "error_locations": [],
                "error": "Invalid or unsupported Segwit (Bech32) or Base58 encoding.",
            }
        out: dict[str, Any] = {"isvalid": True, "address": address, "scriptPubKey": script.hex()}
        kind = script_type(script)
        out["isscript"] = kind in ("scripthash", "witness_v0_scripthash")
        out["iswitness"] = kind.startswith("witness_")
        if out["iswitness"]:
            out["witness_version"] = 0 if script[0] == 0 else script[0] - 0x50
            out["witness_program"] = script[2:].hex()
        return out
