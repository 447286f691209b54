"""Segwit v0 signatures: the BIP143 signature hash, strict DER encoding, signing and verification.

A client and the tower both sign and check spends of segwit v0 outputs (the regtest wallet's P2WPKH and
P2WSH coins, a payment channel's funding output), so the one implementation lives here:

- ``bip143_sighash``: the digest a segwit v0 input's signature commits to, for every hash type
  (``version | hashPrevouts | hashSequence | outpoint | scriptCode | amount | nSequence | hashOutputs |
  nLockTime | nHashType``, integers little-endian, hashes double-SHA256).
- ``sign``: a low-S DER signature (RFC6979 nonces through libsecp256k1) followed by the hash-type byte, as
  it goes in a witness.
- ``check_signature_encoding`` and ``verify``: what Bitcoin Core's standardness rules demand of a witness
  signature (BIP66 strict DER, low S, a known hash type) and whether it signs a digest for a key. These run
  on untrusted bytes and never raise anything but :class:`SignatureEncodingError` for a bad encoding.
"""

from __future__ import annotations

import struct

from coincurve import PrivateKey, PublicKey

from common.tx import Transaction, ser_bytes, sha256d

SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80
_KNOWN_HASH_TYPES = {1, 2, 3, 0x81, 0x82, 0x83}
# secp256k1's group order, and half of it: a signature's S must not exceed the half (BIP62 low S).
_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_ORDER = _ORDER // 2
MAX_SIGNATURE_SIZE = 73  # the largest DER signature (72 bytes) plus the hash-type byte


class SignatureEncodingError(ValueError):
    """The bytes are not a strictly encoded, low-S signature with a known hash type."""


def bip143_sighash(
    tx: Transaction, index: int, script_code: bytes, amount: int, hashtype: int = SIGHASH_ALL
) -> bytes:
    """The BIP143 (segwit v0) signature hash of input ``index`` spending ``amount`` satoshis.

    ``script_code`` is the witness script for P2WSH, or ``OP_DUP OP_HASH160 <20> OP_EQUALVERIFY
    OP_CHECKSIG`` for P2WPKH. SINGLE with no output at ``index`` hashes 32 zero bytes for the outputs, as
    BIP143 says (no "one" bug in segwit v0).
    """
    if not 0 <= index < len(tx.inputs):
        raise IndexError(f"input {index} out of range")
    base = hashtype & 0x1F
    anyone_can_pay = bool(hashtype & SIGHASH_ANYONECANPAY)
    zero = bytes(32)
    hash_prevouts = zero
    hash_sequence = zero
    hash_outputs = zero
    if not anyone_can_pay:
        hash_prevouts = sha256d(b"".join(i.prev_txid.raw + struct.pack("<I", i.prev_vout) for i in tx.inputs))
        if base not in (SIGHASH_SINGLE, SIGHASH_NONE):
            hash_sequence = sha256d(b"".join(struct.pack("<I", i.sequence) for i in tx.inputs))
    if base not in (SIGHASH_SINGLE, SIGHASH_NONE):
        hash_outputs = sha256d(b"".join(o.serialize() for o in tx.outputs))
    elif base == SIGHASH_SINGLE and index < len(tx.outputs):
        hash_outputs = sha256d(tx.outputs[index].serialize())
    txin = tx.inputs[index]
    preimage = b"".join(
        [
            struct.pack("<i", tx.version),
            hash_prevouts,
            hash_sequence,
            txin.prev_txid.raw,
            struct.pack("<I", txin.prev_vout),
            ser_bytes(script_code),
            struct.pack("<q", amount),
            struct.pack("<I", txin.sequence),
            hash_outputs,
            struct.pack("<I", tx.locktime),
            struct.pack("<I", hashtype),
        ]
    )
    return sha256d(preimage)


def sign(secret_key: bytes, digest: bytes, hashtype: int = SIGHASH_ALL) -> bytes:
    """A witness signature: low-S DER over ``digest`` (deterministic nonce) plus the hash-type byte."""
    return PrivateKey(secret_key).sign(digest, hasher=None) + bytes([hashtype])


def check_signature_encoding(signature: bytes) -> tuple[bytes, int]:
    """Splits a witness signature into (DER, hash type) after Core's policy checks.

    Refuses anything but BIP66 strict DER (``30 len 02 rlen R 02 slen S`` with minimal, positive integers),
    an S above half the group order (malleable), and unknown hash types.
    """
    if not isinstance(signature, (bytes, bytearray)):
        raise SignatureEncodingError("signature must be bytes")
    sig = bytes(signature)
    if not 9 <= len(sig) <= MAX_SIGNATURE_SIZE:
        raise SignatureEncodingError(f"signature of {len(sig)} bytes")
    der, hashtype = sig[:-1], sig[-1]
    if hashtype not in _KNOWN_HASH_TYPES:
        raise SignatureEncodingError(f"unknown hash type {hashtype:#04x}")
    if der[0] != 0x30 or der[1] != len(der) - 2:
        raise SignatureEncodingError("not a DER sequence of the right length")
    r_len = der[3]
    if der[2] != 0x02 or 5 + r_len >= len(der):
        raise SignatureEncodingError("bad R element")
    s_len = der[5 + r_len]
    if der[4 + r_len] != 0x02 or r_len + s_len + 6 != len(der):
        raise SignatureEncodingError("bad S element")
    r = der[4 : 4 + r_len]
    s = der[6 + r_len :]
    for name, value in (("R", r), ("S", s)):
        if not value:
            raise SignatureEncodingError(f"empty {name}")
        if value[0] & 0x80:
            raise SignatureEncodingError(f"negative {name}")
        if len(value) > 1 and value[0] == 0 and not value[1] & 0x80:
            raise SignatureEncodingError(f"non-minimal {name}")
    s_value = int.from_bytes(s, "big")
    if s_value == 0 or s_value > _HALF_ORDER:
        raise SignatureEncodingError("S is not low")
    return der, hashtype


def verify(public_key: bytes, signature: bytes, digest: bytes) -> bool:
    """True iff ``signature`` (DER plus hash-type byte, policy-clean) signs ``digest`` for ``public_key``.

    The caller decides which hash types it accepts; it computed ``digest`` with the type it expects.
    """
    try:
        der, _ = check_signature_encoding(signature)
        return bool(PublicKey(public_key).verify(der, digest, hasher=None))
    except (SignatureEncodingError, ValueError, TypeError):
        return False
    except Exception:  # libsecp256k1 refusals of odd points surface as assorted exception types
        return False
