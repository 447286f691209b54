"""A key-holding regtest wallet that builds real, signed transactions against any bitcoind.

Tests and the demo need transactions real Bitcoin Core would accept, not byte blobs: a "commitment"
spending a wallet output to a P2WSH output, a "penalty" spending that output back, and transactions that
double-spend either. ``Wallet`` holds its own secp256k1 keys (derived from a seed, so runs are repeatable),
talks to the node only through an RPC callable ``rpc(method, *params) -> result`` (the simulator or real
Core, no node wallet needed), and signs segwit v0 inputs with BIP143 SIGHASH_ALL signatures (DER, low-S,
via coincurve). Every transaction is version 2, pays at least ``fee_rate`` sat/vB computed on an upper
bound of its size, and keeps outputs above the dust limits, so Core's standardness rules accept it.

Coins come from mining: ``fund()`` mines a block to the wallet, buries it 100 blocks deep so the coinbase
matures, splits it into smaller outputs and confirms the split. Coins used by a built transaction are
reserved (not reused), whether or not the caller broadcasts it; ``conflicting()`` deliberately reuses them.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import coincurve

from common.sighash import SIGHASH_ALL, bip143_sighash
from common.tx import Transaction, TxIn, TxOut, decode_transaction, hash160
from common.types import Txid
from teos.regtest.address import encode_segwit, p2wpkh_script, p2wsh_script

RpcCallable = Callable[..., Any]

COIN = 100_000_000
DEFAULT_FEE_RATE = 2.0  # sat/vB: above Core's 1 sat/vB (pre-v30) and 0.1 sat/vB (v30+) relay minimums
DUST_LIMIT = 546  # above every segwit and legacy dust threshold at the default dust relay fee
BURN_ADDRESS = "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202"  # P2WPKH of twenty zero bytes: nobody's key
_DUMMY_SIG = bytes(72)  # the largest low-S DER signature (71 bytes) plus the sighash byte


class WalletError(Exception):
    """The wallet cannot do what was asked (no coins, amounts below dust...)."""


@dataclass(frozen=True)
class Coin:
    """An output the wallet can sign for."""

    txid: Txid
    vout: int
    value: int
    script_pubkey: bytes

    @property
    def outpoint(self) -> tuple[Txid, int]:
        return (self.txid, self.vout)


@dataclass(frozen=True)
class SignedTx:
    """A signed transaction, the coins it spends and the fee it pays."""

    tx: Transaction
    spent: tuple[Coin, ...]
    fee: int

    @property
    def raw(self) -> bytes:
        return self.tx.raw

    @property
    def hex(self) -> str:
        return self.tx.raw.hex()

    @property
    def txid(self) -> Txid:
        return self.tx.txid

    @property
    def wtxid(self) -> Txid:
        return self.tx.wtxid

    @property
    def fee_rate(self) -> float:
        """Satoshis per virtual byte actually paid."""
        return self.fee / self.tx.vsize

    def output(self, n: int) -> Coin:
        out = self.tx.outputs[n]
        return Coin(self.tx.txid, n, out.value, out.script_pubkey)


@dataclass(frozen=True)
class BreachPair:
    """A "commitment" (wallet coin -> P2WSH) and the "penalty" spending its output back to the wallet."""

    commitment: SignedTx
    penalty: SignedTx


@dataclass(frozen=True)
class _Signer:
    key: coincurve.PrivateKey
    witness_script: bytes | None  # None: P2WPKH

    @property
    def pubkey(self) -> bytes:
        return self.key.public_key.format(compressed=True)

    def script_code(self) -> bytes:
        if self.witness_script is None:
            return b"\x76\xa9\x14" + hash160(self.pubkey) + b"\x88\xac"
        return self.witness_script

    def witness(self, signature: bytes) -> tuple[bytes, ...]:
        if self.witness_script is None:
            return (signature, self.pubkey)
        return (signature, self.witness_script)


class Wallet:
    def __init__(
        self, rpc: RpcCallable, seed: bytes = b"teos-regtest-wallet", fee_rate: float = DEFAULT_FEE_RATE
    ):
        self.rpc = rpc
        self.seed = seed
        self.fee_rate = fee_rate
        self._lock = threading.RLock()
        self._key_index = 0
        self._signers: dict[bytes, _Signer] = {}
        self._coins: dict[tuple[Txid, int], Coin] = {}
        self._main = self._new_signer(witness_script=False)

    # -- keys -------------------------------------------------------------------------------------------
    def _next_key(self) -> coincurve.PrivateKey:
        self._key_index += 1
        secret = hashlib.sha256(self.seed + b"/" + str(self._key_index).encode()).digest()
        return coincurve.PrivateKey(secret)

    def _new_signer(self, witness_script: bool) -> tuple[bytes, _Signer]:
        key = self._next_key()
        pubkey = key.public_key.format(compressed=True)
        if witness_script:
            script = bytes([33]) + pubkey + b"\xac"  # <pubkey> OP_CHECKSIG
            signer = _Signer(key, script)
            spk = p2wsh_script(script)
        else:
            signer = _Signer(key, None)
            spk = p2wpkh_script(pubkey)
        self._signers[spk] = signer
        return spk, signer

    @property
    def script_pubkey(self) -> bytes:
        return self._main[0]

    def address(self) -> str:
        """The wallet's bcrt1 P2WPKH address (coins paid here are spendable by ``build``)."""
        return encode_segwit(0, self._main[0][2:])

    def owns(self, script_pubkey: bytes) -> bool:
        return script_pubkey in self._signers

    # -- coins ------------------------------------------------------------------------------------------
    def coins(self) -> list[Coin]:
        with self._lock:
            return list(self._coins.values())

    def add_coin(self, coin: Coin) -> None:
        """Makes an output (one the wallet can sign for) available to later transactions."""
        if coin.script_pubkey not in self._signers:
            raise WalletError("the wallet holds no key for that output")
        with self._lock:
            self._coins[coin.outpoint] = coin

    def _take(self, count: int = 1) -> list[Coin]:
        with self._lock:
            if len(self._coins) < count:
                self.fund(max(count, 10))
            taken = sorted(self._coins.values(), key=lambda c: (-c.value, c.txid, c.vout))[:count]
            if len(taken) < count:
                raise WalletError("not enough coins")
            for coin in taken:
                del self._coins[coin.outpoint]
            return taken

    def fund(self, count: int = 10, value: int = COIN) -> list[Coin]:
        """Mines a matured coinbase to the wallet and splits it into ``count`` outputs of ``value``.

        Mines 101 blocks (1 to the wallet, 100 to a burn address) plus 1 confirming the split. Returns the
        new coins (the split outputs and the change)."""
        with self._lock:
            block_hash = self.rpc("generatetoaddress", 1, self.address())[0]
            self.rpc("generatetoaddress", 100, BURN_ADDRESS)
            block = self.rpc("getblock", block_hash, 2)
            coinbase = decode_transaction(bytes.fromhex(block["tx"][0]["hex"]))
            source = Coin(coinbase.txid, 0, coinbase.outputs[0].value, coinbase.outputs[0].script_pubkey)
            per_output_vbytes = 31
            overhead = 11 + 68 + per_output_vbytes  # version/locktime, one P2WPKH input, the change
            budget = (
                source.value - math.ceil((overhead + per_output_vbytes * count) * self.fee_rate) - DUST_LIMIT
            )
            count = min(count, max(0, budget // value))
            if count == 0:
                raise WalletError(f"coinbase of {source.value} sat cannot fund outputs of {value} sat")
            outputs = [TxOut(value, self.script_pubkey) for _ in range(count)]
            split = self.build([source], outputs, change=True)
            self.rpc("sendrawtransaction", split.hex)
            self.rpc("generatetoaddress", 1, BURN_ADDRESS)
            new = [split.output(n) for n in range(len(split.tx.outputs))]
            for coin in new:
                self._coins[coin.outpoint] = coin
            return new

    # -- building ---------------------------------------------------------------------------------------
    def build(
        self,
        inputs: Sequence[Coin],
        outputs: Sequence[TxOut],
        fee_rate: float | None = None,
        change: bool = False,
        fee: int | None = None,
        locktime: int = 0,
        sequence: int = 0xFFFFFFFD,
    ) -> SignedTx:
        """Signs a version-2 transaction spending ``inputs`` to ``outputs``.

        The fee is ``fee`` when given, else ``fee_rate`` (default the wallet's) times an upper bound of
        the virtual size. With ``change`` the remainder goes back to the wallet's address; without it the
        fee is taken from the last output. Inputs must be outputs the wallet holds keys for."""
        rate = self.fee_rate if fee_rate is None else fee_rate
        if not inputs:
            raise WalletError("no inputs")
        signers = []
        for coin in inputs:
            signer = self._signers.get(coin.script_pubkey)
            if signer is None:
                raise WalletError(f"no key for input {coin.txid}:{coin.vout}")
            signers.append(signer)
        total_in = sum(c.value for c in inputs)
        outs = list(outputs)
        if change:
            outs.append(TxOut(0, self.script_pubkey))
        if not outs:
            raise WalletError("no outputs")
        draft = self._assemble(inputs, outs, signers, locktime, sequence, dummy=True)
        required = fee if fee is not None else math.ceil(draft.vsize * rate)
        last = outs[-1]
        if change:
            adjusted = total_in - sum(o.value for o in outs[:-1]) - required
        else:
            adjusted = last.value - max(0, required - (total_in - sum(o.value for o in outs)))
        if adjusted < DUST_LIMIT:
            raise WalletError(f"inputs of {total_in} sat cannot pay the outputs and a fee of {required} sat")
        outs[-1] = TxOut(adjusted, last.script_pubkey)
        tx = self._assemble(inputs, outs, signers, locktime, sequence, dummy=False)
        return SignedTx(tx, tuple(inputs), total_in - sum(o.value for o in tx.outputs))

    def _assemble(
        self,
        inputs: Sequence[Coin],
        outputs: Sequence[TxOut],
        signers: Sequence[_Signer],
        locktime: int,
        sequence: int,
        dummy: bool,
    ) -> Transaction:
        unsigned = Transaction(
            2, tuple(TxIn(c.txid, c.vout, b"", sequence) for c in inputs), tuple(outputs), locktime
        )
        witnesses = []
        for i, (coin, signer) in enumerate(zip(inputs, signers, strict=True)):
            if dummy:
                sig = _DUMMY_SIG
            else:
                digest = bip143_sighash(unsigned, i, signer.script_code(), coin.value)
                sig = signer.key.sign(digest, hasher=None) + bytes([SIGHASH_ALL])
            witnesses.append(signer.witness(sig))
        return Transaction(
            2,
            tuple(TxIn(c.txid, c.vout, b"", sequence, w) for c, w in zip(inputs, witnesses, strict=True)),
            tuple(outputs),
            locktime,
        )

    def breach_pair(
        self,
        commitment_fee_rate: float | None = None,
        penalty_fee_rate: float | None = None,
        penalty_fee: int | None = None,
    ) -> BreachPair:
        """A fresh commitment (one wallet coin -> a new P2WSH ``<pubkey> OP_CHECKSIG`` output) and the
        penalty spending that output back to the wallet. Neither is broadcast."""
        with self._lock:
            (coin,) = self._take(1)
            spk, _ = self._new_signer(witness_script=True)
            commitment = self.build([coin], [TxOut(coin.value, spk)], fee_rate=commitment_fee_rate)
            penalty = self.build(
                [commitment.output(0)],
                [TxOut(commitment.tx.outputs[0].value, self.script_pubkey)],
                fee_rate=penalty_fee_rate,
                fee=penalty_fee,
            )
            return BreachPair(commitment, penalty)

    def conflicting(
        self,
        tx: SignedTx,
        fee_rate: float | None = None,
        fee: int | None = None,
        to_script: bytes | None = None,
    ) -> SignedTx:
        """A transaction double-spending every input of ``tx`` into one output (the wallet's by default).

        With a higher fee than ``tx`` it replaces it in a mempool (or beats it into a block); with a lower
        one the node refuses it with -26 while ``tx`` is in the mempool."""
        total = sum(c.value for c in tx.spent)
        return self.build(
            list(tx.spent), [TxOut(total, to_script or self.script_pubkey)], fee_rate=fee_rate, fee=fee
        )

    def send(self, tx: SignedTx) -> str:
        """Broadcasts with ``sendrawtransaction``; returns the txid the node answers."""
        return str(self.rpc("sendrawtransaction", tx.hex))
