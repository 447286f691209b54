"""Hashes, the appointment blob cipher and Lightning ``signmessage`` signatures.

Everything here is a pure function over bytes, shared by the tower and any client:

- ``encrypt``/``decrypt``: ChaCha20-Poly1305 with a 12-byte all-zero nonce and no associated data; the key
  is SHA256 of the dispute txid in the byte order of the user's dialect (see ``common.dialects``). The zero
  nonce is safe because each key (one per dispute txid) encrypts one penalty transaction.
- ``sign``/``recover_public_key``/``verify``: the Lightning message format, a 65-byte recoverable ECDSA
  signature ``[31 + recid] || r || s`` over ``sha256d("Lightning Signed Message:" || message)``, written in
  z-base-32. Signing is RFC6979-deterministic (libsecp256k1 via coincurve), so a given key and message
  always give the same text.
"""

from __future__ import annotations

import functools
import hashlib

from coincurve import PrivateKey, PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from common import zbase32
from common.dialects import blob_key
from common.ripemd160 import ripemd160 as _ripemd160_pure
from common.types import Dialect, Txid, UserId

SIGNED_MESSAGE_PREFIX = b"Lightning Signed Message:"
NONCE = bytes(12)
TAG_SIZE = 16
SIGNATURE_SIZE = 65
SIGNATURE_CHARS = 104  # z-base-32 characters of a 65-byte signature (520 bits, no padding)
# Header byte of a signature by a compressed key: 31 + recid (recid 0..3). python-teos and rust-teos
# both accept exactly this range (27..30, the uncompressed-key flags, are refused as they are there).
_HEADER_BASE = 31


class DecryptionError(ValueError):
    """The blob does not decrypt with the key derived from the given txid (or is too short to)."""


class InvalidSignature(ValueError):
    """The text is not a z-base-32 recoverable signature from which a public key can be recovered."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256d(data: bytes) -> bytes:
    """SHA256 applied twice, as Bitcoin and Lightning use it."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _hashlib_has_ripemd160() -> bool:
    try:
        hashlib.new("ripemd160", b"")
    except ValueError:
        return False
    return True


_HASHLIB_RIPEMD160 = _hashlib_has_ripemd160()


def ripemd160(data: bytes) -> bytes:
    """RIPEMD-160 from hashlib when OpenSSL provides it, else the pure-Python implementation."""
    if _HASHLIB_RIPEMD160:
        return hashlib.new("ripemd160", data).digest()
    return _ripemd160_pure(data)


def encrypt(plaintext: bytes, txid: Txid, dialect: Dialect) -> bytes:
    """Encrypts a penalty transaction into an appointment's ``encrypted_blob`` (ciphertext || 16-byte tag)."""
    return ChaCha20Poly1305(blob_key(txid, dialect)).encrypt(NONCE, plaintext, None)


def decrypt(encrypted_blob: bytes, txid: Txid, dialect: Dialect) -> bytes:
    """Decrypts an ``encrypted_blob`` with the key of ``txid``; raises DecryptionError on any failure."""
    if len(encrypted_blob) < TAG_SIZE:
        raise DecryptionError(f"encrypted blob too short ({len(encrypted_blob)} bytes)")
    try:
        return ChaCha20Poly1305(blob_key(txid, dialect)).decrypt(NONCE, encrypted_blob, None)
    except (InvalidTag, ValueError, TypeError) as exc:
        raise DecryptionError("encrypted blob does not decrypt with the given txid") from exc


def generate_secret_key() -> bytes:
    """A fresh random 32-byte secp256k1 secret key (a scalar in [1, n-1])."""
    return bytes(PrivateKey().secret)


def _private_key(secret_key: bytes) -> PrivateKey:
    """A coincurve key for exactly 32 bytes encoding a scalar in [1, n-1]; ValueError otherwise."""
    if not isinstance(secret_key, bytes) or len(secret_key) != 32:
        raise ValueError("a secret key is 32 bytes")
    return _cached_private_key(secret_key)


@functools.lru_cache(maxsize=64)
def _cached_private_key(secret_key: bytes) -> PrivateKey:
    # Building a PrivateKey derives its public keys (two point multiplications); the tower signs every
    # receipt with the same key, so keep the few recently used ones (coincurve keys are immutable).
    return PrivateKey(secret_key)


def public_key(secret_key: bytes) -> UserId:
    """The compressed public key of ``secret_key``; raises ValueError if it is not a valid scalar."""
    return UserId(_private_key(secret_key).public_key.format(compressed=True))


def _message_digest(message: bytes) -> bytes:
    return sha256d(SIGNED_MESSAGE_PREFIX + message)


def sign(message: bytes, secret_key: bytes) -> str:
    """Signs ``message`` the way Lightning's ``signmessage`` does and returns the z-base-32 text."""
    compact = _private_key(secret_key).sign_recoverable(_message_digest(message), hasher=None)
    # coincurve gives r || s || recid; Lightning puts the header byte first.
    return zbase32.encode(bytes([_HEADER_BASE + compact[64]]) + compact[:64])


def recover_public_key(message: bytes, signature: str) -> UserId:
    """Recovers the (compressed) key that signed ``message``; raises InvalidSignature for anything else.

    Any input at all (wrong type, bad characters, wrong length, bad header byte, r or s out of range, a
    point that does not recover) ends in InvalidSignature and never in another exception, since this runs
    on untrusted request data.
    """
    if not isinstance(signature, str):
        raise InvalidSignature("signature must be a z-base-32 string")
    if len(signature) != SIGNATURE_CHARS:  # checked before any decoding: the text is untrusted
        raise InvalidSignature(
            f"signature must be {SIGNATURE_CHARS} z-base-32 characters ({SIGNATURE_SIZE} bytes), "
            f"got {len(signature)}"
        )
    try:
        raw = zbase32.decode(signature)
    except ValueError as exc:
        raise InvalidSignature(f"signature is not z-base-32: {exc}") from None
    recid = raw[0] - _HEADER_BASE
    if not 0 <= recid <= 3:
        raise InvalidSignature(f"invalid signature header byte {raw[0]}")
    try:
        point = PublicKey.from_signature_and_message(
            raw[1:] + bytes([recid]), _message_digest(message), hasher=None
        )
        return UserId(point.format(compressed=True))
    except Exception as exc:  # libsecp256k1 refusals surface as assorted exception types
        raise InvalidSignature("no public key recovers from this signature") from exc


def verify(message: bytes, signature: str, public_key: UserId) -> bool:
    """True iff ``signature`` is a valid signature of ``message`` by ``public_key``."""
    try:
        return recover_public_key(message, signature) == public_key
    except InvalidSignature:
        return False
