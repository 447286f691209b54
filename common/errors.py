"""Error kinds shared by the tower and its clients, and their numeric codes in each dialect.

The code knows *what* went wrong (an ``ErrorKind``); which number a client sees depends on its dialect.
python-teos clients know negative codes; rust-teos's plugin parses ``error_code`` as a u8, so it must only
ever see the small positive codes below. HTTP statuses are not decided here (the API owns that table).

Kinds one dialect lacks are mapped as follows (documented next to each entry):

==================================  ==============================  ===================================
kind                                python-teos code                rust-teos code
==================================  ==============================  ===================================
MISSING_FIELD                       -1 APPOINTMENT_EMPTY_FIELD [a]  1 MISSING_FIELD
EMPTY_FIELD                         -1 APPOINTMENT_EMPTY_FIELD      2 EMPTY_FIELD
WRONG_FIELD_TYPE                    -2                              3
WRONG_FIELD_SIZE                    -3                              4
WRONG_FIELD_FORMAT                  -4                              5
FIELD_TOO_SMALL                     -5                              33
FIELD_TOO_BIG                       -6                              34
WRONG_FIELD                         -7 APPOINTMENT_WRONG_FIELD      6 INVALID_REQUEST_FORMAT [b]
INVALID_SIGNATURE_OR_SUBSCRIPTION   -8                              7
ALREADY_TRIGGERED                   -9                              35
REGISTRATION_MISSING_FIELD          -33                             1 MISSING_FIELD
REGISTRATION_WRONG_FIELD_FORMAT     -34                             5 WRONG_FIELD_FORMAT
INVALID_REQUEST_FORMAT              -65                             6
SERVICE_UNAVAILABLE                 -66 [c]                         32
APPOINTMENT_NOT_FOUND               -67 [d]                         36
RESOURCE_EXHAUSTED                  -35 [e]                         65 REGISTRATION_RESOURCE_EXHAUSTED
UNEXPECTED                          -99 UNKNOWN_JSON_RPC_EXCEPTION  255 UNEXPECTED_ERROR
PAYMENT_REQUIRED                    -100 [f]                        80 [f]
INVALID_PAYMENT                     -101 [f]                        81 [f]
CHANNEL_NOT_FOUND                   -102 [f]                        82 [f]
CHANNEL_UNAVAILABLE                 -103 [f]                        83 [f]
INVALID_FUNDING                     -104 [f]                        84 [f]
PAYMENT_CONFLICT                    -105 [f]                        85 [f]
==================================  ==============================  ===================================

[a] python-teos answered a missing appointment field with -1 "empty ... received".
[b] the appointment is not an object: rust-teos rejects such a body as a malformed request.
[c] python-teos answered 503 with no code; -66 sits in its "general errors" range (-65..-96).
[d] python-teos answers a missing appointment with a 404 ``{"locator", "status": "not_found"}`` body and
    no code; -67 is only used if a python client must be given an error body anyway.
[e] python-teos never reported this; -35 sits in its registration range (-33..-64) next to -33/-34.
[-99] is python-teos's code for an unhandled failure.
[f] paid subscriptions (docs/PAYMENTS.md) exist in neither tower: their codes sit in ranges both leave
    free (python -100.., rust 80..). PAYMENT_REQUIRED: a paid tower refuses an unpaid register;
    INVALID_PAYMENT: a payment that is refused as such (signature, amount, transaction shape);
    CHANNEL_NOT_FOUND; CHANNEL_UNAVAILABLE: the channel no longer takes payments (claimed, closing,
    too near its expiry); INVALID_FUNDING: the funding output is missing, spent, unconfirmed or not the
    channel's script; PAYMENT_CONFLICT: another payment on the channel was accepted first (read the
    channel's state and sign again).
"""

from __future__ import annotations

from enum import Enum

from common.types import Dialect


class ErrorKind(Enum):
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    WRONG_FIELD_TYPE = "wrong_field_type"
    WRONG_FIELD_SIZE = "wrong_field_size"
    WRONG_FIELD_FORMAT = "wrong_field_format"
    FIELD_TOO_SMALL = "field_too_small"
    FIELD_TOO_BIG = "field_too_big"
    WRONG_FIELD = "wrong_field"
    INVALID_SIGNATURE_OR_SUBSCRIPTION = "invalid_signature_or_subscription"
    ALREADY_TRIGGERED = "already_triggered"
    REGISTRATION_MISSING_FIELD = "registration_missing_field"
    REGISTRATION_WRONG_FIELD_FORMAT = "registration_wrong_field_format"
    INVALID_REQUEST_FORMAT = "invalid_request_format"
    SERVICE_UNAVAILABLE = "service_unavailable"
    APPOINTMENT_NOT_FOUND = "appointment_not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNEXPECTED = "unexpected"
    PAYMENT_REQUIRED = "payment_required"
    INVALID_PAYMENT = "invalid_payment"
    CHANNEL_NOT_FOUND = "channel_not_found"
    CHANNEL_UNAVAILABLE = "channel_unavailable"
    INVALID_FUNDING = "invalid_funding"
    PAYMENT_CONFLICT = "payment_conflict"


PYTHON_CODES: dict[ErrorKind, int] = {
    ErrorKind.MISSING_FIELD: -1,
    ErrorKind.EMPTY_FIELD: -1,
    ErrorKind.WRONG_FIELD_TYPE: -2,
    ErrorKind.WRONG_FIELD_SIZE: -3,
    ErrorKind.WRONG_FIELD_FORMAT: -4,
    ErrorKind.FIELD_TOO_SMALL: -5,
    ErrorKind.FIELD_TOO_BIG: -6,
    ErrorKind.WRONG_FIELD: -7,
    ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION: -8,
    ErrorKind.ALREADY_TRIGGERED: -9,
    ErrorKind.REGISTRATION_MISSING_FIELD: -33,
    ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT: -34,
    ErrorKind.RESOURCE_EXHAUSTED: -35,
    ErrorKind.INVALID_REQUEST_FORMAT: -65,
    ErrorKind.SERVICE_UNAVAILABLE: -66,
    ErrorKind.APPOINTMENT_NOT_FOUND: -67,
    ErrorKind.UNEXPECTED: -99,
    ErrorKind.PAYMENT_REQUIRED: -100,
    ErrorKind.INVALID_PAYMENT: -101,
    ErrorKind.CHANNEL_NOT_FOUND: -102,
    ErrorKind.CHANNEL_UNAVAILABLE: -103,
    ErrorKind.INVALID_FUNDING: -104,
    ErrorKind.PAYMENT_CONFLICT: -105,
}

RUST_CODES: dict[ErrorKind, int] = {
    ErrorKind.MISSING_FIELD: 1,
    ErrorKind.EMPTY_FIELD: 2,
    ErrorKind.WRONG_FIELD_TYPE: 3,
    ErrorKind.WRONG_FIELD_SIZE: 4,
    ErrorKind.WRONG_FIELD_FORMAT: 5,
    ErrorKind.INVALID_REQUEST_FORMAT: 6,
    ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION: 7,
    ErrorKind.SERVICE_UNAVAILABLE: 32,
    ErrorKind.FIELD_TOO_SMALL: 33,
    ErrorKind.FIELD_TOO_BIG: 34,
    ErrorKind.ALREADY_TRIGGERED: 35,
    ErrorKind.APPOINTMENT_NOT_FOUND: 36,
    ErrorKind.RESOURCE_EXHAUSTED: 65,
    ErrorKind.UNEXPECTED: 255,
    ErrorKind.REGISTRATION_MISSING_FIELD: 1,
    ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT: 5,
    ErrorKind.WRONG_FIELD: 6,
    ErrorKind.PAYMENT_REQUIRED: 80,
    ErrorKind.INVALID_PAYMENT: 81,
    ErrorKind.CHANNEL_NOT_FOUND: 82,
    ErrorKind.CHANNEL_UNAVAILABLE: 83,
    ErrorKind.INVALID_FUNDING: 84,
    ErrorKind.PAYMENT_CONFLICT: 85,
}


def error_code(kind: ErrorKind, dialect: Dialect) -> int:
    """The ``error_code`` a client of ``dialect`` is sent for ``kind``."""
    table = PYTHON_CODES if dialect is Dialect.PYTHON else RUST_CODES
    return table[kind]


class TeosError(Exception):
    """A failure a client is told about: a kind (which fixes the code per dialect) and a message."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def code(self, dialect: Dialect) -> int:
        return error_code(self.kind, dialect)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind.name}, {self.message!r})"


class RequestError(TeosError):
    """The request itself is malformed (raised by ``common.validation``)."""
