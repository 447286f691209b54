"""Segwit addresses (BIP173 bech32 for witness version 0, BIP350 bech32m for versions 1 to 16).

A client shows the user the channel's funding address and reads the address the user wants change or a
refund paid to; the tower shows addresses in its listings. Both need the same strict codec for every
network, so it lives here (pure, no I/O). ``HRP`` maps the network names teosd uses to their prefixes.
"""

from __future__ import annotations

HRP = {"mainnet": "bc", "testnet": "tb", "testnet4": "tb", "signet": "tb", "regtest": "bcrt"}

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32 = 1
_BECH32M = 0x2BC830A3
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class AddressError(ValueError):
    """Not a valid segwit address for the expected network."""


def hrp_for(network: str) -> str:
    try:
        return HRP[network]
    except KeyError:
        raise AddressError(f"unknown network {network!r}") from None


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise AddressError("invalid data value")
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        raise AddressError("invalid padding")
    return out


def encode(hrp: str, version: int, program: bytes) -> str:
    """The address of witness ``version`` and ``program`` (bech32 for v0, bech32m above)."""
    if (
        not 0 <= version <= 16
        or not 2 <= len(program) <= 40
        or (version == 0 and len(program) not in (20, 32))
    ):
        raise AddressError("invalid witness version or program length")
    data = [version, *_convertbits(program, 8, 5, True)]
    const = _BECH32 if version == 0 else _BECH32M
    polymod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def decode(hrp: str, address: str) -> tuple[int, bytes]:
    """(witness version, program) of ``address``, which must carry ``hrp``; AddressError otherwise."""
    if not isinstance(address, str) or not 8 <= len(address) <= 90:
        raise AddressError("not a segwit address")
    if any(ord(c) < 33 or ord(c) > 126 for c in address):
        raise AddressError("invalid characters")
    if address.lower() != address and address.upper() != address:
        raise AddressError("mixed case")
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address):
        raise AddressError("no separator or checksum")
    if address[:pos] != hrp:
        raise AddressError(f"address is not for this network (expected prefix {hrp!r})")
    if any(c not in _CHARSET for c in address[pos + 1 :]):
        raise AddressError("invalid characters")
    data = [_CHARSET.index(c) for c in address[pos + 1 :]]
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32, _BECH32M):
        raise AddressError("bad checksum")
    values = data[:-6]
    if not values:
        raise AddressError("empty data")
    version = values[0]
    if version > 16:
        raise AddressError("invalid witness version")
    program = bytes(_convertbits(values[1:], 5, 8, False))
    if not 2 <= len(program) <= 40:
        raise AddressError("invalid program length")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError("invalid program length for witness version 0")
    if (version == 0) != (const == _BECH32):
        raise AddressError("wrong checksum variant for the witness version")
    return version, program


def script_to_address(script: bytes, network: str) -> str:
    """The address of a witness output script (``OP_n <program>``); AddressError for any other script."""
    if not 4 <= len(script) <= 42 or script[1] != len(script) - 2:
        raise AddressError("not a witness output script")
    if script[0] == 0:
        version = 0
    elif 0x51 <= script[0] <= 0x60:
        version = script[0] - 0x50
    else:
        raise AddressError("not a witness output script")
    return encode(hrp_for(network), version, script[2:])


def address_to_script(address: str, network: str) -> bytes:
    """The output script a segwit address of ``network`` pays to."""
    version, program = decode(hrp_for(network), address)
    return bytes([0 if version == 0 else 0x50 + version, len(program)]) + program
