"""z-base-32, the encoding Lightning's ``signmessage`` uses for its signatures.

Alphabet and bit order follow the human-oriented base-32 of Zooko Wilcox-O'Hearn: the input is read as one
big-endian bit string, cut into 5-bit groups (the last one padded with zero bits), each mapped to a
character. There is no ``=`` padding. Decoding is strict: only the 32 lower-case alphabet characters are
accepted, the length must be one an encoder can produce, and the padding bits must be zero, so every
byte string has exactly one text form (a signature cannot be re-spelt to dodge a duplicate check).
The ``pyzbase32`` package is not used because it breaks on Python >= 3.10.
"""

from __future__ import annotations

import base64

ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_VALUES = {char: index for index, char in enumerate(ALPHABET)}
# Both directions run in C: encoding is RFC 4648's base 32 (the same bit order, another alphabet) with the
# alphabet translated; decoding translates each character to its digit in base 32 ("0"-"9", "a"-"v") and
# lets ``int`` read the whole text (linear for a power-of-two base). Any character outside the alphabet
# becomes "!", which ``int`` refuses. A signature takes a few microseconds either way, where a loop in
# Python over its 104 characters took seven.
_RFC4648 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_ZBASE32 = bytes.maketrans(_RFC4648, ALPHABET.encode("ascii"))
_DIGITS = "0123456789abcdefghijklmnopqrstuv"
_FROM_ZBASE32 = bytes(ord(_DIGITS[_VALUES[chr(b)]]) if chr(b) in _VALUES else ord("!") for b in range(256))
_PAD_BITS = {0: 0, 2: 2, 4: 4, 5: 1, 7: 3}  # characters past the last group of 8 -> padding bits


def encode(data: bytes) -> str:
    """Encodes bytes as z-base-32 text (``ceil(8 * len(data) / 5)`` characters)."""
    return base64.b32encode(data).rstrip(b"=").translate(_TO_ZBASE32).decode("ascii")


def decode(text: str) -> bytes:
    """Decodes z-base-32 text; raises ValueError on a bad character, length or non-zero padding."""
    if not isinstance(text, str):
        raise ValueError("z-base-32 input must be a str")
    pad_bits = _PAD_BITS.get(len(text) % 8)
    if pad_bits is None:
        raise ValueError(f"invalid z-base-32 length {len(text)}")
    if not text:
        return b""
    if not text.isascii():
        raise ValueError("invalid z-base-32 character")
    try:
        value = int(text.encode("ascii").translate(_FROM_ZBASE32), 32)
    except ValueError:
        raise ValueError("invalid z-base-32 character") from None
    if value & ((1 << pad_bits) - 1):
        raise ValueError("non-zero padding bits in z-base-32 input")
    return (value >> pad_bits).to_bytes(5 * len(text) // 8, "big")
