"""The operator's payment settings, validated once, and the terms the tower publishes from them."""

from __future__ import annotations

from dataclasses import dataclass

from common.channel import MAX_EXPIRY, MAX_FEE_RATE
from common.channel_wire import PaymentTerms

U32_MAX = 2**32 - 1


# What each setting must be, in words (the error says it; teos.config names the option).
CONSTRAINTS = {
    "price": "0 (free) to 2,100,000,000,000,000 sat",
    "min_funding_confirmations": "1 to 1000",
    "min_blocks_before_expiry": "at least 1",
    "max_channel_blocks": "at least the minimum blocks before expiry, below 500,000,000",
    "fee_rate": "100 to 1,000,000 sat per 1000 vbytes",
    "claim_margin": "at least 1 and below the minimum blocks before expiry",
    "rebroadcast_blocks": "1 to 1000",
    "bump_margin": "0 to the claim margin",
    "max_bump_fee_rate": "the fee rate to 1,000,000 sat per 1000 vbytes",
    "claim_confirmations": "1 to 10000",
    "max_unpaid_channels": "1 to 1,000,000",
}


class PaymentConfigError(ValueError):
    """Settings that do not fit together; ``fields`` names them."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        super().__init__(
            "invalid payment settings: " + "; ".join(f"{name} must be {CONSTRAINTS[name]}" for name in fields)
        )


@dataclass(frozen=True)
class PaymentConfig:
    """Payment policy. ``price == 0`` (the default) is a free tower: no payment endpoint is needed and
    ``register`` works as it always has.

    Heights are in blocks. A payment is accepted only while ``expiry - tip >= min_blocks_before_expiry``;
    the tower claims once ``expiry - tip <= claim_margin``, which must be smaller, so that every payment is
    accepted before the claim is decided and no payment lands after it (the claim freezes the amount).
    A channel's expiry may be at most ``max_channel_blocks`` above the tip when it opens.

    Claims (teos.payments.claims): rebroadcast every ``rebroadcast_blocks`` blocks while unconfirmed, and
    every block once ``expiry - tip <= bump_margin``, where each block also raises the fee through a child
    paying from the tower's output (CPFP), up to ``max_bump_fee_rate``; done at ``claim_confirmations``.

    ``max_unpaid_channels`` bounds the OPEN channels without a payment yet: each is looked at every block
    until it expires, so an opener with many small outputs must not grow that work without bound.
    """

    price: int = 0  # satoshis per registration
    min_funding_confirmations: int = 3
    min_blocks_before_expiry: int = 288
    max_channel_blocks: int = 52_560
    fee_rate: int = 2_000  # sat per 1000 vbytes of every payment transaction
    claim_margin: int = 144
    rebroadcast_blocks: int = 3
    bump_margin: int = 36
    max_bump_fee_rate: int = 100_000
    claim_confirmations: int = 100
    max_unpaid_channels: int = 10_000

    def __post_init__(self) -> None:
        checks = {
            "price": 0 <= self.price <= 21_000_000 * 100_000_000,
            "min_funding_confirmations": 1 <= self.min_funding_confirmations <= 1_000,
            "min_blocks_before_expiry": 1 <= self.min_blocks_before_expiry <= U32_MAX,
            "max_channel_blocks": self.min_blocks_before_expiry <= self.max_channel_blocks <= MAX_EXPIRY,
            "fee_rate": 100 <= self.fee_rate <= MAX_FEE_RATE,
            "claim_margin": 1 <= self.claim_margin < self.min_blocks_before_expiry,
            "rebroadcast_blocks": 1 <= self.rebroadcast_blocks <= 1_000,
            "bump_margin": 0 <= self.bump_margin <= self.claim_margin,
            "max_bump_fee_rate": self.fee_rate <= self.max_bump_fee_rate <= MAX_FEE_RATE,
            "claim_confirmations": 1 <= self.claim_confirmations <= 10_000,
            "max_unpaid_channels": 1 <= self.max_unpaid_channels <= 1_000_000,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise PaymentConfigError(bad)

    @property
    def paid(self) -> bool:
        return self.price > 0

    def terms(
        self, tower_key: bytes, subscription_slots: int, subscription_duration: int, network: str
    ) -> PaymentTerms:
        return PaymentTerms(
            tower_key=tower_key,
            price=self.price,
            subscription_slots=subscription_slots,
            subscription_duration=subscription_duration,
            min_funding_confirmations=self.min_funding_confirmations,
            min_blocks_before_expiry=self.min_blocks_before_expiry,
            max_channel_blocks=self.max_channel_blocks,
            fee_rate=self.fee_rate,
            claim_margin=self.claim_margin,
            network=network,
        )
