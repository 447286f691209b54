"""What the admin API can ask of the tower (``AdminBackend``), and its implementation over the database.

``StoreAdminBackend`` reads LevelDB through the documented key layout (``teos.storage.keys``) and the records
of ``teos.storage.codec``; it never writes. Nothing is held in memory per entry:

- counts come from the counters the writers keep in the batch of each change (``teos.storage.index``):
  reading them is O(1), where walking the keys took about 0.7 s per million appointments, for every
  ``gettowerinfo`` and every ``/metrics`` scrape;
- listings come in pages: the caller passes the last key it got (``cursor``, the key without its prefix
  byte, in hex) and a ``limit``; a page reads at most ``limit + 1`` entries.

Readiness: the tower is ready when bitcoind answers, the engine has seen bitcoind's tip, and it is at most
``max_blocks_behind`` blocks behind it. When the engine status reports how long ago it last asked bitcoind
for its tip (``seconds_since_tip_check``), a tower that has not looked for longer than ``max_tip_age`` is
not ready either: a stalled poller otherwise looks caught up forever (the silent failure other towers had).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from common.appointment import compute_uuid
from common.channel import ChannelId
from common.types import Locator, UserId
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, CodecError, TrackerRecord, UserRecord, decode_block_pointer
from teos.storage.index import APPOINTMENTS, TRACKERS, USERS
from teos.storage.store import Store
from teos.storage.watched import held, user_of_number, watched_at

log = logging.getLogger(__name__)

JsonObject = dict[str, Any]

DEFAULT_PAGE_LIMIT = 1000
MAX_PAGE_LIMIT = 10_000

SECTION_WATCHER = "watcher"
SECTION_RESPONDER = "responder"
SECTIONS = (SECTION_WATCHER, SECTION_RESPONDER)

# Key prefix and key length (without the prefix byte) of each listing.
_APPOINTMENT_KEY_LEN = (Locator.SIZE + 1, Locator.SIZE + 10)  # locator | usernum (a varint)
_TRACKER_KEY_LEN = 20
_USER_KEY_LEN = UserId.SIZE


class AdminError(Exception):
    """A request the backend refuses (bad cursor, unknown section, ...); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: list[JsonObject]
    next_cursor: str | None

    def to_json(self) -> JsonObject:
        return {"items": self.items, "next_cursor": self.next_cursor}


class AdminBackend(Protocol):
    """The operations behind ``teos-cli``'s commands."""

    def tower_info(self) -> JsonObject: ...

    def ready(self) -> tuple[bool, str]:
        """Whether the tower is caught up and bitcoind answers; the reason when not (cheap: no counting)."""
        ...

    def appointments(self, section: str, cursor: str | None, limit: int) -> Page: ...

    def appointments_by_locator(self, locator: Locator) -> JsonObject: ...

    def users(self, cursor: str | None, limit: int) -> Page: ...

    def user(self, user_id: UserId) -> JsonObject | None: ...

    def stop(self) -> None: ...

    def payments(self) -> PaymentsAdmin | None:
        """The payment controls of a paid tower (None: a free tower)."""
        ...


class PaymentsAdmin(Protocol):
    """What ``teos-cli`` can do with a paid tower's channels (``teos.payments.operator`` satisfies it)."""

    def channels(self) -> JsonObject:
        """Every channel (paid, claimed, unclaimed, blocks to expiry, at risk) and the totals."""
        ...

    def claim(self, channel_id: ChannelId) -> JsonObject:
        """Claims one channel now (on the engine thread)."""
        ...

    def claim_all(self) -> JsonObject:
        """Claims every open channel with a payment."""
        ...


# -- JSON shapes of the stored records ----------------------------------------------------------------


def appointment_json(record: AppointmentRecord) -> JsonObject:
    return {
        "uuid": record.uuid.hex(),
        "locator": record.locator.hex(),
        "user_id": record.user_id.hex(),
        "encrypted_blob": record.encrypted_blob.hex(),
        "to_self_delay": record.to_self_delay,
        "start_block": record.start_block,
        "user_signature": record.user_signature,
        "dialect": record.dialect.value,
    }


def tracker_json(record: TrackerRecord) -> JsonObject:
    return {
        "uuid": record.uuid.hex(),
        "locator": record.locator.hex(),
        "user_id": record.user_id.hex(),
        "dispute_txid": record.dispute_txid.hex(),
        "penalty_txid": record.penalty_txid.hex(),
        "penalty_rawtx": record.penalty_rawtx.hex(),
        "broadcast_height": record.broadcast_height,
        "confirmed_in": record.confirmed_in.hex() if record.confirmed_in is not None else None,
        "confirmed_height": record.confirmed_height,
        "start_block": record.appointment.start_block,
        "dialect": record.appointment.dialect.value,
    }


def user_json(record: UserRecord) -> JsonObject:
    return {
        "user_id": record.user_id.hex(),
        "dialect": record.dialect.value,
        "available_slots": record.available_slots,
        "subscription_start": record.subscription_start,
        "subscription_expiry": record.subscription_expiry,
    }


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- the implementation over the store --------------------------------------------------------------


class TowerCounts(Protocol):
    """The counts ``tower_info`` shows, kept as the state changes (``teos.storage.index.LocatorIndex``):
    reading them costs nothing, whatever the number of appointments."""

    def count(self, name: str) -> int: ...

    def __len__(self) -> int:
        """Appointments under watch."""
        ...


class StoreAdminBackend:
    """``AdminBackend`` reading the tower's LevelDB (see the module docstring).

    ``engine_status`` is ``teos.engine.progress.Progress.status`` (a dict with ``bitcoind_reachable``,
    ``tip_height_seen``, ``watcher: {block_hash, height}``, ``blocks_behind``, ``catching_up``), to
    which the daemon adds ``stopped_watching`` (the watchdog's reason, or None): a tower that stopped
    watching is never ready, and says why;
    ``stop_callback`` must only *ask* the daemon to stop and return at once (it runs inside the ``stop``
    request).
    """

    def __init__(
        self,
        store: Store,
        engine_status: Callable[[], Mapping[str, Any]],
        tower_id: UserId,
        stop_callback: Callable[[], None],
        counts: TowerCounts,
        *,
        max_blocks_behind: int = 1,
        max_tip_age: float = 600.0,
        payments: PaymentsAdmin | None = None,
    ) -> None:
        self._payments = payments
        self._store = store
        self._counts = counts
        self._engine_status = engine_status
        self._tower_id = tower_id
        self._stop_callback = stop_callback
        self._max_blocks_behind = max_blocks_behind
        self._max_tip_age = max_tip_age

    # -- counting ------------------------------------------------------------------------------------

    def _status(self) -> Mapping[str, Any]:
        try:
            return self._engine_status()
        except Exception:
            log.exception("engine status unavailable")
            return {}

    def _stored_pointer(self) -> JsonObject:
        raw = self._store.get(keys.META_LAST_BLOCK)
        if raw is None:
            return {"block_hash": None, "height": None}
        try:
            block_hash, height = decode_block_pointer(raw)
        except CodecError:
            return {"block_hash": None, "height": None}
        return {"block_hash": block_hash.hex(), "height": height}

    def readiness(self, status: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether the tower can be relied on now, and why not (empty reason when ready)."""
        stopped = status.get("stopped_watching")
        if stopped:
            return False, f"the tower stopped watching the chain: {stopped}; teosd is exiting to be restarted"
        if status.get("bitcoind_reachable") is not True:
            return False, "bitcoind is not reachable"
        tip = _int_or_none(status.get("tip_height_seen"))
        if tip is None or tip < 0:
            return False, "bitcoind's tip is not known yet"
        behind = _int_or_none(status.get("blocks_behind"))
        if behind is None:
            return False, "the engine does not report its progress"
        if behind > self._max_blocks_behind:
            return False, f"catching up: {behind} blocks behind bitcoind's tip"
        age = status.get("seconds_since_tip_check")
        if isinstance(age, int | float) and not isinstance(age, bool) and age > self._max_tip_age:
            return False, f"bitcoind's tip was last checked {age:.0f} s ago"
        return True, ""

    def ready(self) -> tuple[bool, str]:
        return self.readiness(self._status())

    def tower_info(self) -> JsonObject:
        status = self._status()
        watcher = status.get("watcher")
        if isinstance(watcher, Mapping) and watcher.get("block_hash") is not None:
            last = {"block_hash": watcher.get("block_hash"), "height": _int_or_none(watcher.get("height"))}
        else:
            last = self._stored_pointer()
        tip = _int_or_none(status.get("tip_height_seen"))
        ready, reason = self.readiness(status)
        counts = self._counts
        return {
            "tower_id": self._tower_id.hex(),
            "n_registered_users": counts.count(USERS),
            "n_watcher_appointments": len(counts),
            "n_responder_trackers": counts.count(TRACKERS),
            "n_appointments": counts.count(APPOINTMENTS),
            "bitcoind_reachable": status.get("bitcoind_reachable") is True,
            "tip_height": tip if tip is not None and tip >= 0 else None,
            "last_processed_block": last,
            "blocks_behind": _int_or_none(status.get("blocks_behind")),
            "catching_up": status.get("catching_up") is True,
            # while far behind: {from_height, to_height, done, total, blocks_per_second}, else null
            "catch_up": status.get("catch_up") if isinstance(status.get("catch_up"), dict) else None,
            "ready": ready,
            "not_ready_reason": reason or None,
        }

    # -- listings ------------------------------------------------------------------------------------

    def _page(
        self,
        prefix: bytes,
        key_len: int | tuple[int, int],
        cursor: str | None,
        limit: int,
        to_json: Callable[[bytes, bytes], JsonObject],
    ) -> Page:
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise AdminError(f"limit must be between 1 and {MAX_PAGE_LIMIT}")
        start = prefix
        if cursor:
            try:
                after = bytes.fromhex(cursor)
            except ValueError:
                raise AdminError("cursor must be hex") from None
            low, high = key_len if isinstance(key_len, tuple) else (key_len, key_len)
            if not low <= len(after) <= high:
                raise AdminError(f"cursor must be {low if low == high else f'{low} to {high}'} bytes")
            # The key after ``cursor`` in byte order is at least ``cursor || 0x00``.
            start = prefix + after + b"\x00"
        stop = bytes([prefix[0] + 1])
        items: list[JsonObject] = []
        last_key = b""
        for key, value in self._store.iterate_range(start, stop):
            if len(items) == limit:
                return Page(items, last_key[1:].hex())
            try:
                items.append(to_json(key, value))
            except (CodecError, ValueError) as e:
                log.error("admin: undecodable record key=%s error=%s", key.hex(), e)
                items.append({"key": key.hex(), "error": f"undecodable record: {e}"})
            last_key = key
        return Page(items, None)

    def appointments(self, section: str, cursor: str | None, limit: int) -> Page:
        if section == SECTION_WATCHER:
            return self._page(keys.APPOINTMENT, _APPOINTMENT_KEY_LEN, cursor, limit, self._watched_json)
        if section == SECTION_RESPONDER:
            return self._page(keys.TRACKER, _TRACKER_KEY_LEN, cursor, limit,
                              lambda _, v: tracker_json(TrackerRecord.decode(v)))
        raise AdminError(f"unknown section {section!r} (expected one of {', '.join(SECTIONS)})")

    def appointments_by_locator(self, locator: Locator) -> JsonObject:
        """Every user's appointment for ``locator``, watched or responded.

        Watched ones are found by prefix; trackers are keyed by uuid, so they are found by streaming the
        ``t|`` entries (few: one per breach still being followed).
        """
        watched = [
            appointment_json(record) if record is not None else {"key": key.hex(), "error": "undecodable"}
            for key, record, _ in watched_at(self._store, [locator.raw])
        ]
        trackers = [tracker_json(t) for t in self._trackers() if t.locator == locator]
        return {"locator": locator.hex(), "watcher_appointments": watched, "responder_trackers": trackers}

    def _trackers(self) -> Iterator[TrackerRecord]:
        for key, value in self._store.iterate(keys.TRACKER):
            try:
                yield TrackerRecord.decode(value)
            except CodecError as e:
                log.error("admin: undecodable tracker key=%s error=%s", key.hex(), e)

    def users(self, cursor: str | None, limit: int) -> Page:
        return self._page(keys.USER, _USER_KEY_LEN, cursor, limit,
                          lambda _, v: user_json(UserRecord.decode(v)))  # fmt: skip

    def user(self, user_id: UserId) -> JsonObject | None:
        raw = self._store.get(keys.user(user_id))
        if raw is None:
            return None
        record = UserRecord.decode(raw)
        info = user_json(record)
        # A user's index is bounded (max_appointments_per_user), so it is listed whole, in uuid order.
        locators = held(self._store, record.usernum) if record.usernum is not None else []
        info["appointments"] = [
            {"uuid": uuid.hex(), "locator": locator.hex()}
            for uuid, locator in sorted((compute_uuid(loc, user_id), loc) for loc in locators)
        ]
        return info

    def _watched_json(self, key: bytes, value: bytes) -> JsonObject:
        locator, usernum = keys.parse_appointment(key)
        user_id = user_of_number(self._store, usernum)
        if user_id is None:
            raise CodecError(f"user number {usernum} names nobody")
        return appointment_json(AppointmentRecord.decode_body(value, locator, user_id))

    def stop(self) -> None:
        log.info("stop requested through the admin API")
        self._stop_callback()

    def payments(self) -> PaymentsAdmin | None:
        return self._payments
