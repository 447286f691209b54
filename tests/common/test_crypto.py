from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from common import crypto, zbase32
from common.dialects import blob_key, locator_from_txid, txid_bytes
from common.types import Dialect, Txid, UserId

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

txids = st.binary(min_size=32, max_size=32).map(Txid)
dialects = st.sampled_from(list(Dialect))
secret_keys = st.integers(min_value=1, max_value=SECP256K1_ORDER - 1).map(lambda n: n.to_bytes(32, "big"))


def test_hashes() -> None:
    assert crypto.sha256(b"abc") == hashlib.sha256(b"abc").digest()
    assert crypto.sha256d(b"abc") == hashlib.sha256(hashlib.sha256(b"abc").digest()).digest()
    assert crypto.ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"


def test_ripemd160_without_hashlib_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_HASHLIB_RIPEMD160", False)
    assert crypto.ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"


def test_dialect_byte_orders() -> None:
    txid = Txid.from_hex("00" * 31 + "ff")  # display ends in ff, so internal order starts with ff
    assert txid_bytes(txid, Dialect.PYTHON) == bytes.fromhex("00" * 31 + "ff")
    assert txid_bytes(txid, Dialect.RUST) == bytes.fromhex("ff" + "00" * 31)
    assert locator_from_txid(txid, Dialect.PYTHON).raw == bytes(16)
    assert locator_from_txid(txid, Dialect.RUST).raw == b"\xff" + bytes(15)
    assert blob_key(txid, Dialect.PYTHON) == hashlib.sha256(txid.display).digest()
    assert blob_key(txid, Dialect.RUST) == hashlib.sha256(txid.internal).digest()


@settings(max_examples=200)
@given(st.binary(max_size=1000), txids, dialects)
def test_encrypt_decrypt_round_trip(plaintext: bytes, txid: Txid, dialect: Dialect) -> None:
    blob = crypto.encrypt(plaintext, txid, dialect)
    assert len(blob) == len(plaintext) + crypto.TAG_SIZE
    assert crypto.decrypt(blob, txid, dialect) == plaintext


@settings(max_examples=200)
@given(st.binary(max_size=300), txids, txids, dialects)
def test_decrypt_with_wrong_txid_fails(plaintext: bytes, txid: Txid, other: Txid, dialect: Dialect) -> None:
    assume(txid != other)
    blob = crypto.encrypt(plaintext, txid, dialect)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(blob, other, dialect)


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=300), txids)
def test_decrypt_in_the_other_dialect_fails(plaintext: bytes, txid: Txid) -> None:
    assume(txid.display != txid.internal)
    blob = crypto.encrypt(plaintext, txid, Dialect.PYTHON)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(blob, txid, Dialect.RUST)


@settings(max_examples=200)
@given(st.binary(max_size=200), txids, dialects)
def test_decrypt_garbage_raises_only_decryption_error(blob: bytes, txid: Txid, dialect: Dialect) -> None:
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(blob, txid, dialect)


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=300), txids, dialects, st.data())
def test_tampered_blob_fails(plaintext: bytes, txid: Txid, dialect: Dialect, data: st.DataObject) -> None:
    blob = bytearray(crypto.encrypt(plaintext, txid, dialect))
    index = data.draw(st.integers(min_value=0, max_value=len(blob) - 1))
    blob[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(bytes(blob), txid, dialect)


def test_decryption_error_is_value_error() -> None:
    assert issubclass(crypto.DecryptionError, ValueError)
    assert issubclass(crypto.InvalidSignature, ValueError)


def test_generate_secret_key() -> None:
    keys = {crypto.generate_secret_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(key) == 32
        assert 1 <= int.from_bytes(key, "big") < SECP256K1_ORDER
        assert isinstance(crypto.public_key(key), UserId)


@pytest.mark.parametrize("bad", [bytes(32), SECP256K1_ORDER.to_bytes(32, "big"), b"\x01" * 31])
def test_invalid_secret_key_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        crypto.public_key(bad)
    with pytest.raises(ValueError):
        crypto.sign(b"msg", bad)


@settings(max_examples=100)
@given(st.binary(max_size=300), secret_keys)
def test_sign_recover_round_trip(message: bytes, secret_key: bytes) -> None:
    signature = crypto.sign(message, secret_key)
    assert len(signature) == 104
    raw = zbase32.decode(signature)
    assert len(raw) == 65 and 31 <= raw[0] <= 34
    assert crypto.sign(message, secret_key) == signature  # RFC6979: deterministic
    pk = crypto.public_key(secret_key)
    assert crypto.recover_public_key(message, signature) == pk
    assert crypto.verify(message, signature, pk)


@settings(max_examples=100)
@given(st.binary(max_size=100), st.binary(max_size=100), secret_keys)
def test_signature_over_other_message_recovers_other_key(
    message: bytes, other: bytes, secret_key: bytes
) -> None:
    assume(message != other)
    signature = crypto.sign(message, secret_key)
    pk = crypto.public_key(secret_key)
    assert not crypto.verify(other, signature, pk)
    try:
        assert crypto.recover_public_key(other, signature) != pk
    except crypto.InvalidSignature:
        pass


def _recover_or_invalid(message: bytes, signature: object) -> None:
    try:
        result = crypto.recover_public_key(message, signature)  # type: ignore[arg-type]
    except crypto.InvalidSignature:
        return
    assert isinstance(result, UserId)


@settings(max_examples=300)
@given(st.binary(max_size=50), st.text(max_size=150))
def test_recover_arbitrary_text_only_raises_invalid_signature(message: bytes, text: str) -> None:
    _recover_or_invalid(message, text)


@settings(max_examples=300)
@given(st.binary(max_size=50), st.text(alphabet=zbase32.ALPHABET, min_size=100, max_size=108))
def test_recover_alphabet_text_only_raises_invalid_signature(message: bytes, text: str) -> None:
    _recover_or_invalid(message, text)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=50),
    st.integers(min_value=0, max_value=255),
    st.one_of(
        st.binary(min_size=64, max_size=64),
        st.sampled_from([bytes(64), b"\xff" * 64, bytes(32) + b"\x01" * 32, b"\x01" * 32 + bytes(32)]),
    ),
)
def test_recover_arbitrary_65_bytes_only_raises_invalid_signature(
    message: bytes, header: int, rs: bytes
) -> None:
    _recover_or_invalid(message, zbase32.encode(bytes([header]) + rs))


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["list"], ""])
def test_recover_non_text(value: object) -> None:
    with pytest.raises(crypto.InvalidSignature):
        crypto.recover_public_key(b"msg", value)  # type: ignore[arg-type]


def test_recover_rejects_bad_header_and_length() -> None:
    secret_key = (7).to_bytes(32, "big")
    raw = zbase32.decode(crypto.sign(b"msg", secret_key))
    for header in (0, 27, 30, 35, 255):
        with pytest.raises(crypto.InvalidSignature, match="header"):
            crypto.recover_public_key(b"msg", zbase32.encode(bytes([header]) + raw[1:]))
    with pytest.raises(crypto.InvalidSignature, match="65 bytes"):
        crypto.recover_public_key(b"msg", zbase32.encode(raw[:64]))
    with pytest.raises(crypto.InvalidSignature, match="65 bytes"):
        crypto.recover_public_key(b"msg", zbase32.encode(raw + b"\x00"))
