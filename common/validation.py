"""Checks on untrusted request data, turning JSON values into value types or a ``RequestError``.

Each parser takes whatever ``json.loads`` produced (any object at all) and either returns a typed value or
raises ``RequestError`` with the kind that fixes the client's error code; nothing else escapes, whatever
the input. Messages follow the texts python-teos clients have seen ("appointment rejected. wrong locator
size (...)"), but not its defects: an upper-case locator is a format error here (python-teos called it an
invalid signature), ``to_self_delay == 2**32`` is too big (python-teos crashed), an odd-length blob is a
format error (python-teos answered 503). Unknown extra appointment fields are ignored, as python-teos did.
"""

from __future__ import annotations

import re

from coincurve import PublicKey

from common.appointment import MAX_BLOB_SIZE, MAX_TO_SELF_DELAY, Appointment
from common.errors import ErrorKind, RequestError
from common.types import Locator, UserId

_LOWER_HEX = re.compile(r"[0-9a-f]*")
_ANY_HEX = re.compile(r"[0-9a-fA-F]*")
_APPOINTMENT_PREFIX = "appointment rejected. "
_MAX_ECHO = 80  # longest offending value quoted back in a message


def _echo(value: object) -> str:
    """A short printable rendering of an offending value for an error message."""
    text = repr(value)
    return text if len(text) <= _MAX_ECHO else text[: _MAX_ECHO - 3] + "..."


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_locator(value: object, prefix: str) -> Locator:
    if value is None:
        raise RequestError(ErrorKind.EMPTY_FIELD, f"{prefix}empty locator received")
    if not isinstance(value, str):
        raise RequestError(
            ErrorKind.WRONG_FIELD_TYPE, f"{prefix}wrong locator data type ({_type_name(value)})"
        )
    if len(value) != 2 * Locator.SIZE:
        raise RequestError(
            ErrorKind.WRONG_FIELD_SIZE,
            f"{prefix}wrong locator size ({len(value)} characters, expected {2 * Locator.SIZE})",
        )
    if not _LOWER_HEX.fullmatch(value):
        raise RequestError(
            ErrorKind.WRONG_FIELD_FORMAT,
            f"{prefix}wrong locator format ({_echo(value)}, expected lower-case hex)",
        )
    return Locator(bytes.fromhex(value))


def parse_locator(value: object) -> Locator:
    """A locator: exactly 32 lower-case hex characters."""
    return _check_locator(value, "")


def _check_to_self_delay(value: object, min_to_self_delay: int) -> int:
    prefix = _APPOINTMENT_PREFIX
    if value is None:
        raise RequestError(ErrorKind.EMPTY_FIELD, f"{prefix}empty to_self_delay received")
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(
            ErrorKind.WRONG_FIELD_TYPE, f"{prefix}wrong to_self_delay data type ({_type_name(value)})"
        )
    if value > MAX_TO_SELF_DELAY:
        raise RequestError(
            ErrorKind.FIELD_TOO_BIG,
            f"{prefix}to_self_delay must fit the transaction nLockTime field "
            f"({_echo(value)} > {MAX_TO_SELF_DELAY})",
        )
    if value < min_to_self_delay:
        raise RequestError(
            ErrorKind.FIELD_TOO_SMALL,
            f"{prefix}to_self_delay too small. The to_self_delay should be at least {min_to_self_delay} "
            f"(current: {value})",
        )
    return value


def _check_encrypted_blob(value: object, max_blob_size: int) -> bytes:
    prefix = _APPOINTMENT_PREFIX
    if value is None:
        raise RequestError(ErrorKind.EMPTY_FIELD, f"{prefix}empty encrypted_blob received")
    if not isinstance(value, str):
        raise RequestError(
            ErrorKind.WRONG_FIELD_TYPE, f"{prefix}wrong encrypted_blob data type ({_type_name(value)})"
        )
    if not value:
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, f"{prefix}wrong encrypted_blob format (empty)")
    if len(value) > 2 * max_blob_size:
        raise RequestError(
            ErrorKind.FIELD_TOO_BIG,
            f"{prefix}encrypted_blob too big ({(len(value) + 1) // 2} bytes, at most {max_blob_size})",
        )
    if len(value) % 2:
        raise RequestError(
            ErrorKind.WRONG_FIELD_FORMAT,
            f"{prefix}wrong encrypted_blob format (odd number of hex characters)",
        )
    if not _ANY_HEX.fullmatch(value):
        raise RequestError(ErrorKind.WRONG_FIELD_FORMAT, f"{prefix}wrong encrypted_blob format (not hex)")
    return bytes.fromhex(value)


def parse_appointment(
    data: object, *, min_to_self_delay: int, max_blob_size: int = MAX_BLOB_SIZE
) -> Appointment:
    """The ``appointment`` object of an ``add_appointment`` request, checked field by field.

    Fields are checked in the order locator, to_self_delay, encrypted_blob and the first problem is
    reported. A missing field counts as empty (python-teos's code -1 for both).
    """
    if data is None:
        raise RequestError(ErrorKind.EMPTY_FIELD, f"{_APPOINTMENT_PREFIX}empty appointment received")
    if not isinstance(data, dict):
        raise RequestError(ErrorKind.WRONG_FIELD, f"{_APPOINTMENT_PREFIX}wrong appointment format")
    locator = _check_locator(data.get("locator"), _APPOINTMENT_PREFIX)
    to_self_delay = _check_to_self_delay(data.get("to_self_delay"), min_to_self_delay)
    encrypted_blob = _check_encrypted_blob(data.get("encrypted_blob"), max_blob_size)
    return Appointment(locator=locator, encrypted_blob=encrypted_blob, to_self_delay=to_self_delay)


def parse_user_id(value: object) -> UserId:
    """A user id sent to ``/register``: 66 hex characters encoding a compressed point on secp256k1.

    A missing value is the caller's to report (REGISTRATION_MISSING_FIELD, with the field name of the
    dialect); anything else wrong is REGISTRATION_WRONG_FIELD_FORMAT.
    """
    message = "Provided public key does not match expected format (33-byte hex string)"
    if not isinstance(value, str) or len(value) != 2 * UserId.SIZE or not _ANY_HEX.fullmatch(value):
        raise RequestError(ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT, message)
    raw = bytes.fromhex(value)
    if raw[0] not in (2, 3):
        raise RequestError(ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT, message)
    try:
        PublicKey(raw)
    except Exception:  # libsecp256k1 refuses an x coordinate with no point, in its own way
        raise RequestError(
            ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT, "Provided public key is not a point on secp256k1"
        ) from None
    return UserId(raw)


def parse_signature(value: object) -> str:
    """A request's ``signature``: a non-empty string (whether it verifies is checked later)."""
    if not isinstance(value, str) or not value:
        raise RequestError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, "Invalid signature: missing or empty")
    return value
