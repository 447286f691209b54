"""The signed messages' exact bytes (written out by hand from the layout table) and the JSON parsers."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import channel, crypto
from common.channel_wire import (
    OpenChannelRequest,
    PaymentTerms,
    ack_message,
    get_channel_message,
    make_get_channel_request,
    make_open_request,
    make_pay_request,
    open_message,
    parse_get_channel_request,
    parse_open_request,
    parse_pay_request,
    pay_message,
)
from common.errors import ErrorKind, RequestError
from common.types import Dialect, UserId
from tests.payments.support import (
    CHANGE_SCRIPT,
    FUNDING_TXID,
    TOWER_KEY,
    USER_KEY,
    USER_SECRET,
    make_params,
    user_id,
)

CID_RAW = FUNDING_TXID.raw + b"\x00\x00\x00\x01"


def test_terms_message() -> None:
    terms = PaymentTerms(TOWER_KEY, 5000, 10000, 4320, 3, 288, 52560, 2000, 144, "regtest")
    expected = (
        b"teos-terms-v1"
        + TOWER_KEY
        + (5000).to_bytes(8, "big")
        + bytes.fromhex("00002710000010e000000003000001200000cd50000007d000000090")
        + b"\x07regtest"
    )
    assert terms.message() == expected
    assert PaymentTerms.from_json(terms.to_json()) == terms


def test_open_message() -> None:
    params = make_params(value=1_000_000, expiry=500, fee_rate=2000)
    expected = (
        b"teos-open-channel-v1"
        + CID_RAW
        + bytes.fromhex("00000000000f4240")
        + USER_KEY
        + TOWER_KEY
        + bytes.fromhex("000001f4")
        + bytes.fromhex("000007d0")
        + b"\x00\x16"
        + CHANGE_SCRIPT
    )
    assert open_message(params) == expected


def test_pay_message() -> None:
    params = make_params()
    tx = channel.payment_tx(params, 10_000)
    uid = user_id(1)
    expected = (
        b"teos-pay-v1"
        + CID_RAW
        + bytes.fromhex("00000002")
        + bytes.fromhex("0000000000002710")
        + uid.raw
        + b"\x01"
        + tx.txid.raw
    )
    assert pay_message(params.channel_id, 2, 10_000, uid, Dialect.RUST, tx) == expected
    assert pay_message(params.channel_id, 2, 10_000, uid, Dialect.PYTHON, tx)[-33] == 0


def test_get_channel_and_ack_messages() -> None:
    cid = make_params().channel_id
    assert get_channel_message(cid) == b"teos-get-channel-v1" + CID_RAW
    assert ack_message(cid, 3, 30_000, 500) == (
        b"teos-channel-ack-v1"
        + CID_RAW
        + b"\x00\x00\x00\x03"
        + struct.pack(">Q", 30_000)
        + b"\x00\x00\x01\xf4"
    )


def test_open_request_round_trip_and_signature() -> None:
    params = make_params()
    request = make_open_request(params, USER_SECRET)
    parsed = parse_open_request(request.to_json())
    assert parsed == request
    assert parsed.signed_by_user(TOWER_KEY)
    assert not parsed.signed_by_user(USER_KEY)  # the signature covers the tower's key too
    assert crypto.recover_public_key(open_message(params), request.signature) == UserId(USER_KEY)


@pytest.mark.parametrize("dialect", list(Dialect))
def test_pay_request_round_trip(dialect: Dialect) -> None:
    params = make_params()
    request = make_pay_request(params, 1, 10_000, user_id(3), dialect, USER_SECRET)
    body = request.to_json()
    assert ("public_key" in body) is (dialect is Dialect.PYTHON)
    parsed = parse_pay_request(body)
    assert parsed == request
    assert crypto.verify(parsed.message(), parsed.signature, UserId(USER_KEY))
    assert channel.verify_payment_signature(params, 10_000, parsed.payment_signature)


def test_get_channel_request_round_trip() -> None:
    request = make_get_channel_request(make_params().channel_id, USER_SECRET)
    assert parse_get_channel_request(request.to_json()) == request


def _pay_body() -> dict[str, Any]:
    return make_pay_request(make_params(), 1, 10_000, user_id(3), Dialect.RUST, USER_SECRET).to_json()


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (lambda b: b.pop("nonce"), ErrorKind.MISSING_FIELD),
        (lambda b: b.update(nonce=None), ErrorKind.EMPTY_FIELD),
        (lambda b: b.update(nonce="1"), ErrorKind.WRONG_FIELD_TYPE),
        (lambda b: b.update(nonce=True), ErrorKind.WRONG_FIELD_TYPE),
        (lambda b: b.update(nonce=0), ErrorKind.FIELD_TOO_SMALL),
        (lambda b: b.update(nonce=2**32), ErrorKind.FIELD_TOO_BIG),
        (lambda b: b.update(amount=2**64), ErrorKind.FIELD_TOO_BIG),
        (lambda b: b.update(amount=1.5), ErrorKind.WRONG_FIELD_TYPE),
        (lambda b: b.update(channel_id="nope"), ErrorKind.WRONG_FIELD_FORMAT),
        (lambda b: b.update(channel_id=7), ErrorKind.WRONG_FIELD_TYPE),
        (lambda b: b.update(payment_tx="zz"), ErrorKind.WRONG_FIELD_FORMAT),
        (lambda b: b.update(payment_tx="00" * 401), ErrorKind.FIELD_TOO_BIG),
        (lambda b: b.update(payment_tx="0200"), ErrorKind.WRONG_FIELD_FORMAT),
        (lambda b: b.update(payment_signature="AB" * 70), ErrorKind.WRONG_FIELD_FORMAT),
        (lambda b: b.update(payment_signature="ab" * 74), ErrorKind.FIELD_TOO_BIG),
        (lambda b: b.update(signature="x" * 121), ErrorKind.FIELD_TOO_BIG),
        (lambda b: b.update(signature=[]), ErrorKind.WRONG_FIELD_TYPE),
        (lambda b: b.update(public_key=b["user_id"]), ErrorKind.REGISTRATION_MISSING_FIELD),
        (lambda b: b.pop("user_id"), ErrorKind.REGISTRATION_MISSING_FIELD),
        (lambda b: b.update(user_id="04" + "11" * 32), ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT),
        (lambda b: b.update(user_id=5), ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT),
    ],
)
def test_pay_request_refusals(mutate: Any, kind: ErrorKind) -> None:
    body = _pay_body()
    mutate(body)
    with pytest.raises(RequestError) as info:
        parse_pay_request(body)
    assert info.value.kind is kind


@pytest.mark.parametrize("body", [None, [], "x", 5, {}])
def test_parsers_refuse_non_objects_and_empty_bodies(body: object) -> None:
    for parse in (parse_open_request, parse_pay_request, parse_get_channel_request):
        with pytest.raises(RequestError):
            parse(body)


def test_open_request_refusals() -> None:
    good = make_open_request(make_params(), USER_SECRET).to_json()
    for field, value, kind in [
        ("user_key", "02" + "00" * 31, ErrorKind.WRONG_FIELD_SIZE),
        ("user_key", "05" + "00" * 32, ErrorKind.WRONG_FIELD_SIZE),
        ("change_script", "00" * 35, ErrorKind.FIELD_TOO_BIG),
        ("expiry", 0, ErrorKind.FIELD_TOO_SMALL),
        ("funding_value", -1, ErrorKind.FIELD_TOO_SMALL),
    ]:
        body = dict(good, **{field: value})
        with pytest.raises(RequestError) as info:
            parse_open_request(body)
        assert info.value.kind is kind, field
    assert isinstance(parse_open_request(good), OpenChannelRequest)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=20,
)
FIELDS = [
    "channel_id", "nonce", "amount", "payment_tx", "payment_signature", "user_id", "public_key", "signature",
    "funding_value", "user_key", "expiry", "change_script", "fee_rate",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON | st.text(alphabet="0123456789abcdef:²٣", max_size=80)))
def test_parsers_raise_only_request_errors(body: dict[str, object]) -> None:
    """Hostile bodies (any JSON values in the right field names, odd digits and hex) end in RequestError."""
    good = _pay_body()
    for candidate in (body, {**good, **body}):
        for parse in (parse_open_request, parse_pay_request, parse_get_channel_request):
            try:
                parse(candidate)
            except RequestError:
                pass


@pytest.mark.parametrize("vout", ["²", "٣", "1²", " 1", "+1", "1_0"])
def test_channel_ids_with_odd_digits_are_refused(vout: str) -> None:
    body = dict(_pay_body(), channel_id="ab" * 32 + ":" + vout)
    with pytest.raises(RequestError):
        parse_pay_request(body)
