"""Script disassembly as Bitcoin Core prints it in ``asm`` fields, and the push encodings mining needs."""

from __future__ import annotations

_NAMES = {
    0x4F: "-1", 0x50: "OP_RESERVED", 0x61: "OP_NOP", 0x62: "OP_VER", 0x63: "OP_IF", 0x64: "OP_NOTIF",
    0x65: "OP_VERIF", 0x66: "OP_VERNOTIF", 0x67: "OP_ELSE", 0x68: "OP_ENDIF", 0x69: "OP_VERIFY",
    0x6A: "OP_RETURN", 0x6B: "OP_TOALTSTACK", 0x6C: "OP_FROMALTSTACK", 0x6D: "OP_2DROP", 0x6E: "OP_2DUP",
    0x6F: "OP_3DUP", 0x70: "OP_2OVER", 0x71: "OP_2ROT", 0x72: "OP_2SWAP", 0x73: "OP_IFDUP",
    0x74: "OP_DEPTH", 0x75: "OP_DROP", 0x76: "OP_DUP", 0x77: "OP_NIP", 0x78: "OP_OVER", 0x79: "OP_PICK",
    0x7A: "OP_ROLL", 0x7B: "OP_ROT", 0x7C: "OP_SWAP", 0x7D: "OP_TUCK", 0x7E: "OP_CAT", 0x7F: "OP_SUBSTR",
    0x80: "OP_LEFT", 0x81: "OP_RIGHT", 0x82: "OP_SIZE", 0x83: "OP_INVERT", 0x84: "OP_AND", 0x85: "OP_OR",
    0x86: "OP_XOR", 0x87: "OP_EQUAL", 0x88: "OP_EQUALVERIFY", 0x89: "OP_RESERVED1", 0x8A: "OP_RESERVED2",
    0x8B: "OP_1ADD", 0x8C: "OP_1SUB", 0x8D: "OP_2MUL", 0x8E: "OP_2DIV", 0x8F: "OP_NEGATE", 0x90: "OP_ABS",
    0x91: "OP_NOT", 0x92: "OP_0NOTEQUAL", 0x93: "OP_ADD", 0x94: "OP_SUB", 0x95: "OP_MUL", 0x96: "OP_DIV",
    0x97: "OP_MOD", 0x98: "OP_LSHIFT", 0x99: "OP_RSHIFT", 0x9A: "OP_BOOLAND", 0x9B: "OP_BOOLOR",
    0x9C: "OP_NUMEQUAL", 0x9D: "OP_NUMEQUALVERIFY", 0x9E: "OP_NUMNOTEQUAL", 0x9F: "OP_LESSTHAN",
    0xA0: "OP_GREATERTHAN", 0xA1: "OP_LESSTHANOREQUAL", 0xA2: "OP_GREATERTHANOREQUAL", 0xA3: "OP_MIN",
    0xA4: "OP_MAX", 0xA5: "OP_WITHIN", 0xA6: "OP_RIPEMD160", 0xA7: "OP_SHA1", 0xA8: "OP_SHA256",
    0xA9: "OP_HASH160", 0xAA: "OP_HASH256", 0xAB: "OP_CODESEPARATOR", 0xAC: "OP_CHECKSIG",
    0xAD: "OP_CHECKSIGVERIFY", 0xAE: "OP_CHECKMULTISIG", 0xAF: "OP_CHECKMULTISIGVERIFY", 0xB0: "OP_NOP1",
    0xB1: "OP_CHECKLOCKTIMEVERIFY", 0xB2: "OP_CHECKSEQUENCEVERIFY", 0xB3: "OP_NOP4", 0xB4: "OP_NOP5",
    0xB5: "OP_NOP6", 0xB6: "OP_NOP7", 0xB7: "OP_NOP8", 0xB8: "OP_NOP9", 0xB9: "OP_NOP10",
    0xBA: "OP_CHECKSIGADD",
}  # fmt: skip
_SIGHASH_NAMES = {0x01: "ALL", 0x02: "NONE", 0x03: "SINGLE", 0x81: "ALL|ANYONECANPAY",
                  0x82: "NONE|ANYONECANPAY", 0x83: "SINGLE|ANYONECANPAY"}  # fmt: skip


def _op_name(op: int) -> str:
    if op == 0:
        return "0"
    if 0x51 <= op <= 0x60:
        return str(op - 0x50)
    return _NAMES.get(op, "OP_UNKNOWN")


def script_num(data: bytes) -> int:
    """A script number's value (little-endian, sign in the top bit of the last byte), unchecked."""
    if not data:
        return 0
    value = int.from_bytes(data, "little")
    if data[-1] & 0x80:
        return -(value & ~(0x80 << (8 * (len(data) - 1))))
    return value


def _looks_like_signature(data: bytes) -> bool:
    return 9 <= len(data) <= 73 and data[0] == 0x30 and data[1] == len(data) - 3


def to_asm(script: bytes, decode_sighash: bool = False) -> str:
    """Core's ScriptToAsmStr: small pushes as numbers, others as hex, ``[error]`` on truncation."""
    out: list[str] = []
    i = 0
    n = len(script)
    while i < n:
        op = script[i]
        i += 1
        if 0 < op <= 0x4E:
            if op < 0x4C:
                size = op
            else:
                width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
                if i + width > n:
                    out.append("[error]")
                    break
                size = int.from_bytes(script[i : i + width], "little")
                i += width
            if i + size > n:
                out.append("[error]")
                break
            data = script[i : i + size]
            i += size
            if size <= 4:
                out.append(str(script_num(data)))
            elif decode_sighash and _looks_like_signature(data) and data[-1] in _SIGHASH_NAMES:
                out.append(data[:-1].hex() + f"[{_SIGHASH_NAMES[data[-1]]}]")
            else:
                out.append(data.hex())
        else:
            out.append(_op_name(op))
    return " ".join(out)


def push_int(n: int) -> bytes:
    """``CScript() << n``: OP_0, OP_1..OP_16, OP_1NEGATE, else a minimal CScriptNum push."""
    if n == 0:
        return b"\x00"
    if n == -1 or 1 <= n <= 16:
        return bytes([n + 0x50])
    neg = n < 0
    value = abs(n)
    body = bytearray()
    while value:
        body.append(value & 0xFF)
        value >>= 8
    if body[-1] & 0x80:
        body.append(0x80 if neg else 0)
    elif neg:
        body[-1] |= 0x80
    return bytes([len(body)]) + bytes(body)
