"""A Python script interpreter with Bitcoin Core's semantics, kept for its error codes and policy flags.

Bitcoin Core's own code (libbitcoinkernel, through ``pbk``) decides whether a spend is valid under the
consensus flags; it answers yes or no and accepts only those flags. Core's relay policy runs the same
interpreter with more flags (``STANDARD_SCRIPT_VERIFY_FLAGS``: LOW_S, NULLFAIL, MINIMALIF, CLEANSTACK...),
and its reject messages carry the interpreter's ``ScriptError``. This module checks what
``src/script/interpreter.cpp`` checks (``VerifyScript``, ``VerifyWitnessProgram``, ``ExecuteWitnessScript``,
``EvalScript``, the signature checkers and both signature hashes) step by step, in the same order, so the
first error it meets is the one Core reports, worded by ``error_string`` as Core's ``ScriptErrorString``.

Exact: legacy scripts, P2SH, segwit v0 (P2WPKH, P2WSH) and taproot key and script paths (tapscript,
OP_SUCCESSx, the validation weight budget, annexes), every opcode, every sighash type, and every flag.
Not exact: without the DERSIG flag Core parses signatures with libsecp256k1's lax DER parser; here a
signature that is not strict DER then simply fails to verify. DERSIG is part of every flag set the
simulator uses except the consensus flags of a chain whose tip is the genesis block (see ``scriptcheck``).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from functools import cached_property

import coincurve

from common.crypto import ripemd160
from common.tx import Transaction, TxOut, ser_bytes, ser_compact_size, sha256, sha256d
from teos.regtest.script import script_num


class Flag(IntFlag):
    """Core's ``SCRIPT_VERIFY_*`` bits (``script_verify_flag_name`` order in interpreter.h)."""

    NONE = 0
    P2SH = 1 << 0
    STRICTENC = 1 << 1
    DERSIG = 1 << 2
    LOW_S = 1 << 3
    NULLDUMMY = 1 << 4
    SIGPUSHONLY = 1 << 5
    MINIMALDATA = 1 << 6
    DISCOURAGE_UPGRADABLE_NOPS = 1 << 7
    CLEANSTACK = 1 << 8
    CHECKLOCKTIMEVERIFY = 1 << 9
    CHECKSEQUENCEVERIFY = 1 << 10
    WITNESS = 1 << 11
    DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM = 1 << 12
    MINIMALIF = 1 << 13
    NULLFAIL = 1 << 14
    WITNESS_PUBKEYTYPE = 1 << 15
    CONST_SCRIPTCODE = 1 << 16
    TAPROOT = 1 << 17
    DISCOURAGE_UPGRADABLE_TAPROOT_VERSION = 1 << 18
    DISCOURAGE_OP_SUCCESS = 1 << 19
    DISCOURAGE_UPGRADABLE_PUBKEYTYPE = 1 << 20


# policy/policy.h
MANDATORY_FLAGS = (
    Flag.P2SH
    | Flag.DERSIG
    | Flag.NULLDUMMY
    | Flag.CHECKLOCKTIMEVERIFY
    | Flag.CHECKSEQUENCEVERIFY
    | Flag.WITNESS
    | Flag.TAPROOT
)
STANDARD_FLAGS = (
    MANDATORY_FLAGS
    | Flag.STRICTENC
    | Flag.MINIMALDATA
    | Flag.DISCOURAGE_UPGRADABLE_NOPS
    | Flag.CLEANSTACK
    | Flag.MINIMALIF
    | Flag.NULLFAIL
    | Flag.LOW_S
    | Flag.DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM
    | Flag.WITNESS_PUBKEYTYPE
    | Flag.CONST_SCRIPTCODE
    | Flag.DISCOURAGE_UPGRADABLE_TAPROOT_VERSION
    | Flag.DISCOURAGE_OP_SUCCESS
    | Flag.DISCOURAGE_UPGRADABLE_PUBKEYTYPE
)


class ScriptError(IntEnum):
    """Core's ``ScriptError_t`` (script_error.h), in its order."""

    OK = 0
    UNKNOWN_ERROR = 1
    EVAL_FALSE = 2
    OP_RETURN = 3
    SCRIPTNUM = 4
    SCRIPT_SIZE = 5
    PUSH_SIZE = 6
    OP_COUNT = 7
    STACK_SIZE = 8
    SIG_COUNT = 9
    PUBKEY_COUNT = 10
    VERIFY = 11
    EQUALVERIFY = 12
    CHECKMULTISIGVERIFY = 13
    CHECKSIGVERIFY = 14
    NUMEQUALVERIFY = 15
    BAD_OPCODE = 16
    DISABLED_OPCODE = 17
    INVALID_STACK_OPERATION = 18
    INVALID_ALTSTACK_OPERATION = 19
    UNBALANCED_CONDITIONAL = 20
    NEGATIVE_LOCKTIME = 21
    UNSATISFIED_LOCKTIME = 22
    SIG_HASHTYPE = 23
    SIG_DER = 24
    MINIMALDATA = 25
    SIG_PUSHONLY = 26
    SIG_HIGH_S = 27
    SIG_NULLDUMMY = 28
    PUBKEYTYPE = 29
    CLEANSTACK = 30
    MINIMALIF = 31
    SIG_NULLFAIL = 32
    DISCOURAGE_UPGRADABLE_NOPS = 33
    DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM = 34
    DISCOURAGE_UPGRADABLE_TAPROOT_VERSION = 35
    DISCOURAGE_OP_SUCCESS = 36
    DISCOURAGE_UPGRADABLE_PUBKEYTYPE = 37
    WITNESS_PROGRAM_WRONG_LENGTH = 38
    WITNESS_PROGRAM_WITNESS_EMPTY = 39
    WITNESS_PROGRAM_MISMATCH = 40
    WITNESS_MALLEATED = 41
    WITNESS_MALLEATED_P2SH = 42
    WITNESS_UNEXPECTED = 43
    WITNESS_PUBKEYTYPE = 44
    SCHNORR_SIG_SIZE = 45
    SCHNORR_SIG_HASHTYPE = 46
    SCHNORR_SIG = 47
    TAPROOT_WRONG_CONTROL_SIZE = 48
    TAPSCRIPT_VALIDATION_WEIGHT = 49
    TAPSCRIPT_CHECKMULTISIG = 50
    TAPSCRIPT_MINIMALIF = 51
    TAPSCRIPT_EMPTY_PUBKEY = 52
    OP_CODESEPARATOR = 53
    SIG_FINDANDDELETE = 54


_ERROR_STRINGS = {
    ScriptError.OK: "No error",
    ScriptError.EVAL_FALSE: (
        "Script evaluated without error but finished with a false/empty top stack element"
    ),
    ScriptError.VERIFY: "Script failed an OP_VERIFY operation",
    ScriptError.EQUALVERIFY: "Script failed an OP_EQUALVERIFY operation",
    ScriptError.CHECKMULTISIGVERIFY: "Script failed an OP_CHECKMULTISIGVERIFY operation",
    ScriptError.CHECKSIGVERIFY: "Script failed an OP_CHECKSIGVERIFY operation",
    ScriptError.NUMEQUALVERIFY: "Script failed an OP_NUMEQUALVERIFY operation",
    ScriptError.SCRIPT_SIZE: "Script is too big",
    ScriptError.PUSH_SIZE: "Push value size limit exceeded",
    ScriptError.OP_COUNT: "Operation limit exceeded",
    ScriptError.STACK_SIZE: "Stack size limit exceeded",
    ScriptError.SIG_COUNT: "Signature count negative or greater than pubkey count",
    ScriptError.PUBKEY_COUNT: "Pubkey count negative or limit exceeded",
    ScriptError.BAD_OPCODE: "Opcode missing or not understood",
    ScriptError.DISABLED_OPCODE: "Attempted to use a disabled opcode",
    ScriptError.INVALID_STACK_OPERATION: "Operation not valid with the current stack size",
    ScriptError.INVALID_ALTSTACK_OPERATION: "Operation not valid with the current altstack size",
    ScriptError.OP_RETURN: "OP_RETURN was encountered",
    ScriptError.UNBALANCED_CONDITIONAL: "Invalid OP_IF construction",
    ScriptError.NEGATIVE_LOCKTIME: "Negative locktime",
    ScriptError.UNSATISFIED_LOCKTIME: "Locktime requirement not satisfied",
    ScriptError.SIG_HASHTYPE: "Signature hash type missing or not understood",
    ScriptError.SIG_DER: "Non-canonical DER signature",
    ScriptError.MINIMALDATA: "Data push larger than necessary",
    ScriptError.SIG_PUSHONLY: "Only push operators allowed in signatures",
    ScriptError.SIG_HIGH_S: "Non-canonical signature: S value is unnecessarily high",
    ScriptError.SIG_NULLDUMMY: "Dummy CHECKMULTISIG argument must be zero",
    ScriptError.MINIMALIF: "OP_IF/NOTIF argument must be minimal",
    ScriptError.SIG_NULLFAIL: "Signature must be zero for failed CHECK(MULTI)SIG operation",
    ScriptError.DISCOURAGE_UPGRADABLE_NOPS: "NOPx reserved for soft-fork upgrades",
    ScriptError.DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM: "Witness version reserved for soft-fork upgrades",
    ScriptError.DISCOURAGE_UPGRADABLE_TAPROOT_VERSION: "Taproot version reserved for soft-fork upgrades",
    ScriptError.DISCOURAGE_OP_SUCCESS: "OP_SUCCESSx reserved for soft-fork upgrades",
    ScriptError.DISCOURAGE_UPGRADABLE_PUBKEYTYPE: "Public key version reserved for soft-fork upgrades",
    ScriptError.PUBKEYTYPE: "Public key is neither compressed or uncompressed",
    ScriptError.CLEANSTACK: "Stack size must be exactly one after execution",
    ScriptError.WITNESS_PROGRAM_WRONG_LENGTH: "Witness program has incorrect length",
    ScriptError.WITNESS_PROGRAM_WITNESS_EMPTY: "Witness program was passed an empty witness",
    ScriptError.WITNESS_PROGRAM_MISMATCH: "Witness program hash mismatch",
    ScriptError.WITNESS_MALLEATED: "Witness requires empty scriptSig",
    ScriptError.WITNESS_MALLEATED_P2SH: "Witness requires only-redeemscript scriptSig",
    ScriptError.WITNESS_UNEXPECTED: "Witness provided for non-witness script",
    ScriptError.WITNESS_PUBKEYTYPE: "Using non-compressed keys in segwit",
    ScriptError.SCHNORR_SIG_SIZE: "Invalid Schnorr signature size",
    ScriptError.SCHNORR_SIG_HASHTYPE: "Invalid Schnorr signature hash type",
    ScriptError.SCHNORR_SIG: "Invalid Schnorr signature",
    ScriptError.TAPROOT_WRONG_CONTROL_SIZE: "Invalid Taproot control block size",
    ScriptError.TAPSCRIPT_VALIDATION_WEIGHT: "Too much signature validation relative to witness weight",
    ScriptError.TAPSCRIPT_CHECKMULTISIG: "OP_CHECKMULTISIG(VERIFY) is not available in tapscript",
    ScriptError.TAPSCRIPT_MINIMALIF: "OP_IF/NOTIF argument must be minimal in tapscript",
    ScriptError.TAPSCRIPT_EMPTY_PUBKEY: "Empty public key in tapscript",
    ScriptError.OP_CODESEPARATOR: "Using OP_CODESEPARATOR in non-witness script",
    ScriptError.SIG_FINDANDDELETE: "Signature is found in scriptCode",
    ScriptError.SCRIPTNUM: "Script number overflowed or is non-minimally encoded",
}


def error_string(error: ScriptError) -> str:
    """Core's ``ScriptErrorString``."""
    return _ERROR_STRINGS.get(error, "unknown error")


class ScriptFailure(Exception):
    """Script evaluation stopped with ``error`` (Core's ``set_error`` followed by ``return false``)."""

    def __init__(self, error: ScriptError) -> None:
        super().__init__(error_string(error))
        self.error = error


class _NumError(Exception):
    """Core's ``scriptnum_error``: reported as SCRIPTNUM by EvalScript."""


# opcodes
OP_0, OP_PUSHDATA1, OP_PUSHDATA2, OP_PUSHDATA4, OP_1NEGATE, OP_RESERVED = 0x00, 0x4C, 0x4D, 0x4E, 0x4F, 0x50
OP_1, OP_16 = 0x51, 0x60
OP_NOP, OP_IF, OP_NOTIF, OP_ELSE, OP_ENDIF, OP_VERIFY, OP_RETURN = 0x61, 0x63, 0x64, 0x67, 0x68, 0x69, 0x6A
OP_CODESEPARATOR, OP_CHECKSIG, OP_CHECKSIGVERIFY = 0xAB, 0xAC, 0xAD
OP_CHECKMULTISIG, OP_CHECKMULTISIGVERIFY = 0xAE, 0xAF
OP_NOP1, OP_CHECKLOCKTIMEVERIFY, OP_CHECKSEQUENCEVERIFY = 0xB0, 0xB1, 0xB2
OP_NOP10, OP_CHECKSIGADD = 0xB9, 0xBA
OP_EQUAL, OP_EQUALVERIFY, OP_HASH160 = 0x87, 0x88, 0xA9

_DISABLED = frozenset(
    {0x7E, 0x7F, 0x80, 0x81, 0x83, 0x84, 0x85, 0x86, 0x8D, 0x8E, 0x95, 0x96, 0x97, 0x98, 0x99}
)
_UPGRADABLE_NOPS = frozenset({OP_NOP1, *range(0xB3, OP_NOP10 + 1)})

MAX_SCRIPT_ELEMENT_SIZE = 520
MAX_OPS_PER_SCRIPT = 201
MAX_PUBKEYS_PER_MULTISIG = 20
MAX_SCRIPT_SIZE = 10_000
MAX_STACK_SIZE = 1000
LOCKTIME_THRESHOLD = 500_000_000
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_LOCKTIME_DISABLE_FLAG = 1 << 31
SEQUENCE_LOCKTIME_TYPE_FLAG = 1 << 22
SEQUENCE_LOCKTIME_MASK = 0x0000FFFF
SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE, SIGHASH_ANYONECANPAY = 1, 2, 3, 0x80
SIGHASH_DEFAULT = 0
ANNEX_TAG = 0x50
TAPROOT_LEAF_MASK = 0xFE
TAPROOT_LEAF_TAPSCRIPT = 0xC0
TAPROOT_CONTROL_BASE_SIZE = 33
TAPROOT_CONTROL_NODE_SIZE = 32
TAPROOT_CONTROL_MAX_SIZE = TAPROOT_CONTROL_BASE_SIZE + TAPROOT_CONTROL_NODE_SIZE * 128
VALIDATION_WEIGHT_PER_SIGOP_PASSED = 50
VALIDATION_WEIGHT_OFFSET = 50
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

SIGVERSION_BASE, SIGVERSION_WITNESS_V0, SIGVERSION_TAPROOT, SIGVERSION_TAPSCRIPT = 0, 1, 2, 3

_TRUE = b"\x01"
_FALSE = b""


def is_op_success(op: int) -> bool:
    return (
        op == 80
        or op == 98
        or 126 <= op <= 129
        or 131 <= op <= 134
        or 137 <= op <= 138
        or 141 <= op <= 142
        or 149 <= op <= 153
        or 187 <= op <= 254
    )


# -- script parsing ------------------------------------------------------------------------------------
def get_op(script: bytes, pc: int) -> tuple[int, bytes, int] | None:
    """Core's GetScriptOp: (opcode, pushed data, next position), or None when the script is truncated."""
    if pc >= len(script):
        return None
    op = script[pc]
    pc += 1
    if op > OP_PUSHDATA4:
        return op, b"", pc
    if op < OP_PUSHDATA1:
        size = op
    else:
        width = {OP_PUSHDATA1: 1, OP_PUSHDATA2: 2, OP_PUSHDATA4: 4}[op]
        if len(script) - pc < width:
            return None
        size = int.from_bytes(script[pc : pc + width], "little")
        pc += width
    if len(script) - pc < size:
        return None
    return op, script[pc : pc + size], pc + size


def is_push_only(script: bytes) -> bool:
    pc = 0
    while pc < len(script):
        got = get_op(script, pc)
        if got is None or got[0] > OP_16:
            return False
        pc = got[2]
    return True


def push_data(data: bytes) -> bytes:
    """``CScript() << data``: the push of a byte string."""
    n = len(data)
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + struct.pack("<H", n) + data
    return bytes([OP_PUSHDATA4]) + struct.pack("<I", n) + data


def witness_program(script: bytes) -> tuple[int, bytes] | None:
    """CScript::IsWitnessProgram: (version, program) for a witness output script."""
    if not 4 <= len(script) <= 42:
        return None
    if script[0] != OP_0 and not OP_1 <= script[0] <= OP_16:
        return None
    if script[1] + 2 != len(script):
        return None
    return (0 if script[0] == OP_0 else script[0] - 0x50), script[2:]


def is_p2sh(script: bytes) -> bool:
    return len(script) == 23 and script[0] == OP_HASH160 and script[1] == 0x14 and script[22] == OP_EQUAL


def check_minimal_push(data: bytes, op: int) -> bool:
    n = len(data)
    if n == 0:
        return op == OP_0
    if n == 1 and 1 <= data[0] <= 16:
        return False
    if n == 1 and data[0] == 0x81:
        return False
    if n <= 75:
        return op == n
    if n <= 255:
        return op == OP_PUSHDATA1
    if n <= 65535:
        return op == OP_PUSHDATA2
    return True


def find_and_delete(script: bytes, pattern: bytes) -> tuple[bytes, int]:
    """Core's FindAndDelete: removes every op-aligned occurrence of ``pattern``; returns (script, count)."""
    if not pattern:
        return script, 0
    found = 0
    out = bytearray()
    pc = pc2 = 0
    end = len(script)
    while True:
        out += script[pc2:pc]
        while end - pc >= len(pattern) and script[pc : pc + len(pattern)] == pattern:
            pc += len(pattern)
            found += 1
        pc2 = pc
        got = get_op(script, pc)
        if got is None:
            break
        pc = got[2]
    if found:
        out += script[pc2:end]
        return bytes(out), found
    return script, 0


# -- numbers -------------------------------------------------------------------------------------------
def num_decode(data: bytes, require_minimal: bool, max_size: int = 4) -> int:
    """CScriptNum(vch, fRequireMinimal, nMaxNumSize)."""
    if len(data) > max_size:
        raise _NumError("script number overflow")
    if require_minimal and data:
        if data[-1] & 0x7F == 0 and (len(data) <= 1 or data[-2] & 0x80 == 0):
            raise _NumError("non-minimally encoded script number")
    return script_num(data)


def num_encode(value: int) -> bytes:
    """CScriptNum::serialize."""
    if value == 0:
        return b""
    neg = value < 0
    absolute = -value if neg else value
    out = bytearray()
    while absolute:
        out.append(absolute & 0xFF)
        absolute >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def _getint(value: int) -> int:
    return max(-(2**31), min(2**31 - 1, value))


def cast_to_bool(data: bytes) -> bool:
    for i, byte in enumerate(data):
        if byte != 0:
            return not (i == len(data) - 1 and byte == 0x80)
    return False


# -- signature encodings -------------------------------------------------------------------------------
def is_valid_signature_encoding(sig: bytes) -> bool:
    """BIP66 strict DER (with the trailing sighash byte), as Core's IsValidSignatureEncoding."""
    n = len(sig)
    if n < 9 or n > 73:
        return False
    if sig[0] != 0x30 or sig[1] != n - 3:
        return False
    len_r = sig[3]
    if 5 + len_r >= n:
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 7 != n:
        return False
    if sig[2] != 0x02 or len_r == 0 or sig[4] & 0x80:
        return False
    if len_r > 1 and sig[4] == 0 and not sig[5] & 0x80:
        return False
    if sig[len_r + 4] != 0x02 or len_s == 0 or sig[len_r + 6] & 0x80:
        return False
    if len_s > 1 and sig[len_r + 6] == 0 and not sig[len_r + 7] & 0x80:
        return False
    return True


def _der_values(sig_without_hashtype: bytes) -> tuple[int, int]:
    len_r = sig_without_hashtype[3]
    r = int.from_bytes(sig_without_hashtype[4 : 4 + len_r], "big")
    len_s = sig_without_hashtype[5 + len_r]
    s = int.from_bytes(sig_without_hashtype[6 + len_r : 6 + len_r + len_s], "big")
    return r, s


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
    if body[0] & 0x80:
        body = b"\x00" + body
    return b"\x02" + bytes([len(body)]) + body


def is_low_s(sig_with_hashtype: bytes) -> bool:
    """CPubKey::CheckLowS: libsecp256k1's lax parser zeroes a signature whose R or S overflows."""
    r, s = _der_values(sig_with_hashtype[:-1])
    return r >= SECP256K1_ORDER or s >= SECP256K1_ORDER or s <= SECP256K1_ORDER // 2


def _is_compressed_or_uncompressed(pubkey: bytes) -> bool:
    if len(pubkey) < 33:
        return False
    if pubkey[0] == 0x04:
        return len(pubkey) == 65
    if pubkey[0] in (0x02, 0x03):
        return len(pubkey) == 33
    return False


def _is_compressed(pubkey: bytes) -> bool:
    return len(pubkey) == 33 and pubkey[0] in (0x02, 0x03)


def check_signature_encoding(sig: bytes, flags: int) -> None:
    if not sig:
        return
    if flags & (Flag.DERSIG | Flag.LOW_S | Flag.STRICTENC) and not is_valid_signature_encoding(sig):
        raise ScriptFailure(ScriptError.SIG_DER)
    if flags & Flag.LOW_S:
        if not is_valid_signature_encoding(sig):
            raise ScriptFailure(ScriptError.SIG_DER)
        if not is_low_s(sig):
            raise ScriptFailure(ScriptError.SIG_HIGH_S)
    if flags & Flag.STRICTENC:
        base = sig[-1] & ~SIGHASH_ANYONECANPAY
        if not SIGHASH_ALL <= base <= SIGHASH_SINGLE:
            raise ScriptFailure(ScriptError.SIG_HASHTYPE)


def check_pubkey_encoding(pubkey: bytes, flags: int, sigversion: int) -> None:
    if flags & Flag.STRICTENC and not _is_compressed_or_uncompressed(pubkey):
        raise ScriptFailure(ScriptError.PUBKEYTYPE)
    if flags & Flag.WITNESS_PUBKEYTYPE and sigversion == SIGVERSION_WITNESS_V0 and not _is_compressed(pubkey):
        raise ScriptFailure(ScriptError.WITNESS_PUBKEYTYPE)


def _valid_pubkey_size(pubkey: bytes) -> bool:
    """CPubKey's constructor keeps a key only when its length fits its header byte."""
    if not pubkey:
        return False
    header = pubkey[0]
    if header in (2, 3):
        return len(pubkey) == 33
    if header in (4, 6, 7):
        return len(pubkey) == 65
    return False


def verify_ecdsa(sig_der: bytes, pubkey: bytes, digest: bytes) -> bool:
    """CPubKey::Verify: parse the key, normalise S to the low half, verify. Needs strict DER (see the
    module docstring)."""
    if not _valid_pubkey_size(pubkey) or not is_valid_signature_encoding(sig_der + b"\x01"):
        return False
    r, s = _der_values(sig_der)
    if not 0 < r < SECP256K1_ORDER or not 0 < s < SECP256K1_ORDER:
        return False
    if s > SECP256K1_ORDER // 2:
        s = SECP256K1_ORDER - s
    body = _der_int(r) + _der_int(s)
    try:
        key = coincurve.PublicKey(pubkey)
        return bool(key.verify(b"\x30" + bytes([len(body)]) + body, digest, hasher=None))
    except (ValueError, TypeError):
        return False


def tagged_hash(tag: str, data: bytes) -> bytes:
    t = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(t + t + data).digest()


def verify_schnorr(sig64: bytes, pubkey32: bytes, digest: bytes) -> bool:
    try:
        return bool(coincurve.PublicKeyXOnly(pubkey32).verify(sig64, digest))
    except (ValueError, TypeError):
        return False


# -- the transaction being checked ---------------------------------------------------------------------
class TxContext:
    """A transaction with the outputs it spends and the sighash midstates of BIP143 and BIP341, computed
    once and shared by its inputs (Core's PrecomputedTransactionData)."""

    def __init__(self, tx: Transaction, spent: Sequence[TxOut]) -> None:
        self.tx = tx
        self.spent = list(spent)

    @cached_property
    def _prevouts(self) -> bytes:
        return b"".join(i.prev_txid.raw + struct.pack("<I", i.prev_vout) for i in self.tx.inputs)

    @cached_property
    def _sequences(self) -> bytes:
        return b"".join(struct.pack("<I", i.sequence) for i in self.tx.inputs)

    @cached_property
    def _outputs(self) -> bytes:
        return b"".join(o.serialize() for o in self.tx.outputs)

    @cached_property
    def hash_prevouts(self) -> bytes:
        return sha256d(self._prevouts)

    @cached_property
    def hash_sequence(self) -> bytes:
        return sha256d(self._sequences)

    @cached_property
    def hash_outputs(self) -> bytes:
        return sha256d(self._outputs)

    @cached_property
    def sha_prevouts(self) -> bytes:
        return sha256(self._prevouts)

    @cached_property
    def sha_sequences(self) -> bytes:
        return sha256(self._sequences)

    @cached_property
    def sha_outputs(self) -> bytes:
        return sha256(self._outputs)

    @cached_property
    def sha_amounts(self) -> bytes:
        return sha256(b"".join(struct.pack("<q", o.value) for o in self.spent))

    @cached_property
    def sha_scriptpubkeys(self) -> bytes:
        return sha256(b"".join(ser_bytes(o.script_pubkey) for o in self.spent))


def _strip_codeseparators(script: bytes) -> bytes:
    out = bytearray()
    pc = 0
    while pc < len(script):
        got = get_op(script, pc)
        if got is None:
            out += script[pc:]
            break
        if got[0] != OP_CODESEPARATOR:
            out += script[pc : got[2]]
        pc = got[2]
    return bytes(out)


def legacy_sighash(script_code: bytes, tx: Transaction, n_in: int, hashtype: int) -> bytes:
    """SignatureHash for SigVersion::BASE, including the SIGHASH_SINGLE "one" quirk."""
    if n_in >= len(tx.inputs):
        return (1).to_bytes(32, "little")
    base = hashtype & 0x1F
    anyone = bool(hashtype & SIGHASH_ANYONECANPAY)
    if base == SIGHASH_SINGLE and n_in >= len(tx.outputs):
        return (1).to_bytes(32, "little")
    code = _strip_codeseparators(script_code)
    parts = [struct.pack("<i", tx.version)]
    indices = [n_in] if anyone else list(range(len(tx.inputs)))
    parts.append(ser_compact_size(len(indices)))
    for i in indices:
        txin = tx.inputs[i]
        parts.append(txin.prev_txid.raw + struct.pack("<I", txin.prev_vout))
        parts.append(ser_bytes(code) if i == n_in else b"\x00")
        seq = 0 if i != n_in and base in (SIGHASH_NONE, SIGHASH_SINGLE) else txin.sequence
        parts.append(struct.pack("<I", seq))
    if base == SIGHASH_NONE:
        parts.append(b"\x00")
    elif base == SIGHASH_SINGLE:
        parts.append(ser_compact_size(n_in + 1))
        parts.extend(struct.pack("<q", -1) + b"\x00" for _ in range(n_in))
        parts.append(tx.outputs[n_in].serialize())
    else:
        parts.append(ser_compact_size(len(tx.outputs)))
        parts.extend(o.serialize() for o in tx.outputs)
    parts.append(struct.pack("<I", tx.locktime))
    parts.append(struct.pack("<i", hashtype))
    return sha256d(b"".join(parts))


def witness_v0_sighash(script_code: bytes, ctx: TxContext, n_in: int, hashtype: int, amount: int) -> bytes:
    """BIP143 SignatureHash for SigVersion::WITNESS_V0, every hash type."""
    tx = ctx.tx
    base = hashtype & 0x1F
    anyone = bool(hashtype & SIGHASH_ANYONECANPAY)
    zero = bytes(32)
    prevouts = zero if anyone else ctx.hash_prevouts
    sequences = zero if anyone or base in (SIGHASH_SINGLE, SIGHASH_NONE) else ctx.hash_sequence
    if base not in (SIGHASH_SINGLE, SIGHASH_NONE):
        outputs = ctx.hash_outputs
    elif base == SIGHASH_SINGLE and n_in < len(tx.outputs):
        outputs = sha256d(tx.outputs[n_in].serialize())
    else:
        outputs = zero
    txin = tx.inputs[n_in]
    preimage = (
        struct.pack("<i", tx.version)
        + prevouts
        + sequences
        + txin.prev_txid.raw
        + struct.pack("<I", txin.prev_vout)
        + ser_bytes(script_code)
        + struct.pack("<q", amount)
        + struct.pack("<I", txin.sequence)
        + outputs
        + struct.pack("<I", tx.locktime)
        + struct.pack("<i", hashtype)
    )
    return sha256d(preimage)


@dataclass
class _ExecData:
    """Core's ScriptExecutionData."""

    annex: bytes | None = None
    tapleaf_hash: bytes = b""
    codeseparator_pos: int = 0xFFFFFFFF
    weight_left: int = 0


def taproot_sighash(
    ctx: TxContext, n_in: int, hashtype: int, sigversion: int, execdata: _ExecData
) -> bytes | None:
    """BIP341/342 SignatureHashSchnorr; None where Core returns false (an undefined hash type)."""
    tx = ctx.tx
    if not (hashtype <= 0x03 or 0x81 <= hashtype <= 0x83):
        return None
    output_type = SIGHASH_ALL if hashtype == SIGHASH_DEFAULT else hashtype & 3
    anyone = bool(hashtype & SIGHASH_ANYONECANPAY)
    if output_type == SIGHASH_SINGLE and n_in >= len(tx.outputs):
        return None
    ext_flag = 1 if sigversion == SIGVERSION_TAPSCRIPT else 0
    parts = [b"\x00", bytes([hashtype]), struct.pack("<i", tx.version), struct.pack("<I", tx.locktime)]
    if not anyone:
        parts += [ctx.sha_prevouts, ctx.sha_amounts, ctx.sha_scriptpubkeys, ctx.sha_sequences]
    if output_type == SIGHASH_ALL:
        parts.append(ctx.sha_outputs)
    parts.append(bytes([(ext_flag << 1) + (1 if execdata.annex is not None else 0)]))
    if anyone:
        txin = tx.inputs[n_in]
        spent = ctx.spent[n_in]
        parts += [
            txin.prev_txid.raw + struct.pack("<I", txin.prev_vout),
            struct.pack("<q", spent.value),
            ser_bytes(spent.script_pubkey),
            struct.pack("<I", txin.sequence),
        ]
    else:
        parts.append(struct.pack("<I", n_in))
    if execdata.annex is not None:
        parts.append(sha256(ser_bytes(execdata.annex)))
    if output_type == SIGHASH_SINGLE:
        parts.append(sha256(tx.outputs[n_in].serialize()))
    if sigversion == SIGVERSION_TAPSCRIPT:
        parts += [execdata.tapleaf_hash, b"\x00", struct.pack("<I", execdata.codeseparator_pos)]
    return tagged_hash("TapSighash", b"".join(parts))


@dataclass
class _Checker:
    """GenericTransactionSignatureChecker for one input."""

    ctx: TxContext
    n_in: int
    amount: int

    def check_ecdsa(self, sig: bytes, pubkey: bytes, script_code: bytes, sigversion: int) -> bool:
        if not _valid_pubkey_size(pubkey) or not sig:
            return False
        hashtype = sig[-1]
        if sigversion == SIGVERSION_WITNESS_V0:
            digest = witness_v0_sighash(script_code, self.ctx, self.n_in, hashtype, self.amount)
        else:
            digest = legacy_sighash(script_code, self.ctx.tx, self.n_in, hashtype)
        return verify_ecdsa(sig[:-1], pubkey, digest)

    def check_schnorr(self, sig: bytes, pubkey: bytes, sigversion: int, execdata: _ExecData) -> None:
        if len(sig) not in (64, 65):
            raise ScriptFailure(ScriptError.SCHNORR_SIG_SIZE)
        hashtype = SIGHASH_DEFAULT
        if len(sig) == 65:
            hashtype = sig[64]
            sig = sig[:64]
            if hashtype == SIGHASH_DEFAULT:
                raise ScriptFailure(ScriptError.SCHNORR_SIG_HASHTYPE)
        digest = taproot_sighash(self.ctx, self.n_in, hashtype, sigversion, execdata)
        if digest is None:
            raise ScriptFailure(ScriptError.SCHNORR_SIG_HASHTYPE)
        if not verify_schnorr(sig, pubkey, digest):
            raise ScriptFailure(ScriptError.SCHNORR_SIG)

    def check_locktime(self, locktime: int) -> bool:
        tx = self.ctx.tx
        if not (
            (tx.locktime < LOCKTIME_THRESHOLD and locktime < LOCKTIME_THRESHOLD)
            or (tx.locktime >= LOCKTIME_THRESHOLD and locktime >= LOCKTIME_THRESHOLD)
        ):
            return False
        if locktime > tx.locktime:
            return False
        return tx.inputs[self.n_in].sequence != SEQUENCE_FINAL

    def check_sequence(self, sequence: int) -> bool:
        tx = self.ctx.tx
        tx_sequence = tx.inputs[self.n_in].sequence
        if tx.version < 2:
            return False
        if tx_sequence & SEQUENCE_LOCKTIME_DISABLE_FLAG:
            return False
        mask = SEQUENCE_LOCKTIME_TYPE_FLAG | SEQUENCE_LOCKTIME_MASK
        tx_masked = tx_sequence & mask
        masked = sequence & mask
        if not (
            (tx_masked < SEQUENCE_LOCKTIME_TYPE_FLAG and masked < SEQUENCE_LOCKTIME_TYPE_FLAG)
            or (tx_masked >= SEQUENCE_LOCKTIME_TYPE_FLAG and masked >= SEQUENCE_LOCKTIME_TYPE_FLAG)
        ):
            return False
        return masked <= tx_masked


# -- EvalScript ----------------------------------------------------------------------------------------
def _eval_checksig(
    sig: bytes,
    pubkey: bytes,
    script: bytes,
    begin_code: int,
    execdata: _ExecData,
    flags: int,
    checker: _Checker,
    sigversion: int,
) -> bool:
    """EvalChecksig: raises on a script failure, else returns whether the signature checked out."""
    if sigversion == SIGVERSION_TAPSCRIPT:
        success = bool(sig)
        if success:
            execdata.weight_left -= VALIDATION_WEIGHT_PER_SIGOP_PASSED
            if execdata.weight_left < 0:
                raise ScriptFailure(ScriptError.TAPSCRIPT_VALIDATION_WEIGHT)
        if not pubkey:
            raise ScriptFailure(ScriptError.TAPSCRIPT_EMPTY_PUBKEY)
        if len(pubkey) == 32:
            if success:
                checker.check_schnorr(sig, pubkey, sigversion, execdata)
        elif flags & Flag.DISCOURAGE_UPGRADABLE_PUBKEYTYPE:
            raise ScriptFailure(ScriptError.DISCOURAGE_UPGRADABLE_PUBKEYTYPE)
        return success
    script_code = script[begin_code:]
    if sigversion == SIGVERSION_BASE:
        script_code, found = find_and_delete(script_code, push_data(sig))
        if found and flags & Flag.CONST_SCRIPTCODE:
            raise ScriptFailure(ScriptError.SIG_FINDANDDELETE)
    check_signature_encoding(sig, flags)
    check_pubkey_encoding(pubkey, flags, sigversion)
    ok = checker.check_ecdsa(sig, pubkey, script_code, sigversion)
    if not ok and flags & Flag.NULLFAIL and sig:
        raise ScriptFailure(ScriptError.SIG_NULLFAIL)
    return ok


def eval_script(
    stack: list[bytes],
    script: bytes,
    flags: int,
    checker: _Checker,
    sigversion: int,
    execdata: _ExecData | None = None,
) -> None:
    """EvalScript: runs ``script`` on ``stack`` (modified in place); raises ScriptFailure on an error."""
    execdata = execdata or _ExecData()
    pre_tapscript = sigversion in (SIGVERSION_BASE, SIGVERSION_WITNESS_V0)
    if pre_tapscript and len(script) > MAX_SCRIPT_SIZE:
        raise ScriptFailure(ScriptError.SCRIPT_SIZE)
    require_minimal = bool(flags & Flag.MINIMALDATA)
    vf_exec: list[bool] = []
    altstack: list[bytes] = []
    op_count = 0
    pc = 0
    begin_code = 0
    opcode_pos = 0
    execdata.codeseparator_pos = 0xFFFFFFFF

    try:
        while pc < len(script):
            f_exec = all(vf_exec)
            got = get_op(script, pc)
            if got is None:
                raise ScriptFailure(ScriptError.BAD_OPCODE)
            op, data, pc = got
            if len(data) > MAX_SCRIPT_ELEMENT_SIZE:
                raise ScriptFailure(ScriptError.PUSH_SIZE)
            if pre_tapscript and op > OP_16:
                op_count += 1
                if op_count > MAX_OPS_PER_SCRIPT:
                    raise ScriptFailure(ScriptError.OP_COUNT)
            if op in _DISABLED:
                raise ScriptFailure(ScriptError.DISABLED_OPCODE)
            if op == OP_CODESEPARATOR and sigversion == SIGVERSION_BASE and flags & Flag.CONST_SCRIPTCODE:
                raise ScriptFailure(ScriptError.OP_CODESEPARATOR)

            if f_exec and op <= OP_PUSHDATA4:
                if require_minimal and not check_minimal_push(data, op):
                    raise ScriptFailure(ScriptError.MINIMALDATA)
                stack.append(data)
            elif f_exec or OP_IF <= op <= OP_ENDIF:
                op_count = _execute(
                    op, stack, altstack, vf_exec, f_exec, flags, checker, sigversion, execdata, script,
                    begin_code, require_minimal, op_count,
                )  # fmt: skip
                if op == OP_CODESEPARATOR:
                    begin_code = pc
                    execdata.codeseparator_pos = opcode_pos
            if len(stack) + len(altstack) > MAX_STACK_SIZE:
                raise ScriptFailure(ScriptError.STACK_SIZE)
            opcode_pos += 1
    except _NumError:
        raise ScriptFailure(ScriptError.SCRIPTNUM) from None
    if vf_exec:
        raise ScriptFailure(ScriptError.UNBALANCED_CONDITIONAL)


def _execute(
    op: int,
    stack: list[bytes],
    altstack: list[bytes],
    vf_exec: list[bool],
    f_exec: bool,
    flags: int,
    checker: _Checker,
    sigversion: int,
    execdata: _ExecData,
    script: bytes,
    begin_code: int,
    minimal: bool,
    op_count: int,
) -> int:
    """One non-push opcode (the switch in EvalScript); returns the updated op count."""

    def need(n: int) -> None:
        if len(stack) < n:
            raise ScriptFailure(ScriptError.INVALID_STACK_OPERATION)

    if op == OP_1NEGATE or OP_1 <= op <= OP_16:
        stack.append(num_encode(op - (OP_1 - 1)))
    elif op == OP_NOP:
        pass
    elif op == OP_CHECKLOCKTIMEVERIFY:
        if flags & Flag.CHECKLOCKTIMEVERIFY:
            need(1)
            locktime = num_decode(stack[-1], minimal, 5)
            if locktime < 0:
                raise ScriptFailure(ScriptError.NEGATIVE_LOCKTIME)
            if not checker.check_locktime(locktime):
                raise ScriptFailure(ScriptError.UNSATISFIED_LOCKTIME)
    elif op == OP_CHECKSEQUENCEVERIFY:
        if flags & Flag.CHECKSEQUENCEVERIFY:
            need(1)
            sequence = num_decode(stack[-1], minimal, 5)
            if sequence < 0:
                raise ScriptFailure(ScriptError.NEGATIVE_LOCKTIME)
            if not sequence & SEQUENCE_LOCKTIME_DISABLE_FLAG and not checker.check_sequence(sequence):
                raise ScriptFailure(ScriptError.UNSATISFIED_LOCKTIME)
    elif op in _UPGRADABLE_NOPS:
        if flags & Flag.DISCOURAGE_UPGRADABLE_NOPS:
            raise ScriptFailure(ScriptError.DISCOURAGE_UPGRADABLE_NOPS)
    elif op in (OP_IF, OP_NOTIF):
        value = False
        if f_exec:
            need(1)
            top = stack[-1]
            if sigversion == SIGVERSION_TAPSCRIPT and (len(top) > 1 or (len(top) == 1 and top[0] != 1)):
                raise ScriptFailure(ScriptError.TAPSCRIPT_MINIMALIF)
            if sigversion == SIGVERSION_WITNESS_V0 and flags & Flag.MINIMALIF:
                if len(top) > 1 or (len(top) == 1 and top[0] != 1):
                    raise ScriptFailure(ScriptError.MINIMALIF)
            value = cast_to_bool(top)
            if op == OP_NOTIF:
                value = not value
            stack.pop()
        vf_exec.append(value)
    elif op == OP_ELSE:
        if not vf_exec:
            raise ScriptFailure(ScriptError.UNBALANCED_CONDITIONAL)
        vf_exec[-1] = not vf_exec[-1]
    elif op == OP_ENDIF:
        if not vf_exec:
            raise ScriptFailure(ScriptError.UNBALANCED_CONDITIONAL)
        vf_exec.pop()
    elif op == OP_VERIFY:
        need(1)
        if not cast_to_bool(stack[-1]):
            raise ScriptFailure(ScriptError.VERIFY)
        stack.pop()
    elif op == OP_RETURN:
        raise ScriptFailure(ScriptError.OP_RETURN)
    elif op == 0x6B:  # OP_TOALTSTACK
        need(1)
        altstack.append(stack.pop())
    elif op == 0x6C:  # OP_FROMALTSTACK
        if not altstack:
            raise ScriptFailure(ScriptError.INVALID_ALTSTACK_OPERATION)
        stack.append(altstack.pop())
    elif op == 0x6D:  # OP_2DROP
        need(2)
        del stack[-2:]
    elif op == 0x6E:  # OP_2DUP
        need(2)
        stack.extend(stack[-2:])
    elif op == 0x6F:  # OP_3DUP
        need(3)
        stack.extend(stack[-3:])
    elif op == 0x70:  # OP_2OVER
        need(4)
        stack.extend(stack[-4:-2])
    elif op == 0x71:  # OP_2ROT
        need(6)
        moved = stack[-6:-4]
        del stack[-6:-4]
        stack.extend(moved)
    elif op == 0x72:  # OP_2SWAP
        need(4)
        stack[-4:] = stack[-2:] + stack[-4:-2]
    elif op == 0x73:  # OP_IFDUP
        need(1)
        if cast_to_bool(stack[-1]):
            stack.append(stack[-1])
    elif op == 0x74:  # OP_DEPTH
        stack.append(num_encode(len(stack)))
    elif op == 0x75:  # OP_DROP
        need(1)
        stack.pop()
    elif op == 0x76:  # OP_DUP
        need(1)
        stack.append(stack[-1])
    elif op == 0x77:  # OP_NIP
        need(2)
        del stack[-2]
    elif op == 0x78:  # OP_OVER
        need(2)
        stack.append(stack[-2])
    elif op in (0x79, 0x7A):  # OP_PICK, OP_ROLL
        need(2)
        n = _getint(num_decode(stack[-1], minimal))
        stack.pop()
        if n < 0 or n >= len(stack):
            raise ScriptFailure(ScriptError.INVALID_STACK_OPERATION)
        item = stack[-n - 1]
        if op == 0x7A:
            del stack[-n - 1]
        stack.append(item)
    elif op == 0x7B:  # OP_ROT
        need(3)
        stack[-3:] = [stack[-2], stack[-1], stack[-3]]
    elif op == 0x7C:  # OP_SWAP
        need(2)
        stack[-2:] = [stack[-1], stack[-2]]
    elif op == 0x7D:  # OP_TUCK
        need(2)
        stack.insert(len(stack) - 2, stack[-1])
    elif op == 0x82:  # OP_SIZE
        need(1)
        stack.append(num_encode(len(stack[-1])))
    elif op in (OP_EQUAL, OP_EQUALVERIFY):
        need(2)
        equal = stack[-2] == stack[-1]
        del stack[-2:]
        stack.append(_TRUE if equal else _FALSE)
        if op == OP_EQUALVERIFY:
            if not equal:
                raise ScriptFailure(ScriptError.EQUALVERIFY)
            stack.pop()
    elif op in (0x8B, 0x8C, 0x8F, 0x90, 0x91, 0x92):
        need(1)
        a = num_decode(stack[-1], minimal)
        result = {
            0x8B: a + 1,
            0x8C: a - 1,
            0x8F: -a,
            0x90: abs(a),
            0x91: int(a == 0),
            0x92: int(a != 0),
        }[op]
        stack[-1] = num_encode(result)
    elif 0x93 <= op <= 0xA4 and op not in _DISABLED:
        need(2)
        a = num_decode(stack[-2], minimal)
        b = num_decode(stack[-1], minimal)
        result = {
            0x93: a + b,
            0x94: a - b,
            0x9A: int(a != 0 and b != 0),
            0x9B: int(a != 0 or b != 0),
            0x9C: int(a == b),
            0x9D: int(a == b),
            0x9E: int(a != b),
            0x9F: int(a < b),
            0xA0: int(a > b),
            0xA1: int(a <= b),
            0xA2: int(a >= b),
            0xA3: min(a, b),
            0xA4: max(a, b),
        }[op]
        del stack[-2:]
        stack.append(num_encode(result))
        if op == 0x9D:  # OP_NUMEQUALVERIFY
            if not cast_to_bool(stack[-1]):
                raise ScriptFailure(ScriptError.NUMEQUALVERIFY)
            stack.pop()
    elif op == 0xA5:  # OP_WITHIN
        need(3)
        x = num_decode(stack[-3], minimal)
        lo = num_decode(stack[-2], minimal)
        hi = num_decode(stack[-1], minimal)
        del stack[-3:]
        stack.append(_TRUE if lo <= x < hi else _FALSE)
    elif 0xA6 <= op <= 0xAA:
        need(1)
        item = stack[-1]
        if op == 0xA6:
            digest = ripemd160(item)
        elif op == 0xA7:
            digest = hashlib.sha1(item).digest()
        elif op == 0xA8:
            digest = sha256(item)
        elif op == 0xA9:
            digest = ripemd160(sha256(item))
        else:
            digest = sha256d(item)
        stack[-1] = digest
    elif op == OP_CODESEPARATOR:
        pass  # the caller moves the scriptCode start
    elif op in (OP_CHECKSIG, OP_CHECKSIGVERIFY):
        need(2)
        ok = _eval_checksig(stack[-2], stack[-1], script, begin_code, execdata, flags, checker, sigversion)
        del stack[-2:]
        stack.append(_TRUE if ok else _FALSE)
        if op == OP_CHECKSIGVERIFY:
            if not ok:
                raise ScriptFailure(ScriptError.CHECKSIGVERIFY)
            stack.pop()
    elif op == OP_CHECKSIGADD:
        if sigversion in (SIGVERSION_BASE, SIGVERSION_WITNESS_V0):
            raise ScriptFailure(ScriptError.BAD_OPCODE)
        need(3)
        num = num_decode(stack[-2], minimal)
        ok = _eval_checksig(stack[-3], stack[-1], script, begin_code, execdata, flags, checker, sigversion)
        del stack[-3:]
        stack.append(num_encode(num + (1 if ok else 0)))
    elif op in (OP_CHECKMULTISIG, OP_CHECKMULTISIGVERIFY):
        if sigversion == SIGVERSION_TAPSCRIPT:
            raise ScriptFailure(ScriptError.TAPSCRIPT_CHECKMULTISIG)
        op_count = _checkmultisig(
            op, stack, flags, checker, sigversion, script, begin_code, minimal, op_count
        )
    else:
        raise ScriptFailure(ScriptError.BAD_OPCODE)
    return op_count


def _checkmultisig(
    op: int,
    stack: list[bytes],
    flags: int,
    checker: _Checker,
    sigversion: int,
    script: bytes,
    begin_code: int,
    minimal: bool,
    op_count: int,
) -> int:
    def top(i: int) -> bytes:
        return stack[-i]

    i = 1
    if len(stack) < i:
        raise ScriptFailure(ScriptError.INVALID_STACK_OPERATION)
    keys_count = _getint(num_decode(top(i), minimal))
    if keys_count < 0 or keys_count > MAX_PUBKEYS_PER_MULTISIG:
        raise ScriptFailure(ScriptError.PUBKEY_COUNT)
    op_count += keys_count
    if op_count > MAX_OPS_PER_SCRIPT:
        raise ScriptFailure(ScriptError.OP_COUNT)
    i += 1
    ikey = i
    ikey2 = keys_count + 2
    i += keys_count
    if len(stack) < i:
        raise ScriptFailure(ScriptError.INVALID_STACK_OPERATION)
    sigs_count = _getint(num_decode(top(i), minimal))
    if sigs_count < 0 or sigs_count > keys_count:
        raise ScriptFailure(ScriptError.SIG_COUNT)
    i += 1
    isig = i
    i += sigs_count
    if len(stack) < i:
        raise ScriptFailure(ScriptError.INVALID_STACK_OPERATION)
    script_code = script[begin_code:]
    for k in range(sigs_count):
        if sigversion == SIGVERSION_BASE:
            script_code, found = find_and_delete(script_code, push_data(top(isig + k)))
            if found and flags & Flag.CONST_SCRIPTCODE:
                raise ScriptFailure(ScriptError.SIG_FINDANDDELETE)
    success = True
    while success and sigs_count > 0:
        sig = top(isig)
        pubkey = top(ikey)
        check_signature_encoding(sig, flags)
        check_pubkey_encoding(pubkey, flags, sigversion)
        if checker.check_ecdsa(sig, pubkey, script_code, sigversion):
            isig += 1
            sigs_count -= 1
        ikey += 1
        keys_count -= 1
        if sigs_count > keys_count:
            success = False
    while i > 1:
        i -= 1
        if not success and flags & Flag.NULLFAIL and not ikey2 and stack[-1]:
            raise ScriptFailure(ScriptError.SIG_NULLFAIL)
        if ikey2 > 0:
            ikey2 -= 1
        stack.pop()
    if len(stack) < 1:
        raise ScriptFailure(ScriptError.INVALID_STACK_OPERATION)
    if flags & Flag.NULLDUMMY and stack[-1]:
        raise ScriptFailure(ScriptError.SIG_NULLDUMMY)
    stack.pop()
    stack.append(_TRUE if success else _FALSE)
    if op == OP_CHECKMULTISIGVERIFY:
        if not success:
            raise ScriptFailure(ScriptError.CHECKMULTISIGVERIFY)
        stack.pop()
    return op_count


# -- witness programs and VerifyScript -----------------------------------------------------------------
def _execute_witness_script(
    stack: list[bytes], script: bytes, flags: int, sigversion: int, checker: _Checker, execdata: _ExecData
) -> None:
    if sigversion == SIGVERSION_TAPSCRIPT:
        pc = 0
        while pc < len(script):
            got = get_op(script, pc)
            if got is None:
                raise ScriptFailure(ScriptError.BAD_OPCODE)
            if is_op_success(got[0]):
                if flags & Flag.DISCOURAGE_OP_SUCCESS:
                    raise ScriptFailure(ScriptError.DISCOURAGE_OP_SUCCESS)
                return
            pc = got[2]
        if len(stack) > MAX_STACK_SIZE:
            raise ScriptFailure(ScriptError.STACK_SIZE)
    if any(len(item) > MAX_SCRIPT_ELEMENT_SIZE for item in stack):
        raise ScriptFailure(ScriptError.PUSH_SIZE)
    eval_script(stack, script, flags, checker, sigversion, execdata)
    if len(stack) != 1:
        raise ScriptFailure(ScriptError.CLEANSTACK)
    if not cast_to_bool(stack[-1]):
        raise ScriptFailure(ScriptError.EVAL_FALSE)


def _witness_stack_size(witness: Sequence[bytes]) -> int:
    return len(ser_compact_size(len(witness))) + sum(len(ser_bytes(item)) for item in witness)


def _taproot_commitment_ok(control: bytes, program: bytes, leaf_hash: bytes) -> bool:
    internal = control[1:33]
    k = leaf_hash
    for pos in range(33, len(control), 32):
        node = control[pos : pos + 32]
        k = tagged_hash("TapBranch", k + node if k < node else node + k)
    tweak = tagged_hash("TapTweak", internal + k)
    if int.from_bytes(tweak, "big") >= SECP256K1_ORDER:
        return False
    try:
        point = coincurve.PublicKey(b"\x02" + internal).add(tweak).format(compressed=True)
    except ValueError:
        return False
    return point[1:] == program and (point[0] == 0x03) == bool(control[0] & 1)


def _verify_witness_program(
    witness: Sequence[bytes], version: int, program: bytes, flags: int, checker: _Checker, is_p2sh_: bool
) -> None:
    stack = list(witness)
    execdata = _ExecData()
    if version == 0:
        if len(program) == 32:
            if not stack:
                raise ScriptFailure(ScriptError.WITNESS_PROGRAM_WITNESS_EMPTY)
            script = stack.pop()
            if sha256(script) != program:
                raise ScriptFailure(ScriptError.WITNESS_PROGRAM_MISMATCH)
            _execute_witness_script(stack, script, flags, SIGVERSION_WITNESS_V0, checker, execdata)
            return
        if len(program) == 20:
            if len(stack) != 2:
                raise ScriptFailure(ScriptError.WITNESS_PROGRAM_MISMATCH)
            script = b"\x76\xa9\x14" + program + b"\x88\xac"
            _execute_witness_script(stack, script, flags, SIGVERSION_WITNESS_V0, checker, execdata)
            return
        raise ScriptFailure(ScriptError.WITNESS_PROGRAM_WRONG_LENGTH)
    if version == 1 and len(program) == 32 and not is_p2sh_:
        if not flags & Flag.TAPROOT:
            return
        if not stack:
            raise ScriptFailure(ScriptError.WITNESS_PROGRAM_WITNESS_EMPTY)
        if len(stack) >= 2 and stack[-1] and stack[-1][0] == ANNEX_TAG:
            execdata.annex = stack.pop()
        if len(stack) == 1:
            checker.check_schnorr(stack[0], program, SIGVERSION_TAPROOT, execdata)
            return
        control = stack.pop()
        script = stack.pop()
        if (
            len(control) < TAPROOT_CONTROL_BASE_SIZE
            or len(control) > TAPROOT_CONTROL_MAX_SIZE
            or (len(control) - TAPROOT_CONTROL_BASE_SIZE) % TAPROOT_CONTROL_NODE_SIZE
        ):
            raise ScriptFailure(ScriptError.TAPROOT_WRONG_CONTROL_SIZE)
        leaf_version = control[0] & TAPROOT_LEAF_MASK
        execdata.tapleaf_hash = tagged_hash("TapLeaf", bytes([leaf_version]) + ser_bytes(script))
        if not _taproot_commitment_ok(control, program, execdata.tapleaf_hash):
            raise ScriptFailure(ScriptError.WITNESS_PROGRAM_MISMATCH)
        if leaf_version == TAPROOT_LEAF_TAPSCRIPT:
            execdata.weight_left = _witness_stack_size(witness) + VALIDATION_WEIGHT_OFFSET
            _execute_witness_script(stack, script, flags, SIGVERSION_TAPSCRIPT, checker, execdata)
            return
        if flags & Flag.DISCOURAGE_UPGRADABLE_TAPROOT_VERSION:
            raise ScriptFailure(ScriptError.DISCOURAGE_UPGRADABLE_TAPROOT_VERSION)
        return
    if not is_p2sh_ and version == 1 and program == b"\x4e\x73":  # pay-to-anchor
        return
    if flags & Flag.DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM:
        raise ScriptFailure(ScriptError.DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM)


def verify_input(ctx: TxContext, n_in: int, flags: int) -> ScriptError:
    """VerifyScript for input ``n_in`` of ``ctx.tx`` spending ``ctx.spent[n_in]``: OK or the first error."""
    txin = ctx.tx.inputs[n_in]
    spent = ctx.spent[n_in]
    checker = _Checker(ctx, n_in, spent.value)
    try:
        _verify_script(txin.script_sig, spent.script_pubkey, txin.witness, flags, checker)
    except ScriptFailure as e:
        return e.error
    return ScriptError.OK


def _verify_script(
    script_sig: bytes, script_pubkey: bytes, witness: Sequence[bytes], flags: int, checker: _Checker
) -> None:
    if flags & Flag.SIGPUSHONLY and not is_push_only(script_sig):
        raise ScriptFailure(ScriptError.SIG_PUSHONLY)
    stack: list[bytes] = []
    eval_script(stack, script_sig, flags, checker, SIGVERSION_BASE)
    stack_copy = list(stack) if flags & Flag.P2SH else []
    eval_script(stack, script_pubkey, flags, checker, SIGVERSION_BASE)
    if not stack or not cast_to_bool(stack[-1]):
        raise ScriptFailure(ScriptError.EVAL_FALSE)
    had_witness = False
    if flags & Flag.WITNESS:
        wp = witness_program(script_pubkey)
        if wp is not None:
            had_witness = True
            if script_sig:
                raise ScriptFailure(ScriptError.WITNESS_MALLEATED)
            _verify_witness_program(witness, wp[0], wp[1], flags, checker, False)
            stack = stack[:1]
    if flags & Flag.P2SH and is_p2sh(script_pubkey):
        if not is_push_only(script_sig):
            raise ScriptFailure(ScriptError.SIG_PUSHONLY)
        stack = stack_copy
        redeem = stack.pop()
        eval_script(stack, redeem, flags, checker, SIGVERSION_BASE)
        if not stack or not cast_to_bool(stack[-1]):
            raise ScriptFailure(ScriptError.EVAL_FALSE)
        if flags & Flag.WITNESS:
            wp = witness_program(redeem)
            if wp is not None:
                had_witness = True
                if script_sig != push_data(redeem):
                    raise ScriptFailure(ScriptError.WITNESS_MALLEATED_P2SH)
                _verify_witness_program(witness, wp[0], wp[1], flags, checker, True)
                stack = stack[:1]
    if flags & Flag.CLEANSTACK and len(stack) != 1:
        raise ScriptFailure(ScriptError.CLEANSTACK)
    if flags & Flag.WITNESS and not had_witness and witness:
        raise ScriptFailure(ScriptError.WITNESS_UNEXPECTED)
