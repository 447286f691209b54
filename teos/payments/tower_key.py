"""The tower's payment key: co-signs claims and is paid to. Derived from the tower key, so the datadir
holds no new secret to back up, and kept apart from it, so a claim never uses the identity key."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from coincurve import PrivateKey

from common.tx import sha256

DERIVATION_TAG = b"teos/payment-key/v1"


def derive_payment_secret(tower_secret: bytes) -> bytes:
    """``SHA256("teos/payment-key/v1" || tower_secret)``, a valid secp256k1 scalar (checked)."""
    if not isinstance(tower_secret, bytes) or len(tower_secret) != 32:
        raise ValueError("the tower secret is 32 bytes")
    secret = sha256(DERIVATION_TAG + tower_secret)
    PrivateKey(secret)  # raises for the (2^-128 likely) out-of-range scalar
    return secret


@dataclass(frozen=True)
class TowerPaymentKey:
    secret: bytes

    @classmethod
    def from_tower_secret(cls, tower_secret: bytes) -> TowerPaymentKey:
        return cls(derive_payment_secret(tower_secret))

    @cached_property
    def public_key(self) -> bytes:
        return PrivateKey(self.secret).public_key.format(compressed=True)

    def __repr__(self) -> str:  # never print the secret
        return f"TowerPaymentKey({self.public_key.hex()})"
