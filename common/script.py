"""Script pieces a client and the tower both build or check: data and number pushes, the output script
types a payment may pay to, and Bitcoin Core's dust threshold for them (pure, no I/O)."""

from __future__ import annotations

import struct

from common.tx import TxOut, hash160, sha256

OP_0 = 0x00
OP_1 = 0x51
OP_IF = 0x63
OP_ELSE = 0x67
OP_ENDIF = 0x68
OP_DROP = 0x75
OP_DUP = 0x76
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKSIGVERIFY = 0xAD
OP_CHECKLOCKTIMEVERIFY = 0xB1

# Core's default -dustrelayfee (sat per 1000 vbytes); an output worth less than the fee to spend it at
# this rate is "dust" and makes the whole transaction non-standard.
DUST_RELAY_FEE_PER_KVB = 3_000


def push_data(data: bytes) -> bytes:
    """The minimal push of ``data`` (direct up to 75 bytes, then OP_PUSHDATA1/2/4)."""
    n = len(data)
    if n < 0x4C:
        return bytes([n]) + data
    if n <= 0xFF:
        return b"\x4c" + bytes([n]) + data
    if n <= 0xFFFF:
        return b"\x4d" + struct.pack("<H", n) + data
    return b"\x4e" + struct.pack("<I", n) + data


def push_int(n: int) -> bytes:
    """The minimal push of a script number: OP_0, OP_1..OP_16, OP_1NEGATE, else CScriptNum bytes."""
    if n == 0:
        return bytes([OP_0])
    if n == -1 or 1 <= n <= 16:
        return bytes([n + 0x50])
    negative = n < 0
    value = abs(n)
    body = bytearray()
    while value:
        body.append(value & 0xFF)
        value >>= 8
    if body[-1] & 0x80:
        body.append(0x80 if negative else 0)
    elif negative:
        body[-1] |= 0x80
    return push_data(bytes(body))


def p2wpkh(pubkey: bytes) -> bytes:
    return b"\x00\x14" + hash160(pubkey)


def p2wsh(witness_script: bytes) -> bytes:
    return b"\x00\x20" + sha256(witness_script)


def output_type(script: bytes) -> str | None:
    """``p2pkh``, ``p2sh``, ``p2wpkh``, ``p2wsh`` or ``p2tr`` for those standard templates, else None."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "p2pkh"
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == OP_EQUAL:
        return "p2sh"
    if n == 22 and script[:2] == b"\x00\x14":
        return "p2wpkh"
    if n == 34 and script[:2] == b"\x00\x20":
        return "p2wsh"
    if n == 34 and script[:2] == b"\x51\x20":
        return "p2tr"
    return None


def dust_threshold(script: bytes) -> int:
    """The smallest value Core relays in an output with ``script`` (GetDustThreshold at 3 sat/vB).

    The output's size plus the size of an input spending it (148 bytes, or 67 vbytes for a witness
    program), times the dust relay fee, rounded up: 294 sat for P2WPKH, 330 for P2WSH and P2TR, 540 for
    P2SH, 546 for P2PKH.
    """
    size = len(TxOut(0, script).serialize())
    witness = output_type(script) in ("p2wpkh", "p2wsh", "p2tr")
    size += 32 + 4 + 1 + (107 // 4 if witness else 107) + 4
    return -(-DUST_RELAY_FEE_PER_KVB * size // 1000)
