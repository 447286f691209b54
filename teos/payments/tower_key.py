"""The tower's payment key: co-signs claims and is paid to. Derived from the tower key, so the datadir
holds no new secret to back up, and kept apart from it, so a claim never uses the identity key."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from coincurve import PrivateKey

from common.payment_key import DERIVATION_TAG, derive_payment_secret


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


__all__ = ["DERIVATION_TAG", "TowerPaymentKey", "derive_payment_secret"]
