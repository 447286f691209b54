"""The receipts the tower signs (with ``common.crypto.sign``) so a user can prove what it promised.

Byte layouts (every integer a big-endian u32):

- registration, python dialect: ``user_id (33) || available_slots || subscription_expiry``
- registration, rust dialect:   ``user_id (33) || available_slots || subscription_start ||
  subscription_expiry``
- appointment, python dialect:  ``zbase32_decode(user_signature) (65) || start_block``
- appointment, rust dialect:    ``user_signature as ASCII text || start_block``
"""

from __future__ import annotations

import struct

from common import zbase32
from common.types import Dialect, UserId

_U32_MAX = 2**32 - 1


def _u32(name: str, value: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1], got {value!r}")
    return struct.pack(">I", value)


def registration_receipt(
    dialect: Dialect,
    user_id: UserId,
    available_slots: int,
    subscription_start: int,
    subscription_expiry: int,
) -> bytes:
    """The bytes the tower signs for a registration (python-teos leaves ``subscription_start`` out)."""
    receipt = user_id.raw + _u32("available_slots", available_slots)
    if dialect is Dialect.RUST:
        receipt += _u32("subscription_start", subscription_start)
    return receipt + _u32("subscription_expiry", subscription_expiry)


def appointment_receipt(dialect: Dialect, user_signature: str, start_block: int) -> bytes:
    """The bytes the tower signs when it accepts an appointment.

    Raises ValueError if ``user_signature`` cannot be put in the receipt (python dialect: not z-base-32;
    rust dialect: not ASCII), which cannot happen for a signature that has already been verified.
    """
    if dialect is Dialect.PYTHON:
        signature_bytes = zbase32.decode(user_signature)
    else:
        try:
            signature_bytes = user_signature.encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError("user signature is not ASCII") from exc
    return signature_bytes + _u32("start_block", start_block)
