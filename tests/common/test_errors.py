from __future__ import annotations

import pytest

from common.errors import PYTHON_CODES, RUST_CODES, ErrorKind, RequestError, TeosError, error_code
from common.types import Dialect

# The codes each existing tower documents (PROTOCOL.md), for the kinds that exist there under that name.
PYTHON_TEOS = {
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
    ErrorKind.INVALID_REQUEST_FORMAT: -65,
}
RUST_TEOS = {
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
}


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_has_a_code_in_each_dialect(kind: ErrorKind) -> None:
    python_code = error_code(kind, Dialect.PYTHON)
    rust_code = error_code(kind, Dialect.RUST)
    assert isinstance(python_code, int) and python_code < 0
    assert isinstance(rust_code, int) and 0 < rust_code <= 255  # the rust plugin parses a u8


def test_tables_cover_exactly_the_kinds() -> None:
    assert set(PYTHON_CODES) == set(ErrorKind)
    assert set(RUST_CODES) == set(ErrorKind)


@pytest.mark.parametrize(("kind", "code"), list(PYTHON_TEOS.items()), ids=lambda v: str(v))
def test_python_teos_codes(kind: ErrorKind, code: int) -> None:
    assert error_code(kind, Dialect.PYTHON) == code


@pytest.mark.parametrize(("kind", "code"), list(RUST_TEOS.items()), ids=lambda v: str(v))
def test_rust_teos_codes(kind: ErrorKind, code: int) -> None:
    assert error_code(kind, Dialect.RUST) == code


@pytest.mark.parametrize(
    ("kind", "python_code", "rust_code"),
    [
        (ErrorKind.MISSING_FIELD, -1, 1),
        (ErrorKind.REGISTRATION_MISSING_FIELD, -33, 1),
        (ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT, -34, 5),
        (ErrorKind.WRONG_FIELD, -7, 6),
    ],
)
def test_kinds_one_dialect_lacks(kind: ErrorKind, python_code: int, rust_code: int) -> None:
    assert error_code(kind, Dialect.PYTHON) == python_code
    assert error_code(kind, Dialect.RUST) == rust_code


def test_codes_invented_for_python_do_not_collide_with_python_teos_codes() -> None:
    invented = {ErrorKind.SERVICE_UNAVAILABLE, ErrorKind.APPOINTMENT_NOT_FOUND, ErrorKind.RESOURCE_EXHAUSTED}
    for kind in invented:
        assert PYTHON_CODES[kind] not in PYTHON_TEOS.values()
    assert len({PYTHON_CODES[k] for k in invented | {ErrorKind.UNEXPECTED}}) == 4


def test_teos_error_carries_kind_and_message() -> None:
    error = RequestError(ErrorKind.FIELD_TOO_BIG, "too big")
    assert isinstance(error, TeosError)
    assert error.kind is ErrorKind.FIELD_TOO_BIG
    assert error.message == "too big" == str(error)
    assert error.code(Dialect.PYTHON) == -6
    assert error.code(Dialect.RUST) == 34
    assert "FIELD_TOO_BIG" in repr(error)
