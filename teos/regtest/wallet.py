"""A key-holding regtest wallet that builds real, signed transactions against any bitcoind.

Tests and the demo need transactions real Bitcoin Core would accept, not byte blobs: a "commitment"
shaped like a Lightning commitment (BOLT 3 obscured locktime and sequence, a P2WSH ``to_local`` output
"revocation key OR (to_self_delay CSV AND delayed key)"), the "penalty" spending ``to_local`` through the
revocation branch, the owner's delayed claim through the CSV branch, and transactions that double-spend
any of them; and, to prove a node refuses them, the invalid variants Core rejects: a forged signature, the
penalty signed by the wrong key, the delayed claim made too early or with a short CSV sequence, a
non-minimal OP_IF argument (policy only). ``Wallet`` holds its own secp256k1 keys (derived from a seed, so
runs are repeatable),
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
from dataclasses import dataclass, replace
from typing import Any

import coincurve

from common.sighash import SIGHASH_ALL, bip143_sighash
from common.tx import Transaction, TxIn, TxOut, decode_transaction, hash160
from common.types import Txid
from teos.regtest.address import encode_segwit, p2wpkh_script, p2wsh_script
from teos.regtest.script import push_int

RpcCallable = Callable[..., Any]

COIN = 100_000_000
DEFAULT_FEE_RATE = 2.0  # sat/vB: above Core's 1 sat/vB (pre-v30) and 0.1 sat/vB (v30+) relay minimums
DUST_LIMIT = 546  # above every segwit and legacy dust threshold at the default dust relay fee
BURN_ADDRESS = "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202"  # P2WPKH of twenty zero bytes: nobody's key
_DUMMY_SIG = bytes(72)  # the largest low-S DER signature (71 bytes) plus the sighash byte
DEFAULT_TO_SELF_DELAY = 144  # blocks; a common Lightning channel setting
OP_IF, OP_ELSE, OP_ENDIF, OP_CSV, OP_DROP, OP_CHECKSIG = 0x63, 0x67, 0x68, 0xB2, 0x75, 0xAC


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


def _compressed(key: coincurve.PrivateKey) -> bytes:
    return key.public_key.format(compressed=True)


@dataclass(frozen=True)
class ToLocal:
    """A commitment's ``to_local`` output (BOLT 3): the revocation key spends it at once, the delayed key
    only ``to_self_delay`` blocks after the commitment confirms::

        OP_IF <revocation_pubkey> OP_ELSE <to_self_delay> OP_CHECKSEQUENCEVERIFY OP_DROP <delayed_pubkey>
        OP_ENDIF OP_CHECKSIG
    """

    revocation_key: coincurve.PrivateKey
    delayed_key: coincurve.PrivateKey
    to_self_delay: int

    @property
    def script(self) -> bytes:
        return (
            bytes([OP_IF, 33])
            + _compressed(self.revocation_key)
            + bytes([OP_ELSE])
            + push_int(self.to_self_delay)
            + bytes([OP_CSV, OP_DROP, 33])
            + _compressed(self.delayed_key)
            + bytes([OP_ENDIF, OP_CHECKSIG])
        )

    @property
    def script_pubkey(self) -> bytes:
        return p2wsh_script(self.script)


@dataclass(frozen=True)
class BreachPair:
    """A revoked "commitment" (wallet coin -> ``to_local`` at output 0) and the "penalty" spending that
    output back to the wallet through the revocation branch."""

    commitment: SignedTx
    penalty: SignedTx
    to_local: ToLocal


@dataclass(frozen=True)
class _Signer:
    """How to sign for one output: the key, the P2WSH script (None: P2WPKH) and the witness items between
    the signature and the script (a branch selector such as ``b"\x01"`` for OP_IF)."""

    key: coincurve.PrivateKey
    witness_script: bytes | None
    branch: tuple[bytes, ...] = ()

    @property
    def pubkey(self) -> bytes:
        return _compressed(self.key)

    def script_code(self) -> bytes:
        if self.witness_script is None:
            return b"\x76\xa9\x14" + hash160(self.pubkey) + b"\x88\xac"
        return self.witness_script

    def witness(self, signature: bytes) -> tuple[bytes, ...]:
        if self.witness_script is None:
            return (signature, self.pubkey)
        return (signature, *self.branch, self.witness_script)


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
        self._main = self._new_p2wpkh()

    # -- keys -------------------------------------------------------------------------------------------
    def _next_key(self) -> coincurve.PrivateKey:
        self._key_index += 1
        secret = hashlib.sha256(self.seed + b"/" + str(self._key_index).encode()).digest()
        return coincurve.PrivateKey(secret)

    def _new_p2wpkh(self) -> tuple[bytes, _Signer]:
        signer = _Signer(self._next_key(), None)
        spk = p2wpkh_script(signer.pubkey)
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

    def take(self, count: int = 1) -> list[Coin]:
        """``count`` coins the wallet hands over and will not spend itself (it mines more when it holds
        too few): for a caller that spends them in transactions of its own making."""
        return self._take(count)

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
        signers: Sequence[_Signer] | None = None,
    ) -> SignedTx:
        """Signs a version-2 transaction spending ``inputs`` to ``outputs``.

        The fee is ``fee`` when given, else ``fee_rate`` (default the wallet's) times an upper bound of
        the virtual size. With ``change`` the remainder goes back to the wallet's address; without it the
        fee is taken from the last output. Inputs must be outputs the wallet holds keys for, unless
        ``signers`` says how to sign each one."""
        rate = self.fee_rate if fee_rate is None else fee_rate
        if not inputs:
            raise WalletError("no inputs")
        if signers is None:
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
        to_self_delay: int = DEFAULT_TO_SELF_DELAY,
    ) -> BreachPair:
        """A fresh revoked commitment and its penalty; neither is broadcast.

        The commitment spends one wallet coin to a ``to_local`` output (output 0) with BOLT 3's obscured
        commitment number in its locktime (upper byte 0x20) and sequence (upper byte 0x80), so it is final
        and has no relative lock; the penalty spends ``to_local`` back to the wallet with the revocation
        key. ``conflicting(pair.penalty)`` spends it the same way."""
        with self._lock:
            (coin,) = self._take(1)
            to_local = ToLocal(self._next_key(), self._next_key(), to_self_delay)
            self._signers[to_local.script_pubkey] = _Signer(
                to_local.revocation_key, to_local.script, (b"\x01",)
            )
            obscured = int.from_bytes(hashlib.sha256(to_local.script).digest()[:6], "big")
            commitment = self.build(
                [coin],
                [TxOut(coin.value, to_local.script_pubkey)],
                fee_rate=commitment_fee_rate,
                locktime=(0x20 << 24) | (obscured & 0xFFFFFF),
                sequence=(0x80 << 24) | (obscured >> 24),
            )
            penalty = self.build(
                [commitment.output(0)],
                [TxOut(commitment.tx.outputs[0].value, self.script_pubkey)],
                fee_rate=penalty_fee_rate,
                fee=penalty_fee,
            )
            return BreachPair(commitment, penalty, to_local)

    def delayed_claim(
        self,
        pair: BreachPair,
        fee_rate: float | None = None,
        sequence: int | None = None,
        false_branch: bytes = b"",
    ) -> SignedTx:
        """The commitment owner's claim of ``to_local`` through the CSV branch, to the wallet.

        Its input's sequence is ``to_self_delay`` (so Core takes it once the commitment has that many
        confirmations, and refuses it before with ``non-BIP68-final``). ``sequence`` overrides it (below the
        delay the script fails OP_CHECKSEQUENCEVERIFY); ``false_branch`` is the item selecting OP_ELSE,
        empty as policy requires (``b"\x00"`` breaks only the MINIMALIF policy rule)."""
        to_local = pair.to_local
        signer = _Signer(to_local.delayed_key, to_local.script, (false_branch,))
        out = pair.commitment.output(0)
        return self.build(
            [out],
            [TxOut(out.value, self.script_pubkey)],
            fee_rate=fee_rate,
            sequence=to_local.to_self_delay if sequence is None else sequence,
            signers=[signer],
        )

    def penalty_signed_by_wrong_key(self, pair: BreachPair) -> SignedTx:
        """The penalty through the revocation branch, but signed with the delayed key (Core refuses it)."""
        signer = _Signer(pair.to_local.delayed_key, pair.to_local.script, (b"\x01",))
        out = pair.commitment.output(0)
        return self.build(
            [out], [TxOut(out.value, self.script_pubkey)], fee=pair.penalty.fee, signers=[signer]
        )

    @staticmethod
    def forged(tx: SignedTx, index: int = 0) -> SignedTx:
        """``tx`` with input ``index``'s signature altered: still strict DER with a low S, but not a valid
        signature of the transaction (the txid stays, the wtxid changes)."""
        inputs = list(tx.tx.inputs)
        witness = list(inputs[index].witness)
        sig = bytearray(witness[0])
        len_r = sig[3]
        sig[3 + len_r] ^= 0x01  # the last byte of R
        witness[0] = bytes(sig)
        inputs[index] = replace(inputs[index], witness=tuple(witness))
        forged = Transaction(tx.tx.version, tuple(inputs), tx.tx.outputs, tx.tx.locktime)
        return SignedTx(forged, tx.spent, tx.fee)

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
