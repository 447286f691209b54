"""BIP174 Partially Signed Bitcoin Transactions, version 0: parse, build, sign segwit v0, combine, finalize.

A user funds a payment channel from whatever wallet holds their coins, so the client hands that wallet a
PSBT: the unsigned funding transaction plus what a signer needs (the outputs being spent, and the funding
output's witness script so a hardware wallet can show what it pays to). Layout (BIP174)::

    "psbt" 0xff | global map | one map per input | one map per output
    map    = { <compact size> <key: type byte || key data> <compact size> <value> }* 0x00

Parsing is strict and bounded (every length checked against what remains; nothing but
:class:`PsbtError` escapes): the global map must hold the unsigned transaction in its non-witness
serialisation with empty scriptSigs, every known key type must have the key data and value shape BIP174
gives it, public keys must be valid points, duplicate keys are refused, and there must be exactly one map
per input and per output. Unknown key types are kept as they are. Maps are written in the order Bitcoin
Core writes (and BIP174's vectors use): by key bytes, except partial signatures, by the hash160 of their key.

The signer here covers what a channel funding needs: P2WPKH, P2WSH and their P2SH-wrapped forms, with
SIGHASH_ALL unless the input asks for another type. The finalizer covers P2WPKH, P2SH-P2WPKH and
``OP_m <keys> OP_n OP_CHECKMULTISIG`` under P2SH, P2WSH or P2SH-P2WSH.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from coincurve import PrivateKey, PublicKey

from common import sighash
from common.tx import (
    Reader,
    Transaction,
    TxDecodeError,
    TxIn,
    TxOut,
    decode_transaction,
    hash160,
    ser_bytes,
    ser_compact_size,
    sha256,
)
from common.types import Txid

MAGIC = b"psbt\xff"

GLOBAL_UNSIGNED_TX = 0x00
GLOBAL_XPUB = 0x01
GLOBAL_VERSION = 0xFB

IN_NON_WITNESS_UTXO = 0x00
IN_WITNESS_UTXO = 0x01
IN_PARTIAL_SIG = 0x02
IN_SIGHASH_TYPE = 0x03
IN_REDEEM_SCRIPT = 0x04
IN_WITNESS_SCRIPT = 0x05
IN_BIP32_DERIVATION = 0x06
IN_FINAL_SCRIPTSIG = 0x07
IN_FINAL_SCRIPTWITNESS = 0x08

OUT_REDEEM_SCRIPT = 0x00
OUT_WITNESS_SCRIPT = 0x01
OUT_BIP32_DERIVATION = 0x02

MAX_PSBT_SIZE = 10_000_000  # refuse anything larger outright (Core's RPC limit is in the same range)


class PsbtError(ValueError):
    """Not a valid BIP174 version 0 PSBT, or an operation the PSBT does not allow."""


class PsbtSignError(PsbtError):
    """A signer refused an input (its data does not match what it spends, or the key has no part)."""


Map = dict[bytes, bytes]


@dataclass
class Psbt:
    """A PSBT: the unsigned transaction and one key/value map per section (keys include the type byte).

    The maps are the whole truth; the helpers below read and write typed records in them.
    """

    tx: Transaction
    global_map: Map = field(default_factory=dict)
    inputs: list[Map] = field(default_factory=list)
    outputs: list[Map] = field(default_factory=list)

    # -- creation ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, tx: Transaction) -> Psbt:
        """The Creator role: a PSBT around ``tx`` with empty scriptSigs and witnesses."""
        unsigned = _unsigned(tx)
        return cls(
            unsigned,
            {bytes([GLOBAL_UNSIGNED_TX]): serialize_unsigned_tx(unsigned)},
            [{} for _ in unsigned.inputs],
            [{} for _ in unsigned.outputs],
        )

    # -- serialisation ----------------------------------------------------------------------------------

    def serialize(self) -> bytes:
        parts = [MAGIC, _write_map(self.global_map)]
        parts.extend(_write_map(m, _input_order) for m in self.inputs)
        parts.extend(_write_map(m) for m in self.outputs)
        return b"".join(parts)

    def to_base64(self) -> str:
        return base64.b64encode(self.serialize()).decode("ascii")

    # -- updater ----------------------------------------------------------------------------------------

    def set_non_witness_utxo(self, index: int, prev_tx: Transaction) -> None:
        if prev_tx.txid != self.tx.inputs[index].prev_txid:
            raise PsbtError(f"input {index}: previous transaction has another txid")
        self.inputs[index][bytes([IN_NON_WITNESS_UTXO])] = prev_tx.serialize(include_witness=True)

    def set_witness_utxo(self, index: int, utxo: TxOut) -> None:
        self.inputs[index][bytes([IN_WITNESS_UTXO])] = utxo.serialize()

    def set_redeem_script(self, index: int, script: bytes) -> None:
        self.inputs[index][bytes([IN_REDEEM_SCRIPT])] = script

    def set_witness_script(self, index: int, script: bytes) -> None:
        self.inputs[index][bytes([IN_WITNESS_SCRIPT])] = script

    def set_sighash_type(self, index: int, hashtype: int) -> None:
        self.inputs[index][bytes([IN_SIGHASH_TYPE])] = struct.pack("<I", hashtype)

    def add_input_derivation(
        self, index: int, pubkey: bytes, fingerprint: bytes, path: Sequence[int]
    ) -> None:
        self.inputs[index][bytes([IN_BIP32_DERIVATION]) + pubkey] = _key_origin(fingerprint, path)

    def set_output_redeem_script(self, index: int, script: bytes) -> None:
        self.outputs[index][bytes([OUT_REDEEM_SCRIPT])] = script

    def set_output_witness_script(self, index: int, script: bytes) -> None:
        self.outputs[index][bytes([OUT_WITNESS_SCRIPT])] = script

    def add_output_derivation(
        self, index: int, pubkey: bytes, fingerprint: bytes, path: Sequence[int]
    ) -> None:
        self.outputs[index][bytes([OUT_BIP32_DERIVATION]) + pubkey] = _key_origin(fingerprint, path)

    # -- typed reads ------------------------------------------------------------------------------------

    def utxo(self, index: int) -> TxOut | None:
        """The output input ``index`` spends, from its witness UTXO or its full previous transaction."""
        m = self.inputs[index]
        raw = m.get(bytes([IN_WITNESS_UTXO]))
        if raw is not None:
            return _decode_txout(raw)
        prev = m.get(bytes([IN_NON_WITNESS_UTXO]))
        if prev is not None:
            tx = decode_transaction(prev)
            return tx.outputs[self.tx.inputs[index].prev_vout]
        return None

    def partial_sigs(self, index: int) -> dict[bytes, bytes]:
        return {k[1:]: v for k, v in self.inputs[index].items() if k[0] == IN_PARTIAL_SIG}

    def sighash_type(self, index: int) -> int | None:
        raw = self.inputs[index].get(bytes([IN_SIGHASH_TYPE]))
        return None if raw is None else int(struct.unpack("<I", raw)[0])

    def is_finalized(self, index: int) -> bool:
        m = self.inputs[index]
        return bytes([IN_FINAL_SCRIPTSIG]) in m or bytes([IN_FINAL_SCRIPTWITNESS]) in m

    # -- signer -----------------------------------------------------------------------------------------

    def sign_input(self, index: int, secret_key: bytes) -> bytes:
        """Adds ``secret_key``'s signature to segwit v0 input ``index``; returns the signature.

        Checks first what BIP174's signer must: the UTXO is known and (when both are given) agrees with the
        previous transaction; a redeem script hashes to a P2SH output; a witness script hashes to the
        P2WSH program; the key appears in the script it signs for. Raises PsbtSignError otherwise.
        """
        if not 0 <= index < len(self.inputs):
            raise PsbtSignError(f"no input {index}")
        m = self.inputs[index]
        utxo = self._checked_utxo(index)
        spk = utxo.script_pubkey
        redeem = m.get(bytes([IN_REDEEM_SCRIPT]))
        if redeem is not None:
            if not (
                len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[22] == 0x87 and spk[2:22] == hash160(redeem)
            ):
                raise PsbtSignError(f"input {index}: redeem script does not match the output script")
            program = redeem
        elif len(spk) == 23 and spk[:2] == b"\xa9\x14":
            raise PsbtSignError(f"input {index}: P2SH output without a redeem script")
        else:
            program = spk
        pubkey = PrivateKey(secret_key).public_key.format(compressed=True)
        if len(program) == 22 and program[:2] == b"\x00\x14":
            if program[2:] != hash160(pubkey):
                raise PsbtSignError(f"input {index}: the key does not own this P2WPKH output")
            script_code = b"\x76\xa9\x14" + program[2:] + b"\x88\xac"
        elif len(program) == 34 and program[:2] == b"\x00\x20":
            witness_script = m.get(bytes([IN_WITNESS_SCRIPT]))
            if witness_script is None:
                raise PsbtSignError(f"input {index}: P2WSH output without a witness script")
            if sha256(witness_script) != program[2:]:
                raise PsbtSignError(f"input {index}: witness script does not match the witness program")
            if pubkey not in _pushes(witness_script):
                raise PsbtSignError(f"input {index}: the key does not appear in the witness script")
            script_code = witness_script
        else:
            raise PsbtSignError(f"input {index}: not a segwit v0 output (this signer signs only those)")
        hashtype = self.sighash_type(index) or sighash.SIGHASH_ALL
        digest = sighash.bip143_sighash(self.tx, index, script_code, utxo.value, hashtype)
        signature = sighash.sign(secret_key, digest, hashtype)
        m[bytes([IN_PARTIAL_SIG]) + pubkey] = signature
        return signature

    def _checked_utxo(self, index: int) -> TxOut:
        m = self.inputs[index]
        outpoint = self.tx.inputs[index]
        witness_raw = m.get(bytes([IN_WITNESS_UTXO]))
        prev_raw = m.get(bytes([IN_NON_WITNESS_UTXO]))
        if witness_raw is None and prev_raw is None:
            raise PsbtSignError(f"input {index}: the output it spends is not given")
        witness_utxo = _decode_txout(witness_raw) if witness_raw is not None else None
        if prev_raw is not None:
            prev = decode_transaction(prev_raw)
            if prev.txid != outpoint.prev_txid or outpoint.prev_vout >= len(prev.outputs):
                raise PsbtSignError(f"input {index}: previous transaction does not match the outpoint")
            full = prev.outputs[outpoint.prev_vout]
            if witness_utxo is not None and witness_utxo != full:
                raise PsbtSignError(f"input {index}: witness UTXO disagrees with the previous transaction")
            witness_utxo = witness_utxo or full
        assert witness_utxo is not None
        if witness_raw is not None and not _is_segwit_or_p2sh(witness_utxo.script_pubkey):
            raise PsbtSignError(f"input {index}: a witness UTXO is given for a non-witness output")
        return witness_utxo

    # -- combiner, finalizer, extractor -----------------------------------------------------------------

    def finalize(self) -> None:
        """The Input Finalizer: turns each signed input's partial signatures into its final scriptSig and
        witness, and drops every other field of that input (BIP174). Raises PsbtError for an input it cannot
        finalize (an unsupported script, or too few signatures)."""
        for index in range(len(self.inputs)):
            if not self.is_finalized(index):
                self._finalize_input(index)

    def _finalize_input(self, index: int) -> None:
        m = self.inputs[index]
        utxo = self.utxo(index)
        if utxo is None:
            raise PsbtError(f"input {index}: the output it spends is not given")
        sigs = self.partial_sigs(index)
        spk = utxo.script_pubkey
        redeem = m.get(bytes([IN_REDEEM_SCRIPT]))
        program = redeem if redeem is not None else spk
        script_sig = b""
        witness: list[bytes] | None = None
        if len(program) == 22 and program[:2] == b"\x00\x14":
            matching = [(pk, sig) for pk, sig in sigs.items() if hash160(pk) == program[2:]]
            if not matching:
                raise PsbtError(f"input {index}: no signature for the P2WPKH key")
            pk, sig = matching[0]
            witness = [sig, pk]
        elif len(program) == 34 and program[:2] == b"\x00\x20":
            witness_script = m.get(bytes([IN_WITNESS_SCRIPT]))
            if witness_script is None:
                raise PsbtError(f"input {index}: no witness script")
            witness = [b"", *_multisig_signatures(witness_script, sigs, index), witness_script]
        elif redeem is not None:
            script_sig = b"\x00" + b"".join(_push(s) for s in _multisig_signatures(redeem, sigs, index))
        else:
            raise PsbtError(f"input {index}: this finalizer does not handle its script")
        if redeem is not None:
            script_sig += _push(redeem)
        # BIP174: a finalized input keeps its UTXO and the fields this code does not know, nothing else.
        kept = {k: v for k, v in m.items() if k[0] in (IN_NON_WITNESS_UTXO, IN_WITNESS_UTXO) or k[0] > 0x08}
        if script_sig:
            kept[bytes([IN_FINAL_SCRIPTSIG])] = script_sig
        if witness is not None:
            kept[bytes([IN_FINAL_SCRIPTWITNESS])] = ser_compact_size(len(witness)) + b"".join(
                ser_bytes(item) for item in witness
            )
        self.inputs[index] = kept

    def extract(self) -> Transaction:
        """The Transaction Extractor: the network transaction, once every input is finalized."""
        inputs = []
        for index, txin in enumerate(self.tx.inputs):
            m = self.inputs[index]
            if not self.is_finalized(index):
                raise PsbtError(f"input {index} is not finalized")
            script_sig = m.get(bytes([IN_FINAL_SCRIPTSIG]), b"")
            raw_witness = m.get(bytes([IN_FINAL_SCRIPTWITNESS]))
            witness = _read_witness(raw_witness) if raw_witness is not None else ()
            inputs.append(TxIn(txin.prev_txid, txin.prev_vout, script_sig, txin.sequence, witness))
        return Transaction(self.tx.version, tuple(inputs), self.tx.outputs, self.tx.locktime)


def combine(psbts: Sequence[Psbt]) -> Psbt:
    """The Combiner: the union of every map of PSBTs of one same unsigned transaction."""
    if not psbts:
        raise PsbtError("nothing to combine")
    first = psbts[0]
    out = Psbt(
        first.tx, dict(first.global_map), [dict(m) for m in first.inputs], [dict(m) for m in first.outputs]
    )
    for other in psbts[1:]:
        if serialize_unsigned_tx(other.tx) != serialize_unsigned_tx(first.tx):
            raise PsbtError("PSBTs of different transactions cannot be combined")
        out.global_map.update(other.global_map)
        for mine, theirs in zip(out.inputs, other.inputs, strict=True):
            mine.update(theirs)
        for mine, theirs in zip(out.outputs, other.outputs, strict=True):
            mine.update(theirs)
    return out


# -- parsing ------------------------------------------------------------------------------------------------


def parse(data: bytes) -> Psbt:
    """A PSBT from its bytes; raises PsbtError for anything BIP174 version 0 does not allow."""
    if not isinstance(data, (bytes, bytearray)):
        raise PsbtError("a PSBT is bytes")
    if len(data) > MAX_PSBT_SIZE:
        raise PsbtError("PSBT too large")
    if bytes(data[:5]) != MAGIC:
        raise PsbtError("not a PSBT (bad magic)")
    r = Reader(bytes(data[5:]))
    try:
        global_map = _read_map(r)
        unsigned_raw = global_map.get(bytes([GLOBAL_UNSIGNED_TX]))
        if unsigned_raw is None:
            raise PsbtError("no unsigned transaction in the global map")
        tx = parse_unsigned_tx(unsigned_raw)
        for key, value in global_map.items():
            _check_global(key, value)
        inputs = []
        for index, txin in enumerate(tx.inputs):
            m = _read_map(r)
            for key, value in m.items():
                _check_input(key, value, index, txin)
            inputs.append(m)
        outputs = []
        for index in range(len(tx.outputs)):
            m = _read_map(r)
            for key, value in m.items():
                _check_output(key, value, index)
            outputs.append(m)
    except TxDecodeError as exc:
        raise PsbtError(f"malformed PSBT: {exc}") from None
    if r.remaining:
        raise PsbtError("trailing data after the PSBT")
    return Psbt(tx, global_map, inputs, outputs)


def parse_base64(text: str) -> Psbt:
    if not isinstance(text, str):
        raise PsbtError("a base64 PSBT is text")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PsbtError("not base64") from None
    return parse(raw)


def serialize_unsigned_tx(tx: Transaction) -> bytes:
    return tx.serialize(include_witness=False)


def parse_unsigned_tx(raw: bytes) -> Transaction:
    """The global unsigned transaction: non-witness serialisation (0 inputs allowed), no scriptSigs."""
    r = Reader(raw)
    version = r.i32()
    inputs = []
    for _ in range(r.count(41)):
        prev = r.read(32)
        vout = r.u32()
        script_sig = r.var_bytes()
        sequence = r.u32()
        if script_sig:
            raise PsbtError("the unsigned transaction has a scriptSig")
        inputs.append(TxIn(Txid(prev), vout, b"", sequence))
    outputs = []
    for _ in range(r.count(9)):
        value = r.i64()
        outputs.append(TxOut(value, r.var_bytes()))
    locktime = r.u32()
    if r.remaining:
        raise PsbtError("unsigned transaction has trailing data (witness serialisation?)")
    return Transaction(version, tuple(inputs), tuple(outputs), locktime)


def _read_map(r: Reader) -> Map:
    m: Map = {}
    while True:
        key_len = r.compact_size()
        if key_len == 0:
            return m
        key = r.read(key_len)
        value = r.read(r.compact_size())
        if key in m:
            raise PsbtError(f"duplicate key {key.hex()}")
        m[key] = value


def _write_map(m: Mapping[bytes, bytes], order: Callable[[bytes], bytes] = lambda k: k) -> bytes:
    return b"".join(ser_bytes(k) + ser_bytes(m[k]) for k in sorted(m, key=order)) + b"\x00"


def _input_order(key: bytes) -> bytes:
    """Bitcoin Core keeps partial signatures keyed by the key's hash160, everything else by key bytes."""
    if key[0] == IN_PARTIAL_SIG:
        return key[:1] + hash160(key[1:])
    return key


def _check_global(key: bytes, value: bytes) -> None:
    kind = key[0]
    if kind == GLOBAL_UNSIGNED_TX and len(key) != 1:
        raise PsbtError("unsigned transaction key with key data")
    if kind == GLOBAL_XPUB:
        if len(key) != 79:
            raise PsbtError("global xpub key must carry a 78-byte extended key")
        _check_origin(value)
    if kind == GLOBAL_VERSION:
        if len(key) != 1 or len(value) != 4:
            raise PsbtError("malformed version")
        if struct.unpack("<I", value)[0] != 0:
            raise PsbtError("only PSBT version 0 is supported")


def _check_input(key: bytes, value: bytes, index: int, txin: TxIn) -> None:
    kind = key[0]
    where = f"input {index}"
    if kind in (IN_NON_WITNESS_UTXO, IN_WITNESS_UTXO, IN_SIGHASH_TYPE, IN_REDEEM_SCRIPT, IN_WITNESS_SCRIPT,
                IN_FINAL_SCRIPTSIG, IN_FINAL_SCRIPTWITNESS) and len(key) != 1:  # fmt: skip
        raise PsbtError(f"{where}: key type {kind:#04x} takes no key data")
    if kind == IN_NON_WITNESS_UTXO:
        prev = decode_transaction(value)
        if prev.txid != txin.prev_txid:
            raise PsbtError(f"{where}: non-witness UTXO is not the transaction it spends")
    elif kind == IN_WITNESS_UTXO:
        _decode_txout(value)
    elif kind == IN_PARTIAL_SIG:
        _check_pubkey(key[1:], where)
        try:
            sighash.check_signature_encoding(value)
        except sighash.SignatureEncodingError as exc:
            # BIP174 only asks for a signature; Core is as lenient as the consensus DER parser. Keep the
            # check to a sane length so odd but valid encodings from other signers still parse.
            if not 9 <= len(value) <= sighash.MAX_SIGNATURE_SIZE:
                raise PsbtError(f"{where}: partial signature: {exc}") from None
    elif kind == IN_SIGHASH_TYPE:
        if len(value) != 4:
            raise PsbtError(f"{where}: sighash type must be 4 bytes")
    elif kind == IN_BIP32_DERIVATION:
        _check_pubkey(key[1:], where)
        _check_origin(value)
    elif kind == IN_FINAL_SCRIPTWITNESS:
        _read_witness(value)


def _check_output(key: bytes, value: bytes, index: int) -> None:
    kind = key[0]
    if kind in (OUT_REDEEM_SCRIPT, OUT_WITNESS_SCRIPT) and len(key) != 1:
        raise PsbtError(f"output {index}: key type {kind:#04x} takes no key data")
    if kind == OUT_BIP32_DERIVATION:
        _check_pubkey(key[1:], f"output {index}")
        _check_origin(value)


def _check_pubkey(pubkey: bytes, where: str) -> None:
    if len(pubkey) not in (33, 65):
        raise PsbtError(f"{where}: public key of {len(pubkey)} bytes")
    try:
        PublicKey(pubkey)
    except Exception:
        raise PsbtError(f"{where}: not a valid public key") from None


def _check_origin(value: bytes) -> None:
    if len(value) < 4 or len(value) % 4:
        raise PsbtError("key origin must be a fingerprint and 4-byte path elements")


def _key_origin(fingerprint: bytes, path: Sequence[int]) -> bytes:
    if len(fingerprint) != 4:
        raise PsbtError("a fingerprint is 4 bytes")
    return fingerprint + b"".join(struct.pack("<I", p) for p in path)


def _decode_txout(raw: bytes) -> TxOut:
    r = Reader(raw)
    try:
        value = r.i64()
        script = r.var_bytes()
    except TxDecodeError as exc:
        raise PsbtError(f"malformed witness UTXO: {exc}") from None
    if r.remaining:
        raise PsbtError("witness UTXO has trailing data")
    return TxOut(value, script)


def _read_witness(raw: bytes) -> tuple[bytes, ...]:
    r = Reader(raw)
    try:
        items = tuple(r.var_bytes() for _ in range(r.count(1)))
    except TxDecodeError as exc:
        raise PsbtError(f"malformed final witness: {exc}") from None
    if r.remaining:
        raise PsbtError("final witness has trailing data")
    return items


def _is_segwit_or_p2sh(spk: bytes) -> bool:
    if len(spk) == 23 and spk[:2] == b"\xa9\x14" and spk[22] == 0x87:
        return True
    return 4 <= len(spk) <= 42 and (spk[0] == 0 or 0x51 <= spk[0] <= 0x60) and spk[1] == len(spk) - 2


def _unsigned(tx: Transaction) -> Transaction:
    return Transaction(
        tx.version,
        tuple(TxIn(i.prev_txid, i.prev_vout, b"", i.sequence) for i in tx.inputs),
        tx.outputs,
        tx.locktime,
    )


def _push(data: bytes) -> bytes:
    n = len(data)
    if n < 0x4C:
        return bytes([n]) + data
    if n <= 0xFF:
        return b"\x4c" + bytes([n]) + data
    if n <= 0xFFFF:
        return b"\x4d" + struct.pack("<H", n) + data
    return b"\x4e" + struct.pack("<I", n) + data


def _pushes(script: bytes) -> list[bytes]:
    """The data pushed by ``script`` (small direct pushes only, which is what keys use)."""
    out = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if 1 <= op <= 0x4B:
            out.append(script[i : i + op])
            i += op
        elif op == 0x4C and i < len(script):
            n = script[i]
            out.append(script[i + 1 : i + 1 + n])
            i += 1 + n
    return out


def _multisig_signatures(script: bytes, sigs: Mapping[bytes, bytes], index: int) -> list[bytes]:
    """For ``OP_m <k1>..<kn> OP_n OP_CHECKMULTISIG``: m signatures, in the order of their keys."""
    if (
        len(script) < 3
        or script[-1] != 0xAE
        or not 0x51 <= script[0] <= 0x60
        or not 0x51 <= script[-2] <= 0x60
    ):
        raise PsbtError(f"input {index}: this finalizer handles only OP_CHECKMULTISIG scripts")
    required = script[0] - 0x50
    keys = _pushes(script[1:-2])
    if len(keys) != script[-2] - 0x50:
        raise PsbtError(f"input {index}: malformed multisig script")
    chosen = [sigs[k] for k in keys if k in sigs][:required]
    if len(chosen) < required:
        raise PsbtError(f"input {index}: {len(chosen)} of {required} signatures")
    return chosen
