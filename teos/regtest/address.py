"""Regtest addresses and output scripts: bech32/bech32m (``bcrt``), base58check P2PKH/P2SH, descriptors.

Converts between the address strings RPC callers pass (``generatetoaddress``, ``generateblock``) and the
output scripts they stand for, classifies scripts the way ``decoderawtransaction`` names them
(``witness_v0_keyhash``...), and computes the checksum Bitcoin Core appends to descriptors.
"""

from __future__ import annotations

import hashlib

from common.tx import hash160, sha256

HRP = "bcrt"
P2PKH_VERSION = 0x6F  # regtest/testnet base58 prefixes
P2SH_VERSION = 0xC4

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class AddressError(ValueError):
    """Not a valid regtest address."""


def _polymod(values: list[int]) -> int:
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int] | None:
    acc = 0
    bits = 0
    ret = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            return None
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return ret


def encode_segwit(version: int, program: bytes, hrp: str = HRP) -> str:
    data = [version] + (_convertbits(program, 8, 5, True) or [])
    const = _BECH32_CONST if version == 0 else _BECH32M_CONST
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def decode_segwit(address: str, hrp: str = HRP) -> tuple[int, bytes]:
    if any(ord(c) < 33 or ord(c) > 126 for c in address) or (
        address.lower() != address and address.upper() != address
    ):
        raise AddressError("invalid bech32 characters")
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address) or len(address) > 90 or address[:pos] != hrp:
        raise AddressError("invalid bech32 address")
    if any(c not in _CHARSET for c in address[pos + 1 :]):
        raise AddressError("invalid bech32 characters")
    data = [_CHARSET.find(c) for c in address[pos + 1 :]]
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32_CONST, _BECH32M_CONST):
        raise AddressError("bad bech32 checksum")
    values = data[:-6]
    if not values:
        raise AddressError("empty witness program")
    version = values[0]
    program = _convertbits(values[1:], 5, 8, False)
    if program is None or version > 16 or not 2 <= len(program) <= 40:
        raise AddressError("invalid witness program")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError("invalid witness v0 program length")
    if (version == 0) != (const == _BECH32_CONST):
        raise AddressError("wrong bech32 variant for witness version")
    return version, bytes(program)


def b58check_encode(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, rem = divmod(n, 58)
        out = _B58[rem] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def b58check_decode(address: str) -> bytes:
    n = 0
    for c in address:
        idx = _B58.find(c)
        if idx < 0:
            raise AddressError("invalid base58 character")
        n = n * 58 + idx
    pad = len(address) - len(address.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    data = b"\0" * pad + body
    if len(data) < 5:
        raise AddressError("base58 data too short")
    payload, check = data[:-4], data[-4:]
    if hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != check:
        raise AddressError("bad base58 checksum")
    return payload


def script_for_address(address: str) -> bytes:
    """The output script a regtest address pays to; raises AddressError for anything else."""
    if not isinstance(address, str) or not address or len(address) > 100:
        raise AddressError("not an address")
    if address.lower().startswith(HRP + "1"):
        version, program = decode_segwit(address)
        op = 0 if version == 0 else 0x50 + version
        return bytes([op, len(program)]) + program
    payload = b58check_decode(address)
    if len(payload) != 21:
        raise AddressError("invalid base58 payload length")
    if payload[0] == P2PKH_VERSION:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if payload[0] == P2SH_VERSION:
        return b"\xa9\x14" + payload[1:] + b"\x87"
    raise AddressError("not a regtest address version")


def p2wpkh_script(pubkey: bytes) -> bytes:
    return b"\x00\x14" + hash160(pubkey)


def p2wsh_script(witness_script: bytes) -> bytes:
    return b"\x00\x20" + sha256(witness_script)


def script_type(script: bytes) -> str:
    """The ``scriptPubKey.type`` Bitcoin Core reports for an output script."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "pubkeyhash"
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return "scripthash"
    if n == 22 and script[:2] == b"\x00\x14":
        return "witness_v0_keyhash"
    if n == 34 and script[:2] == b"\x00\x20":
        return "witness_v0_scripthash"
    if n == 34 and script[:2] == b"\x51\x20":
        return "witness_v1_taproot"
    if script == b"\x51\x02\x4e\x73":
        return "anchor"
    if 4 <= n <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] == n - 2:
        return "witness_unknown" if script[0] != 0 else "nonstandard"
    if n >= 1 and script[0] == 0x6A:
        return "nulldata"
    if (n == 35 and script[0] == 33 and script[34] == 0xAC) or (
        n == 67 and script[0] == 65 and script[66] == 0xAC
    ):
        return "pubkey"
    return "nonstandard"


def address_for_script(script: bytes) -> str | None:
    """The regtest address of an output script, or None when it has none (nulldata, bare pubkey...)."""
    kind = script_type(script)
    if kind == "pubkeyhash":
        return b58check_encode(bytes([P2PKH_VERSION]) + script[3:23])
    if kind == "scripthash":
        return b58check_encode(bytes([P2SH_VERSION]) + script[2:22])
    if kind in (
        "witness_v0_keyhash",
        "witness_v0_scripthash",
        "witness_v1_taproot",
        "witness_unknown",
        "anchor",
    ):
        version = 0 if script[0] == 0 else script[0] - 0x50
        return encode_segwit(version, script[2:])
    return None


_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _desc_polymod(c: int, val: int) -> int:
    c0 = c >> 35
    c = ((c & 0x7FFFFFFFF) << 5) ^ val
    for i, g in enumerate((0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)):
        if c0 & (1 << i):
            c ^= g
    return c


def descriptor_checksum(desc: str) -> str:
    """The 8-character checksum Bitcoin Core appends to a descriptor after ``#``."""
    c = 1
    cls = 0
    clscount = 0
    for ch in desc:
        pos = _INPUT_CHARSET.find(ch)
        if pos < 0:
            raise ValueError("invalid descriptor character")
        c = _desc_polymod(c, pos & 31)
        cls = cls * 3 + (pos >> 5)
        clscount += 1
        if clscount == 3:
            c = _desc_polymod(c, cls)
            cls = 0
            clscount = 0
    if clscount > 0:
        c = _desc_polymod(c, cls)
    for _ in range(8):
        c = _desc_polymod(c, 0)
    c ^= 1
    return "".join(_CHECKSUM_CHARSET[(c >> (5 * (7 - j))) & 31] for j in range(8))


def descriptor_for_script(script: bytes) -> str:
    """``addr(...)``, ``pk(...)`` or ``raw(...)`` with checksum, as decoded outputs show them."""
    address = address_for_script(script)
    if address is not None:
        body = f"addr({address})"
    elif script_type(script) == "pubkey":
        body = f"pk({script[1:-1].hex()})"
    else:
        body = f"raw({script.hex()})"
    return f"{body}#{descriptor_checksum(body)}"
