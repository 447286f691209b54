"""The appointment: what a user hands the tower, the bytes they sign, its uuid and its slot cost.

One appointment is ``{locator, encrypted_blob, to_self_delay}``; both dialects agree on it. The user
signs ``locator || encrypted_blob || to_self_delay (u32 big-endian)``. Its uuid,
``RIPEMD160(locator || user_id)``, makes "same user, same locator" an update of one record. It costs one
slot per started 2048 bytes of blob.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from common.crypto import ripemd160
from common.types import Locator, UserId, Uuid

SLOT_SIZE = 2048
MAX_BLOB_SIZE = 2048
MAX_TO_SELF_DELAY = 2**32 - 1


def slots_for(blob_len: int) -> int:
    """Slots a blob of ``blob_len`` bytes costs: ``ceil(blob_len / SLOT_SIZE)`` (0 only for an empty blob)."""
    if blob_len < 0:
        raise ValueError("blob length cannot be negative")
    return -(-blob_len // SLOT_SIZE)


def compute_uuid(locator: Locator, user_id: UserId) -> Uuid:
    """The id of ``user_id``'s appointment for ``locator``."""
    return Uuid(ripemd160(locator.raw + user_id.raw))


@dataclass(frozen=True, slots=True)
class Appointment:
    """A validated appointment (see ``common.validation.parse_appointment`` for the JSON side)."""

    locator: Locator
    encrypted_blob: bytes
    to_self_delay: int

    def __post_init__(self) -> None:
        if not isinstance(self.locator, Locator):
            raise ValueError("locator must be a Locator")
        if not isinstance(self.encrypted_blob, bytes):
            raise ValueError("encrypted_blob must be bytes")
        if (
            not isinstance(self.to_self_delay, int)
            or isinstance(self.to_self_delay, bool)
            or not 0 <= self.to_self_delay <= MAX_TO_SELF_DELAY
        ):
            raise ValueError("to_self_delay must be an integer in [0, 2**32 - 1]")

    def serialize(self) -> bytes:
        """The bytes the user signs: ``locator || encrypted_blob || to_self_delay (u32 big-endian)``."""
        return self.locator.raw + self.encrypted_blob + struct.pack(">I", self.to_self_delay)

    @property
    def slots(self) -> int:
        """Slots this appointment costs."""
        return slots_for(len(self.encrypted_blob))

    def to_json(self) -> dict[str, object]:
        """The JSON form both dialects use on the wire."""
        return {
            "locator": self.locator.hex(),
            "encrypted_blob": self.encrypted_blob.hex(),
            "to_self_delay": self.to_self_delay,
        }
