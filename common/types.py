"""Value types for the identifiers a client and the tower exchange.

Inside the code these are the only representation of locators, txids, user ids and uuids; hex strings
appear only at the JSON edge and in logs. Every type is an immutable wrapper around its raw bytes, is
hashable and orders by its bytes (so sorted lookups in LevelDB are cheap).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Self, overload


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


class Txids(Sequence[Txid]):
    """A block's txids, held as one bytes object: 32 bytes each in internal order, the last txid first (the
    whole list's hex decoded and reversed at once). A ``Txid`` is made only for the txids asked for; the
    Watcher slices locators from ``raw_txids()`` directly. A 4000-tx block from bitcoind is then parsed in
    well under a millisecond, where 4000 ``Txid`` objects cost one or two."""

    __slots__ = ("_reversed",)

    def __init__(self, reversed_raw: bytes) -> None:
        if len(reversed_raw) % 32:
            raise ValueError("txids are 32 bytes each")
        self._reversed = reversed_raw

    @classmethod
    def from_hex(cls, values: Sequence[str]) -> Txids:
        """The txids of ``values`` (display-order hex, as bitcoind sends them); ValueError like
        ``Txid.from_hex`` on any bad one."""
        try:
            joined = "".join(values)
        except TypeError:
            raise ValueError("Txid must be 64 hex characters") from None
        if values and set(map(len, values)) != {64}:
            raise ValueError("Txid must be 64 hex characters")
        raw = bytes.fromhex(joined)
        if len(raw) != 32 * len(values):  # fromhex skips whitespace
            raise ValueError("Txid must be 64 hex characters")
        return cls(raw[::-1])

    @classmethod
    def from_raw(cls, txids: Iterable[bytes]) -> Txids:
        """From each txid's 32 bytes in internal order (``Txid.raw``)."""
        return cls(b"".join(reversed(list(txids))))

    def raw_txids(self) -> list[bytes]:
        """Each txid's 32 bytes in internal order, in block order."""
        raw = self._reversed
        return [raw[end - 32 : end] for end in range(len(raw), 0, -32)]

    def __len__(self) -> int:
        return len(self._reversed) // 32

    @overload
    def __getitem__(self, i: int) -> Txid: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[Txid, ...]: ...

    def __getitem__(self, i: int | slice) -> Txid | tuple[Txid, ...]:
        if isinstance(i, slice):
            return tuple(self)[i]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("txid index out of range")
        end = len(self._reversed) - 32 * i
        return Txid(self._reversed[end - 32 : end])

    def __iter__(self) -> Iterator[Txid]:
        return map(Txid, self.raw_txids())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Txids):
            return self._reversed == other._reversed
        if isinstance(other, tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._reversed)

    def __repr__(self) -> str:
        return f"Txids({len(self)} txids)"
