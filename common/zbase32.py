"""z-base-32, the encoding Lightning's ``signmessage`` uses for its signatures.

Alphabet and bit order follow the human-oriented base-32 of Zooko Wilcox-O'Hearn: the input is read as one
big-endian bit string, cut into 5-bit groups (the last one padded with zero bits), each mapped to a
character. There is no ``=`` padding. Decoding is strict: only the 32 lower-case alphabet characters are
accepted, the length must be one an encoder can produce, and the padding bits must be zero, so every
byte string has exactly one text form (a signature cannot be re-spelt to dodge a duplicate check).
The ``pyzbase32`` package is not used because it breaks on Python >= 3.10.
"""

from __future__ import annotations

ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_VALUES = {char: index for index, char in enumerate(ALPHABET)}
# 8 characters carry exactly 40 bits = 5 bytes: both directions work group by group, so the cost is linear
# in the input (a single big integer for the whole input made decoding quadratic: a 64 KB string cost
# half a second of CPU).
_GROUP_CHARS = 8
_GROUP_BYTES = 5


def encode(data: bytes) -> str:
    """Encodes bytes as z-base-32 text (``ceil(8 * len(data) / 5)`` characters)."""
    chars: list[str] = []
    for start in range(0, len(data), _GROUP_BYTES):
        group = data[start : start + _GROUP_BYTES]
        n_bits = 8 * len(group)
        n_chars = -(-n_bits // 5)
        value = int.from_bytes(group, "big") << (5 * n_chars - n_bits)
        for shift in range(5 * (n_chars - 1), -1, -5):
            chars.append(ALPHABET[(value >> shift) & 0x1F])
    return "".join(chars)


def decode(text: str) -> bytes:
    """Decodes z-base-32 text; raises ValueError on a bad character, length or non-zero padding."""
    if not isinstance(text, str):
        raise ValueError("z-base-32 input must be a str")
    tail = len(text) % _GROUP_CHARS
    pad_bits = (5 * tail) % 8
    if pad_bits >= 5:
        raise ValueError(f"invalid z-base-32 length {len(text)}")
    out = bytearray()
    for start in range(0, len(text), _GROUP_CHARS):
        group = text[start : start + _GROUP_CHARS]
        value = 0
        for char in group:
            digit = _VALUES.get(char)
            if digit is None:
                raise ValueError(f"invalid z-base-32 character {char!r}")
            value = (value << 5) | digit
        n_bits = 5 * len(group)
        group_pad = n_bits % 8
        if value & ((1 << group_pad) - 1):
            raise ValueError("non-zero padding bits in z-base-32 input")
        out += (value >> group_pad).to_bytes(n_bits // 8, "big")
    return bytes(out)
