"""The payment channel on chain: funding script, payment, claim and refund transactions (pure, no I/O).

A user pays the tower through a unidirectional channel (docs/PAYMENTS.md is the protocol). The funding
output is P2WSH of this witness script, ``expiry`` an absolute block height::

    OP_IF
        <tower_key> OP_CHECKSIGVERIFY
    OP_ELSE
        <expiry> OP_CHECKLOCKTIMEVERIFY OP_DROP
    OP_ENDIF
    <user_key> OP_CHECKSIG

- claim (any time): witness ``<user_sig> <tower_sig> 01 <script>``;
- refund (in a block above ``expiry``): witness ``<user_sig> <> <script>``, nLockTime ``expiry``.

A payment of ``amount`` is the transaction, built only by :func:`payment_tx` from the channel's
parameters: version 2, nLockTime 0, one input (the funding outpoint, nSequence 0xfffffffd), outputs
``amount`` to P2WPKH(tower_key) then the change to the user's change script. Its fee is fixed: the fee
rate times the virtual size the signed transaction can have at most (both signatures counted at 72
bytes), rounded up. When the change would be dust the change output goes and the tower takes the rest:
that is the one allowed amount between ``max_amount_with_change`` and ``max_amount``. The user signs
SIGHASH_ALL (BIP143) and the tower adds its signature to claim.

Both sides derive every byte from :class:`ChannelParams`; nothing about a payment is negotiated per
payment but ``amount``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from coincurve import PublicKey

from common import bech32, psbt, script, sighash
from common.tx import Transaction, TxIn, TxOut
from common.types import Txid

TX_VERSION = 2
PAYMENT_SEQUENCE = 0xFFFFFFFD  # signals replaceability; with nLockTime 0 it has no other effect
PAYMENT_LOCKTIME = 0
REFUND_SEQUENCE = 0xFFFFFFFD  # CHECKLOCKTIMEVERIFY needs a non-final input
MAX_EXPIRY = 499_999_999  # nLockTime below 500,000,000 is a block height
SIGNATURE_BOUND = 72  # the largest low-S DER signature (71 bytes) plus the hash-type byte
MAX_MONEY = 21_000_000 * 100_000_000
MAX_FEE_RATE = 1_000_000  # sat per 1000 vbytes (1000 sat/vB): a sanity bound, not a policy
CHANGE_SCRIPT_TYPES = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr")
_LOWER_HEX_64 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"[0-9]{1,10}")


class ChannelError(ValueError):
    """Channel parameters or an amount that the protocol does not allow."""


def _check_key(name: str, key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != 33 or key[0] not in (2, 3):
        raise ChannelError(f"{name} must be a 33-byte compressed public key")
    try:
        PublicKey(key)
    except Exception:
        raise ChannelError(f"{name} is not a point on secp256k1") from None


def funding_witness_script(user_key: bytes, tower_key: bytes, expiry: int) -> bytes:
    """The witness script of the funding output (see the module docstring)."""
    return b"".join(
        [
            bytes([script.OP_IF]),
            script.push_data(tower_key),
            bytes([script.OP_CHECKSIGVERIFY, script.OP_ELSE]),
            script.push_int(expiry),
            bytes([script.OP_CHECKLOCKTIMEVERIFY, script.OP_DROP, script.OP_ENDIF]),
            script.push_data(user_key),
            bytes([script.OP_CHECKSIG]),
        ]
    )


def funding_script_pubkey(user_key: bytes, tower_key: bytes, expiry: int) -> bytes:
    """The funding output's script (P2WSH of the witness script): known before the funding transaction,
    whose outpoint then names the channel."""
    return script.p2wsh(funding_witness_script(user_key, tower_key, expiry))


@dataclass(frozen=True, order=True, slots=True)
class ChannelId:
    """A channel is named by its funding outpoint: ``<txid display hex>:<vout>`` in JSON.

    ``raw`` (36 bytes, the txid in internal order then vout as u32 big-endian) is the form signed
    messages and database keys use.
    """

    txid: Txid
    vout: int

    SIZE = 36

    def __post_init__(self) -> None:
        if not isinstance(self.vout, int) or not 0 <= self.vout <= 0xFFFFFFFF:
            raise ChannelError("vout must be a 32-bit unsigned integer")

    @property
    def raw(self) -> bytes:
        return self.txid.raw + struct.pack(">I", self.vout)

    @classmethod
    def from_raw(cls, raw: bytes) -> ChannelId:
        if len(raw) != cls.SIZE:
            raise ChannelError("a channel id is 36 bytes")
        return cls(Txid(raw[:32]), int(struct.unpack(">I", raw[32:])[0]))

    def __str__(self) -> str:
        return f"{self.txid.hex()}:{self.vout}"

    @classmethod
    def parse(cls, text: str) -> ChannelId:
        """``txid:vout`` (64 lower-case hex characters, a colon, a decimal without leading zeros)."""
        if not isinstance(text, str) or len(text) > 75 or text.count(":") != 1:
            raise ChannelError("a channel id is <txid>:<vout>")
        txid_hex, vout_text = text.split(":")
        if not _LOWER_HEX_64.fullmatch(txid_hex) or not _DECIMAL.fullmatch(vout_text):
            raise ChannelError("a channel id is <64 lower-case hex txid>:<vout>")
        if vout_text != str(int(vout_text)):
            raise ChannelError("vout has leading zeros")
        try:
            return cls(Txid.from_hex(txid_hex), int(vout_text))
        except ValueError:
            raise ChannelError("a channel id is <64 lower-case hex txid>:<vout>") from None


@dataclass(frozen=True)
class ChannelParams:
    """Everything both sides derive the channel's transactions from; fixed when the channel opens."""

    channel_id: ChannelId
    funding_value: int  # satoshis in the funding output
    user_key: bytes  # 33-byte compressed key: signs payments and the refund
    tower_key: bytes  # the tower's payment key: co-signs claims, is paid to P2WPKH(tower_key)
    expiry: int  # block height; the refund branch opens in the block after it
    change_script: bytes  # where the user's change goes in every payment
    fee_rate: int  # sat per 1000 vbytes, for every payment transaction

    def validate(self) -> None:
        """Raises ChannelError unless these parameters can make a relayable channel."""
        _check_key("user_key", self.user_key)
        _check_key("tower_key", self.tower_key)
        if self.user_key == self.tower_key:
            raise ChannelError("user_key and tower_key must differ")
        if not isinstance(self.expiry, int) or not 1 <= self.expiry <= MAX_EXPIRY:
            raise ChannelError(f"expiry must be a block height in [1, {MAX_EXPIRY}]")
        if not isinstance(self.fee_rate, int) or not 1 <= self.fee_rate <= MAX_FEE_RATE:
            raise ChannelError(f"fee_rate must be in [1, {MAX_FEE_RATE}] sat per 1000 vbytes")
        if script.output_type(self.change_script) not in CHANGE_SCRIPT_TYPES:
            raise ChannelError("change_script must be a P2PKH, P2SH, P2WPKH, P2WSH or P2TR output script")
        if not isinstance(self.funding_value, int) or not 0 < self.funding_value <= MAX_MONEY:
            raise ChannelError("funding_value out of range")
        if self.max_amount < script.dust_threshold(self.tower_script):
            raise ChannelError("funding_value cannot pay even the smallest payment and its fee")

    # -- scripts ----------------------------------------------------------------------------------------

    @cached_property
    def witness_script(self) -> bytes:
        return funding_witness_script(self.user_key, self.tower_key, self.expiry)

    @cached_property
    def script_pubkey(self) -> bytes:
        return script.p2wsh(self.witness_script)

    def address(self, network: str) -> str:
        """The funding address (bech32 P2WSH) on ``network`` (``mainnet``, ``regtest``...)."""
        return bech32.script_to_address(self.script_pubkey, network)

    @cached_property
    def tower_script(self) -> bytes:
        return script.p2wpkh(self.tower_key)

    @property
    def funding_output(self) -> TxOut:
        return TxOut(self.funding_value, self.script_pubkey)

    # -- amounts ----------------------------------------------------------------------------------------

    def payment_fee(self, with_change: bool) -> int:
        """The fixed fee of a payment with (or without) its change output."""
        bound = _payment_skeleton(self, 0, 0 if with_change else None, dummy=True)
        return -(-self.fee_rate * bound.vsize // 1000)

    @property
    def max_amount(self) -> int:
        """The largest payment: everything but the fee of a payment without change."""
        return self.funding_value - self.payment_fee(False)

    @property
    def max_amount_with_change(self) -> int:
        """The largest payment that still leaves the user a change output above dust."""
        return self.funding_value - self.payment_fee(True) - script.dust_threshold(self.change_script)

    def change_for(self, amount: int) -> int | None:
        """The change a payment of ``amount`` returns (None: no change output); ChannelError if the
        protocol does not allow that amount (dust, above the maximum, in the gap where the change would be
        dust, or below the tower output's own dust threshold)."""
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise ChannelError("amount must be an integer")
        if amount < script.dust_threshold(self.tower_script):
            raise ChannelError(
                f"amount {amount} is below the dust threshold of the tower's output "
                f"({script.dust_threshold(self.tower_script)} sat)"
            )
        if amount <= self.max_amount_with_change:
            return self.funding_value - amount - self.payment_fee(True)
        if amount == self.max_amount:
            return None
        if amount > self.max_amount:
            raise ChannelError(f"amount {amount} exceeds the channel's maximum {self.max_amount}")
        raise ChannelError(
            f"amount {amount} would leave change below dust; pay at most {self.max_amount_with_change} "
            f"or exactly {self.max_amount} (everything)"
        )


def _payment_skeleton(params: ChannelParams, amount: int, change: int | None, dummy: bool) -> Transaction:
    outputs = [TxOut(amount, params.tower_script)]
    if change is not None:
        outputs.append(TxOut(change, params.change_script))
    witness: tuple[bytes, ...] = ()
    if dummy:
        witness = (bytes(SIGNATURE_BOUND), bytes(SIGNATURE_BOUND), b"\x01", params.witness_script)
    txin = TxIn(params.channel_id.txid, params.channel_id.vout, b"", PAYMENT_SEQUENCE, witness)
    return Transaction(TX_VERSION, (txin,), tuple(outputs), PAYMENT_LOCKTIME)


def payment_tx(params: ChannelParams, amount: int) -> Transaction:
    """The unsigned payment of ``amount`` (ChannelError if the amount is not allowed)."""
    return _payment_skeleton(params, amount, params.change_for(amount), dummy=False)


def payment_sighash(params: ChannelParams, amount: int) -> bytes:
    """The BIP143 SIGHASH_ALL digest both the user and the tower sign for a payment of ``amount``."""
    return sighash.bip143_sighash(
        payment_tx(params, amount), 0, params.witness_script, params.funding_value, sighash.SIGHASH_ALL
    )


def sign_payment(params: ChannelParams, amount: int, user_secret: bytes) -> bytes:
    """The user's signature of a payment of ``amount`` (DER plus SIGHASH_ALL)."""
    return sighash.sign(user_secret, payment_sighash(params, amount))


def verify_payment_signature(params: ChannelParams, amount: int, signature: bytes) -> bool:
    """True iff ``signature`` is the user's policy-clean SIGHASH_ALL signature of that exact payment."""
    if len(signature) < 1 or signature[-1] != sighash.SIGHASH_ALL:
        return False
    return sighash.verify(params.user_key, signature, payment_sighash(params, amount))


def claim_tx(params: ChannelParams, amount: int, user_signature: bytes, tower_secret: bytes) -> Transaction:
    """The payment of ``amount`` with both signatures: what the tower broadcasts to get paid.

    Raises ChannelError if ``user_signature`` does not sign that payment, so a claim the network would
    refuse is never built."""
    if not verify_payment_signature(params, amount, user_signature):
        raise ChannelError("the user's signature does not sign this payment")
    tx = payment_tx(params, amount)
    tower_signature = sighash.sign(tower_secret, payment_sighash(params, amount))
    return with_witness(tx, (user_signature, tower_signature, b"\x01", params.witness_script))


def with_witness(tx: Transaction, witness: tuple[bytes, ...]) -> Transaction:
    """``tx`` (one input) with ``witness`` on its input."""
    (txin,) = tx.inputs
    signed = TxIn(txin.prev_txid, txin.prev_vout, txin.script_sig, txin.sequence, witness)
    return Transaction(tx.version, (signed,), tx.outputs, tx.locktime)


# -- funding --------------------------------------------------------------------------------------------


def funding_psbt(
    user_key: bytes,
    tower_key: bytes,
    expiry: int,
    funding_value: int,
    spends: Sequence[tuple[Txid, int, TxOut]],
    change: TxOut | None = None,
    sequence: int = 0xFFFFFFFD,
) -> psbt.Psbt:
    """A BIP174 PSBT for any wallet to sign: ``spends`` (outpoint and the output it spends, given to the
    signer as its witness UTXO) pay ``funding_value`` to the channel's funding output (output 0, with its
    witness script attached so that a hardware wallet can show it) and the optional ``change``. The fee is
    whatever the inputs leave; choosing inputs and change is the wallet's business."""
    witness_script = funding_witness_script(user_key, tower_key, expiry)
    outputs = [TxOut(funding_value, script.p2wsh(witness_script))]
    if change is not None:
        outputs.append(change)
    inputs = tuple(TxIn(txid, vout, b"", sequence) for txid, vout, _ in spends)
    p = psbt.Psbt.create(Transaction(TX_VERSION, inputs, tuple(outputs), 0))
    for index, (_, _, utxo) in enumerate(spends):
        p.set_witness_utxo(index, utxo)
    p.set_output_witness_script(0, witness_script)
    return p


# -- refund ---------------------------------------------------------------------------------------------


def refund_fee(params: ChannelParams, destination: bytes, fee_rate: int) -> int:
    """The fee of the refund to ``destination`` at ``fee_rate`` sat/kvB (signature counted at 72 bytes)."""
    bound = _refund_skeleton(params, destination, 0, dummy=True)
    return -(-fee_rate * bound.vsize // 1000)


def _refund_skeleton(params: ChannelParams, destination: bytes, value: int, dummy: bool) -> Transaction:
    witness: tuple[bytes, ...] = (bytes(SIGNATURE_BOUND), b"", params.witness_script) if dummy else ()
    txin = TxIn(params.channel_id.txid, params.channel_id.vout, b"", REFUND_SEQUENCE, witness)
    return Transaction(TX_VERSION, (txin,), (TxOut(value, destination),), params.expiry)


def refund_tx(params: ChannelParams, destination: bytes, fee_rate: int, user_secret: bytes) -> Transaction:
    """The user's signed refund of the whole funding output to ``destination``, valid in blocks above
    ``params.expiry`` (its nLockTime). ChannelError if the fee leaves only dust."""
    value = params.funding_value - refund_fee(params, destination, fee_rate)
    if value < script.dust_threshold(destination):
        raise ChannelError("the refund would be dust at this fee rate")
    unsigned = _refund_skeleton(params, destination, value, dummy=False)
    digest = sighash.bip143_sighash(unsigned, 0, params.witness_script, params.funding_value)
    return with_witness(unsigned, (sighash.sign(user_secret, digest), b"", params.witness_script))
