"""Value types for the identifiers a client and the tower exchange.

Inside the code these are the only representation of locators, txids, user ids and uuids; hex strings
appear only at the JSON edge and in logs. Every type is an immutable wrapper around its raw bytes, is
hashable and orders by its bytes (so sorted lookups in LevelDB are cheap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Self


class Dialect(Enum):
    """The two families of clients in the wild; a user's dialect is fixed when they register."""

    PYTHON = "python"  # python-teos: teos_client and its Core Lightning plugin
    RUST = "rust"  # rust-teos: the maintained watchtower-client plugin

    @property
    def code(self) -> int:
        """One byte for storage."""
        return 0 if self is Dialect.PYTHON else 1

    @classmethod
    def from_code(cls, code: int) -> Dialect:
        if code == 0:
            return cls.PYTHON
        if code == 1:
            return cls.RUST
        raise ValueError(f"unknown dialect code {code}")


@dataclass(frozen=True, order=True, slots=True)
class _FixedBytes:
    """Base for fixed-length byte identifiers. Subclasses set SIZE."""

    raw: bytes
    SIZE: ClassVar[int] = 0

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != self.SIZE:
            raise ValueError(f"{type(self).__name__} must be {self.SIZE} bytes")

    @classmethod
    def from_hex(cls, value: str) -> Self:
        """Parses lower- or upper-case hex; raises ValueError on anything else."""
        if not isinstance(value, str) or len(value) != 2 * cls.SIZE:
            raise ValueError(f"{cls.__name__} must be {2 * cls.SIZE} hex characters")
        return cls(bytes.fromhex(value))

    def hex(self) -> str:
        return self.raw.hex()

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

    def __bytes__(self) -> bytes:
        return self.raw


@dataclass(frozen=True, order=True, slots=True, repr=False)
class Locator(_FixedBytes):
    """16 bytes derived from a dispute txid (byte order depends on the dialect, see common.dialects)."""

    SIZE: ClassVar[int] = 16


@dataclass(frozen=True, order=True, slots=True, repr=False)
class UserId(_FixedBytes):
    """A compressed secp256k1 public key (33 bytes)."""

    SIZE: ClassVar[int] = 33

    def __post_init__(self) -> None:
        _FixedBytes.__post_init__(self)
        if self.raw[0] not in (2, 3):
            raise ValueError("UserId must be a compressed public key (02 or 03 prefix)")


@dataclass(frozen=True, order=True, slots=True, repr=False)
class Uuid(_FixedBytes):
    """RIPEMD160(locator || user_id): identifies one user's appointment for one locator."""

    SIZE: ClassVar[int] = 20


@dataclass(frozen=True, order=True, slots=True, repr=False)
class Txid(_FixedBytes):
    """A transaction id.

    ``raw`` holds the 32 bytes in Bitcoin's *internal* order (the double-SHA256 output as computed).
    ``hex()`` / ``from_hex()`` use the *display* order that RPC and JSON use (the bytes reversed), as
    every txid in JSON is display hex in both dialects.
    """

    SIZE: ClassVar[int] = 32

    @classmethod
    def from_hex(cls, value: str) -> Self:
        if not isinstance(value, str) or len(value) != 64:
            raise ValueError("Txid must be 64 hex characters")
        return cls(bytes.fromhex(value)[::-1])

    @classmethod
    def from_display_bytes(cls, display: bytes) -> Self:
        return cls(bytes(display)[::-1])

    @classmethod
    def many_from_hex(cls, values: Sequence[str]) -> tuple[Self, ...]:
        """``tuple(Txid.from_hex(v) for v in values)``, for a block's thousands of txids at once: one hex
        decode and one reversal for all of them, and each object made without checking again the 32 bytes
        it is given. Raises ValueError like ``from_hex`` on any bad value."""
        try:
            joined = "".join(values)
        except TypeError:
            raise ValueError("Txid must be 64 hex characters") from None
        if values and set(map(len, values)) != {64}:
            raise ValueError("Txid must be 64 hex characters")
        raw = bytes.fromhex(joined)[::-1]  # each txid in internal order, the last one first
        if len(raw) != 32 * len(values):  # fromhex skips whitespace
            raise ValueError("Txid must be 64 hex characters")
        new, assign = object.__new__, object.__setattr__
        out = []
        for end in range(len(raw), 0, -32):
            txid = new(cls)
            assign(txid, "raw", raw[end - 32 : end])
            out.append(txid)
        return tuple(out)

    @property
    def internal(self) -> bytes:
        return self.raw

    @property
    def display(self) -> bytes:
        """The bytes in the order they are shown (what ``bytes.fromhex(txid_hex)`` gives)."""
        return self.raw[::-1]

    def hex(self) -> str:
        return self.raw[::-1].hex()


@dataclass(frozen=True, order=True, slots=True, repr=False)
class BlockHash(Txid):
    """A block hash; same byte-order conventions as Txid."""
