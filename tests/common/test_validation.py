"""Request validation: the python-teos observations (python-teos-responses.md rows 12-41) as a table, then
properties: on any JSON value the parsers return a valid value or raise RequestError, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import crypto
from common.appointment import Appointment
from common.errors import ErrorKind, RequestError
from common.types import Dialect, Locator, UserId
from common.validation import parse_appointment, parse_locator, parse_signature, parse_user_id

MIN_DELAY = 20
MISSING = object()
VALID: dict[str, Any] = {"locator": "dd" * 16, "encrypted_blob": "ab" * 100, "to_self_delay": 20}


def appointment(**changes: object) -> dict[str, object]:
    data: dict[str, object] = dict(VALID)
    for key, value in changes.items():
        if value is MISSING:
            del data[key]
        else:
            data[key] = value
    return data


def parse(data: object, **kwargs: Any) -> Appointment:
    return parse_appointment(data, min_to_self_delay=MIN_DELAY, **kwargs)


# (row, case, appointment data, expected kind, python code, text the message must contain)
K = ErrorKind
REJECTED = [
    (12, "appointment missing", None, K.EMPTY_FIELD, -1, "empty appointment received"),
    (13, "appointment not a dict", ["x"], K.WRONG_FIELD, -7, "wrong appointment format"),
    (13, "appointment a string", "abc", K.WRONG_FIELD, -7, "wrong appointment format"),
    (14, "locator missing", appointment(locator=MISSING), K.EMPTY_FIELD, -1, "empty locator received"),
    (14, "locator null", appointment(locator=None), K.EMPTY_FIELD, -1, "empty locator received"),
    (15, "to_self_delay missing", appointment(to_self_delay=MISSING), K.EMPTY_FIELD, -1,
     "empty to_self_delay received"),
    (16, "encrypted_blob missing", appointment(encrypted_blob=MISSING), K.EMPTY_FIELD, -1,
     "empty encrypted_blob received"),
    (17, "locator int", appointment(locator=5), K.WRONG_FIELD_TYPE, -2, "wrong locator data type"),
    (18, "locator 31 hex", appointment(locator="d" * 31), K.WRONG_FIELD_SIZE, -3, "wrong locator size"),
    (18, "locator 34 hex", appointment(locator="d" * 34), K.WRONG_FIELD_SIZE, -3, "wrong locator size"),
    (18, "locator empty", appointment(locator=""), K.WRONG_FIELD_SIZE, -3, "wrong locator size"),
    (19, "locator non-hex", appointment(locator="zz" * 16), K.WRONG_FIELD_FORMAT, -4,
     "wrong locator format"),
    (20, "locator upper-case hex", appointment(locator="DD" * 16), K.WRONG_FIELD_FORMAT, -4,
     "wrong locator format"),
    (21, "to_self_delay str", appointment(to_self_delay="20"), K.WRONG_FIELD_TYPE, -2,
     "wrong to_self_delay data type"),
    (22, "to_self_delay bool", appointment(to_self_delay=True), K.WRONG_FIELD_TYPE, -2,
     "wrong to_self_delay data type"),
    (23, "to_self_delay 19", appointment(to_self_delay=19), K.FIELD_TOO_SMALL, -5,
     "to_self_delay too small"),
    (23, "to_self_delay negative", appointment(to_self_delay=-1), K.FIELD_TOO_SMALL, -5,
     "to_self_delay too small"),
    (24, "to_self_delay 2^32+1", appointment(to_self_delay=2**32 + 1), K.FIELD_TOO_BIG, -6,
     "to_self_delay must fit the transaction nLockTime field"),
    (25, "to_self_delay 2^32", appointment(to_self_delay=2**32), K.FIELD_TOO_BIG, -6,
     "to_self_delay must fit the transaction nLockTime field"),
    (26, "to_self_delay float", appointment(to_self_delay=20.0), K.WRONG_FIELD_TYPE, -2,
     "wrong to_self_delay data type"),
    (27, "blob int", appointment(encrypted_blob=5), K.WRONG_FIELD_TYPE, -2,
     "wrong encrypted_blob data type"),
    (28, "blob non-hex", appointment(encrypted_blob="zz" * 10), K.WRONG_FIELD_FORMAT, -4,
     "wrong encrypted_blob format"),
    (29, "blob empty", appointment(encrypted_blob=""), K.WRONG_FIELD_FORMAT, -4,
     "wrong encrypted_blob format"),
    (30, "blob odd length", appointment(encrypted_blob="abc"), K.WRONG_FIELD_FORMAT, -4,
     "wrong encrypted_blob format"),
    (37, "blob of 4097 bytes over the default 2048", appointment(encrypted_blob="ab" * 4097),
     K.FIELD_TOO_BIG, -6, "encrypted_blob too big"),
    (41, "4.4MB blob", appointment(encrypted_blob="ab" * 2_200_000), K.FIELD_TOO_BIG, -6,
     "encrypted_blob too big"),
]


@pytest.mark.parametrize(
    ("data", "kind", "python_code", "text"),
    [
        pytest.param(data, kind, code, text, id=f"row{row}-{case}")
        for row, case, data, kind, code, text in REJECTED
    ],
)
def test_rejected_appointments(data: object, kind: ErrorKind, python_code: int, text: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(data)
    assert info.value.kind is kind
    assert info.value.code(Dialect.PYTHON) == python_code
    assert text in info.value.message
    assert info.value.message.startswith("appointment rejected. ")
    assert len(info.value.message) < 200  # offending values are quoted short


@pytest.mark.parametrize(
    ("data", "max_blob_size", "slots"),
    [
        pytest.param(appointment(), 2048, 1, id="row35-valid"),
        pytest.param(appointment(encrypted_blob="ab" * 4097), 4097, 3, id="row37-4097-byte-blob-if-allowed"),
        pytest.param(appointment(to_self_delay=2**32 - 1), 2048, 1, id="row39-to_self_delay-2^32-1"),
        pytest.param(appointment(extra="field", another=[1]), 2048, 1, id="row40-extra-fields-ignored"),
        pytest.param(appointment(encrypted_blob="AB" * 10), 2048, 1, id="upper-case-blob-hex"),
        pytest.param(appointment(encrypted_blob="ab" * 2048), 2048, 1, id="blob-exactly-max"),
        pytest.param(appointment(to_self_delay=MIN_DELAY), 2048, 1, id="to_self_delay-exactly-min"),
    ],
)
def test_accepted_appointments(data: dict[str, Any], max_blob_size: int, slots: int) -> None:
    parsed = parse(data, max_blob_size=max_blob_size)
    assert parsed.locator == Locator.from_hex(data["locator"])
    assert parsed.encrypted_blob == bytes.fromhex(data["encrypted_blob"])
    assert parsed.to_self_delay == data["to_self_delay"]
    assert parsed.slots == slots


def test_fields_are_checked_in_order() -> None:
    with pytest.raises(RequestError) as info:
        parse({"locator": 1, "to_self_delay": "x", "encrypted_blob": 2})
    assert "locator" in info.value.message
    with pytest.raises(RequestError) as info:
        parse({"locator": "dd" * 16, "to_self_delay": "x", "encrypted_blob": 2})
    assert "to_self_delay" in info.value.message


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, ErrorKind.EMPTY_FIELD),
        (7, ErrorKind.WRONG_FIELD_TYPE),
        ("ab", ErrorKind.WRONG_FIELD_SIZE),
        ("xx" * 16, ErrorKind.WRONG_FIELD_FORMAT),
        ("AB" * 16, ErrorKind.WRONG_FIELD_FORMAT),
        ("ab" * 15 + "a\n", ErrorKind.WRONG_FIELD_FORMAT),
        ("\u0661" * 32, ErrorKind.WRONG_FIELD_FORMAT),  # non-ASCII digits are not hex
    ],
)
def test_parse_locator_rejects(value: object, kind: ErrorKind) -> None:
    with pytest.raises(RequestError) as info:
        parse_locator(value)
    assert info.value.kind is kind
    assert not info.value.message.startswith("appointment rejected")


def test_parse_locator_accepts() -> None:
    assert parse_locator("0f" * 16) == Locator(b"\x0f" * 16)


VALID_PK = crypto.public_key((5).to_bytes(32, "big"))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param(5, id="int"),
        pytest.param(["02" * 33], id="list"),
        pytest.param(VALID_PK.hex()[:-2], id="row4-short"),
        pytest.param(VALID_PK.hex() + "00", id="long"),
        pytest.param("zz" * 33, id="not-hex"),
        pytest.param("04" + VALID_PK.hex()[2:], id="row5-04-prefix"),
        pytest.param("00" + VALID_PK.hex()[2:], id="00-prefix"),
        pytest.param("02" + "00" * 32, id="x-zero-not-on-curve"),
        pytest.param("02" + "ff" * 32, id="x-above-field"),
        pytest.param("04" + "11" * 64, id="uncompressed-length"),
    ],
)
def test_parse_user_id_rejects(value: object) -> None:
    with pytest.raises(RequestError) as info:
        parse_user_id(value)
    assert info.value.kind is ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT
    assert info.value.code(Dialect.PYTHON) == -34
    assert info.value.code(Dialect.RUST) == 5


def test_parse_user_id_accepts_either_case() -> None:
    assert parse_user_id(VALID_PK.hex()) == VALID_PK
    assert parse_user_id(VALID_PK.hex().upper()) == VALID_PK


@pytest.mark.parametrize(
    "value", [None, "", 5, ["sig"], b"sig"], ids=["row31-missing", "empty", "int", "list", "bytes"]
)
def test_parse_signature_rejects(value: object) -> None:
    with pytest.raises(RequestError) as info:
        parse_signature(value)
    assert info.value.kind is ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION
    assert info.value.code(Dialect.PYTHON) == -8
    assert info.value.code(Dialect.RUST) == 7


def test_row32_garbage_signature_passes_parsing_but_does_not_recover() -> None:
    assert parse_signature("garbage") == "garbage"
    with pytest.raises(crypto.InvalidSignature):
        crypto.recover_public_key(b"anything", "garbage")


def test_row34_signature_over_other_data_does_not_verify() -> None:
    secret_key = (9).to_bytes(32, "big")
    user = crypto.public_key(secret_key)
    signed = parse(appointment()).serialize()
    signature = crypto.sign(signed, secret_key)
    other = parse(appointment(to_self_delay=21)).serialize()
    assert crypto.verify(signed, signature, user)
    assert not crypto.verify(other, signature, user)


# ---- properties -------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["locator", "encrypted_blob", "to_self_delay"])
hex_like = st.text(alphabet="0123456789abcdefABCDEFxyz \n", max_size=80)
field_values = json_values | hex_like | st.integers(min_value=-5, max_value=2**33) | st.just(2**32)


def _check_result(data: object, max_blob_size: int = 2048) -> None:
    try:
        result = parse(data, max_blob_size=max_blob_size)
    except RequestError as error:
        assert isinstance(error.kind, ErrorKind)
        assert isinstance(error.message, str) and error.message
        return
    assert isinstance(data, dict)
    assert isinstance(result, Appointment)
    assert result.to_json() == {key: data[key] for key in ("locator", "encrypted_blob", "to_self_delay")} | {
        "encrypted_blob": data["encrypted_blob"].lower()
    }
    assert MIN_DELAY <= result.to_self_delay <= 2**32 - 1
    assert 0 < len(result.encrypted_blob) <= max_blob_size


@settings(max_examples=300)
@given(json_values)
def test_parse_appointment_on_arbitrary_json(data: object) -> None:
    _check_result(data)


@settings(max_examples=300)
@given(st.dictionaries(field_names | st.text(max_size=5), field_values, max_size=5))
def test_parse_appointment_on_dicts_with_the_field_names(data: dict[str, object]) -> None:
    _check_result(data)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(field_names, st.one_of(st.just(MISSING), field_values)),
        min_size=1,
        max_size=3,
    ),
    st.integers(min_value=1, max_value=200),
)
def test_parse_appointment_on_mutated_valid_appointments(
    mutations: list[tuple[str, object]], max_blob_size: int
) -> None:
    data = dict(VALID)
    for key, value in mutations:
        if value is MISSING:
            data.pop(key, None)
        else:
            data[key] = value
    _check_result(data, max_blob_size)


@settings(max_examples=300)
@given(json_values | hex_like)
def test_parse_locator_user_id_signature_on_arbitrary_json(value: object) -> None:
    for parser in (parse_locator, parse_user_id, parse_signature):
        try:
            parser(value)
        except RequestError:
            pass


@settings(max_examples=200)
@given(st.sampled_from(["02", "03"]), st.binary(min_size=32, max_size=32))
def test_parse_user_id_on_random_x_coordinates(prefix: str, x: bytes) -> None:
    try:
        user = parse_user_id(prefix + x.hex())
    except RequestError as error:
        assert error.kind is ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT
        return
    assert isinstance(user, UserId)
    assert user.raw == bytes.fromhex(prefix) + x
