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


def encode(data: bytes) -> str:
    """Encodes bytes as z-base-32 text (``ceil(8 * len(data) / 5)`` characters)."""
    n_bits = 8 * len(data)
    if n_bits == 0:
        return ""
    n_chars = -(-n_bits // 5)
    value = int.from_bytes(data, "big") << (5 * n_chars - n_bits)
    chars = []
    for shift in range(5 * (n_chars - 1), -1, -5):
        chars.append(ALPHABET[(value >> shift) & 0x1F])
    return "".join(chars)


def decode(text: str) -> bytes:
    """Decodes z-base-32 text; raises ValueError on a bad character, length or non-zero padding."""
    if not isinstance(text, str):
        raise ValueError("z-base-32 input must be a str")
    value = 0
    for char in text:
        digit = _VALUES.get(char)
        if digit is None:
            raise ValueError(f"invalid z-base-32 character {char!r}")
        value = (value << 5) | digit
    n_bits = 5 * len(text)
    n_bytes = n_bits // 8
    pad_bits = n_bits - 8 * n_bytes
    if pad_bits >= 5:
        raise ValueError(f"invalid z-base-32 length {len(text)}")
    if value & ((1 << pad_bits) - 1):
        raise ValueError("non-zero padding bits in z-base-32 input")
    return (value >> pad_bits).to_bytes(n_bytes, "big")
