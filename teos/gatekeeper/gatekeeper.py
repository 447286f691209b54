"""The Gatekeeper: who may use the tower, and how much of it.

It owns the users' subscriptions (``u|``) and numbers (``r|``), their appointment index (``h|``) and its
size per user (``n|``), the expiry schedule (``x|``), on a paid tower the markers of the payments whose
registrations it added (``g|``, see ``apply_grant``), and the tower-wide counts of users and stored
appointments (counters of ``teos.storage.index``, changed in the batch of the change they count). Every
change of a user's state is a read-modify-write of the user record under that user's lock, committed as
ONE synced batch together with
the appointment it pays for; a request returns only once that batch is on disk.

Locks: a fixed array of stripes chosen by the user id (bounded memory whatever the number of users).
A user's stripe is held across the synced write, so the next request of the same user reads what the
previous one wrote; requests of different users still share one fsync through the store's group commit.
Operations over several users (``release``) take their stripes in index order, so they cannot deadlock.
The appointment cap is enforced on an in-memory count (with its own small lock) that includes the
appointments being written, so concurrent requests cannot overshoot it.

Slot rules: an appointment costs ``slots_for(len(blob))``; an update of the same uuid is charged or
refunded the difference; a user never goes below zero. The slots of an appointment stay spent while the
appointment is watched or its penalty tracked, and come back through ``release`` when the tracker completes.

Fair share when registration is free (issue 13): anyone can register as many keys as they like, so
slots alone bound nobody. ``max_appointments_per_user`` caps what one key holds (``n|`` keeps each user's
count), ``max_users`` caps the registered users (top-ups are always accepted), and the last
``new_user_reserve`` percent of ``max_appointments`` is kept for established users: once the tower is that
full, a user registered less than ``new_user_blocks`` blocks ago may not add appointments, and new users
may not register. A flood of freshly registered keys then stops short of the users the tower already
protects. (It cannot stop a patient attacker who registers keys long in advance: see the README.)

Expiry: a user is expired once ``tip > subscription_expiry`` (requests are then refused) and the user's data
(user record, index, watched appointments) is deleted at height ``subscription_expiry + expiry_delta``.
Live trackers (``t|``) are never deleted here: the Responder finishes them, and their completion then
finds no user and refunds nothing. Nothing is restored when a block is disconnected: deleted data cannot
come back, and a subscription is measured in blocks of whichever chain is best.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from common import crypto
from common.appointment import compute_uuid, slots_for
from common.channel import ChannelId
from common.errors import ErrorKind, TeosError
from common.types import BlockHash, Dialect, Locator, UserId, Uuid
from teos.interfaces import TipView
from teos.payments.state import Grant
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, UserRecord
from teos.storage.index import APPOINTMENTS, USERS
from teos.storage.store import Batch, Store
from teos.storage.watched import (
    IndexJournal,
    add_held,
    delete_watched,
    forget_number,
    held,
    holds,
    is_watched,
    number_user,
    put_watched,
    remove_held,
)

log = logging.getLogger(__name__)

U32_MAX = 2**32 - 1
N_STRIPES = 256

NOT_ENOUGH_SLOTS = "Invalid signature or user does not have enough slots available"


@dataclass(frozen=True)
class GatekeeperConfig:
    """Subscription policy.

    ``max_appointments`` caps the appointments stored tower-wide (entries of the ``h|`` index, watched or
    responded). The default of one million keeps the database near 1 GB with typical (< 1 KB) blobs;
    beyond it new appointments are refused with RESOURCE_EXHAUSTED rather than letting the disk fill
    (updates of existing appointments are still accepted).
    """

    subscription_slots: int = 10000
    subscription_duration: int = 4320
    expiry_delta: int = 6
    max_appointments: int = 1_000_000
    min_to_self_delay: int = 20
    # Fair share (see the module docstring); these defaults keep none, teosd passes its configuration.
    max_appointments_per_user: int | None = None
    max_users: int | None = None
    new_user_reserve: int = 0  # percent of max_appointments
    new_user_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("subscription_slots", "subscription_duration", "max_appointments"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.expiry_delta < 0 or self.min_to_self_delay < 0:
            raise ValueError("expiry_delta and min_to_self_delay must not be negative")
        if not 0 <= self.new_user_reserve < 100 or self.new_user_blocks < 0:
            raise ValueError("new_user_reserve must be a percentage below 100, new_user_blocks >= 0")
        for name in ("max_appointments_per_user", "max_users"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def reserved_from(self) -> int:
        """Appointments tower-wide from which new users are refused (the reserve starts there)."""
        return self.max_appointments - self.max_appointments * self.new_user_reserve // 100


class Tally(IndexJournal, Protocol):
    """The locator index as the Gatekeeper uses it: changes staged in its batches, and the counts."""

    def count(self, name: str) -> int: ...


def wrong_dialect(user: UserRecord) -> TeosError:
    """A user registered in one dialect asked for (or paid for) a registration in the other."""
    return TeosError(
        ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT,
        f"This user is registered with the {user.dialect.value}-teos client dialect; "
        f"register with `{'public_key' if user.dialect is Dialect.PYTHON else 'user_id'}`",
    )


def subscription_expired(user: UserRecord) -> TeosError:
    message = f"Your subscription expired at {user.subscription_expiry}"
    return TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, message)


class Gatekeeper:
    """Registration, slot accounting, expiry and authentication of users (see the module docstring).

    Implements ``teos.interfaces.SlotLedger`` and ``BlockListener`` for the engine.
    """

    def __init__(self, store: Store, config: GatekeeperConfig, chain: TipView, index: Tally) -> None:
        self.store = store
        self.config = config
        self.chain = chain
        self.index = index
        self._stripes = [threading.Lock() for _ in range(N_STRIPES)]
        self._counter_lock = threading.Lock()
        self._n_appointments = 0
        self._n_users = 0
        self._number_lock = threading.Lock()
        self._next_usernum = 0
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Takes the appointment count from the index's counters (the index is started before) and the
        next user number from ``m|next_usernum``."""
        if self._started:
            return
        self._n_appointments = self.index.count(APPOINTMENTS)
        self._n_users = self.index.count(USERS)
        raw = self.store.get(keys.META_NEXT_USERNUM)
        self._next_usernum = int.from_bytes(raw, "big") if raw is not None else 0
        self._started = True

    def stop(self) -> None:
        self._started = False

    @property
    def n_appointments(self) -> int:
        """Appointments held for users (watched or responded), tower-wide."""
        return self._n_appointments

    @property
    def n_users(self) -> int:
        """Registered users (perhaps expired, until their data is deleted)."""
        return self._n_users

    # -- locking ---------------------------------------------------------------------------------

    def _stripe(self, user_id: UserId) -> int:
        return int.from_bytes(user_id.raw[1:9], "big") % N_STRIPES

    @contextmanager
    def _locked(self, user_ids: Sequence[UserId]) -> Iterator[None]:
        stripes = sorted({self._stripe(u) for u in user_ids})
        for s in stripes:
            self._stripes[s].acquire()
        try:
            yield
        finally:
            for s in reversed(stripes):
                self._stripes[s].release()

    def _commit(
        self,
        batch: Batch,
        counter_delta: int,
        *,
        cap: int | None = None,
        users_delta: int = 0,
        users_cap: int | None = None,
    ) -> None:
        """Commits ``batch`` (synced); a change of the appointment or user count is staged in the same
        batch (the index's counters).

        With ``cap`` (``users_cap``), the batch is refused (RESOURCE_EXHAUSTED) if the appointment (user)
        count, writes in progress included, would exceed it. If the write fails, the in-memory counts are
        given back.
        """
        if counter_delta or users_delta:
            with self._counter_lock:
                if cap is not None and counter_delta > 0 and self._n_appointments + counter_delta > cap:
                    raise TeosError(
                        ErrorKind.RESOURCE_EXHAUSTED,
                        "The tower is not accepting new appointments (storage limit reached)",
                    )
                if users_cap is not None and users_delta > 0 and self._n_users + users_delta > users_cap:
                    raise TeosError(
                        ErrorKind.RESOURCE_EXHAUSTED,
                        "The tower is not accepting new users (user limit reached)",
                    )
                self._n_appointments += counter_delta
                self._n_users += users_delta
            self.index.stage(batch, counts={APPOINTMENTS: counter_delta, USERS: users_delta})
        try:
            self.store.submit(batch).wait()
        except BaseException:
            if counter_delta or users_delta:
                with self._counter_lock:
                    self._n_appointments -= counter_delta
                    self._n_users -= users_delta
            raise

    # -- reads -----------------------------------------------------------------------------------

    def get_user(self, user_id: UserId) -> UserRecord | None:
        raw = self.store.get(keys.user(user_id))
        return UserRecord.decode(raw) if raw is not None else None

    def authenticate(self, message: bytes, signature: str) -> UserRecord | None:
        """The registered user whose key signed ``message``, or None for a bad signature or an unknown
        signer. The user may be expired: callers check that (``check_active``) so they can still answer
        a known user in its own dialect."""
        try:
            user_id = crypto.recover_public_key(message, signature)
        except crypto.InvalidSignature:
            return None
        return self.get_user(user_id)

    def is_expired(self, user: UserRecord) -> bool:
        return self.chain.tip_height > user.subscription_expiry

    def check_active(self, user: UserRecord) -> None:
        """Raises INVALID_SIGNATURE_OR_SUBSCRIPTION if the user's subscription has expired."""
        if self.is_expired(user):
            raise subscription_expired(user)

    def user_count(self, user_id: UserId, usernum: int | None = None) -> int:
        """How many appointments (watched or responded) the user holds (its ``h|`` entries); ``usernum``
        saves a read where the caller has it."""
        raw = self.store.get(keys.user_count(user_id))
        if raw is not None and len(raw) == 4:
            return int.from_bytes(raw, "big")
        if usernum is None:  # a database from before the count: its entries are counted once
            user = self.get_user(user_id)
            usernum = user.usernum if user is not None else None
        return self.store.count(keys.user_appointments(usernum)) if usernum is not None else 0

    def is_new(self, user: UserRecord) -> bool:
        """Registered less than ``new_user_blocks`` blocks ago (first registration: top-ups keep it)."""
        return self.chain.tip_height - user.subscription_start < self.config.new_user_blocks

    def _nearly_full(self) -> bool:
        return self.config.new_user_reserve > 0 and self._n_appointments >= self.config.reserved_from

    def _admit_new_appointment(self, user: UserRecord, held: int) -> None:
        """Raises RESOURCE_EXHAUSTED if ``user``, holding ``held`` appointments, may not add another."""
        cap = self.config.max_appointments_per_user
        if cap is not None and held >= cap:
            raise TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                            f"This user holds the most appointments the tower allows one user ({cap})")
        if self._nearly_full() and self.is_new(user):
            raise TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                            "The tower is nearly full; its remaining room is kept for users registered more "
                            f"than {self.config.new_user_blocks} blocks ago")

    def user_appointments(self, user_id: UserId) -> list[tuple[Uuid, Locator]]:
        """The user's appointments (watched or responded) as (uuid, locator), in locator order."""
        user = self.get_user(user_id)
        if user is None or user.usernum is None:
            return []
        return [(compute_uuid(loc, user_id), loc) for loc in held(self.store, user.usernum)]

    def user_appointments_page(
        self, user_id: UserId, after: Locator | None, limit: int
    ) -> tuple[list[Locator], Locator | None]:
        """Up to ``limit`` of the user's locators, in locator order (the order of its ``h|`` keys), from
        just after ``after`` (None: from the start); and the locator to continue after, or None when there
        are no more."""
        user = self.get_user(user_id)
        if user is None or user.usernum is None:
            return [], None
        prefix = keys.user_appointments(user.usernum)
        start = prefix if after is None else keys.user_appointment(user.usernum, after) + b"\x00"
        locators: list[Locator] = []
        for key, _ in self.store.iterate_range(start, prefix + b"\xff" * (Locator.SIZE + 1)):
            if len(locators) == limit:
                return locators, locators[-1]
            locators.append(keys.locator_of_user_appointment_key(key))
        return locators, None

    # -- registration ----------------------------------------------------------------------------

    def register(self, user_id: UserId, dialect: Dialect) -> UserRecord:
        """Registers a new user or tops up an existing one; returns the stored record.

        A new user starts at the tip and expires ``subscription_duration`` blocks later. Registering again
        adds ``subscription_slots`` and extends the expiry by ``subscription_duration`` from the later of
        the current expiry and the tip, keeping ``subscription_start`` (what both client families accept).
        The dialect is fixed by the first registration: a user registering again in the other dialect is
        refused with REGISTRATION_WRONG_FIELD_FORMAT, since the tower would otherwise read that client's
        locators and blobs with the wrong byte order and silently fail to protect it (and since
        registration is unauthenticated, letting anyone flip a user's dialect would be an attack).
        Raises RESOURCE_EXHAUSTED if the slots or the expiry would overflow 32 bits.
        """
        cfg = self.config
        with self._locked([user_id]):
            tip = self.chain.tip_height
            old = self.get_user(user_id)
            batch = Batch()
            if old is None:
                if self._nearly_full():
                    raise TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                                    "The tower is nearly full and not accepting new users")
                user = UserRecord(
                    user_id=user_id,
                    dialect=dialect,
                    available_slots=cfg.subscription_slots,
                    subscription_start=tip,
                    subscription_expiry=tip + cfg.subscription_duration,
                    usernum=-1,  # given below, once the record is known to fit
                )
            else:
                if old.dialect is not dialect:
                    raise wrong_dialect(old)
                user = replace(
                    old,
                    available_slots=old.available_slots + cfg.subscription_slots,
                    subscription_expiry=max(old.subscription_expiry, tip) + cfg.subscription_duration,
                )
                batch.delete(keys.expiry(old.subscription_expiry + cfg.expiry_delta, user_id))
            if user.available_slots > U32_MAX or user.subscription_expiry + cfg.expiry_delta > U32_MAX:
                raise TeosError(ErrorKind.RESOURCE_EXHAUSTED, "Subscription maximum slots count reached")
            batch.put(keys.expiry(user.subscription_expiry + cfg.expiry_delta, user_id), b"")
            if old is None:
                user = self._commit_new_user(batch, user)
            else:
                batch.put(keys.user(user_id), user.encode())
                self._commit(batch, 0)
        log.debug(  # debug: registration is free, and one line each let anyone fill the log
            "user registered user_id=%s slots=%d expiry=%d new=%s",
            user_id,
            user.available_slots,
            user.subscription_expiry,
            old is None,
        )
        return user

    def _commit_new_user(self, batch: Batch, user: UserRecord, *, capped: bool = True) -> UserRecord:
        """Numbers a new user and commits its registration (refused if ``max_users`` are registered, unless
        not ``capped``: a paid registration, checked before its payment, is never refused after it).
        Numbers are handed out and written (``m|next_usernum``) under one lock held across
        ``Store.submit``, so the stored next number never goes back and no number is given twice, even
        across a crash; one lost with a failed write is skipped."""
        cap = self.config.max_users
        with self._counter_lock:
            if capped and cap is not None and self._n_users + 1 > cap:
                raise TeosError(
                    ErrorKind.RESOURCE_EXHAUSTED, "The tower is not accepting new users (user limit reached)"
                )
            self._n_users += 1
        self.index.stage(batch, counts={USERS: 1})
        try:
            with self._number_lock:
                user = replace(user, usernum=self._next_usernum)
                self._next_usernum += 1
                batch.put(keys.user(user.user_id), user.encode())
                number_user(batch, self._next_usernum - 1, user.user_id)
                batch.put(keys.META_NEXT_USERNUM, self._next_usernum.to_bytes(8, "big"))
                ticket = self.store.submit(batch)
            ticket.wait()
        except BaseException:
            with self._counter_lock:
                self._n_users -= 1
            raise
        return user

    # -- paid registrations (teos.payments) ------------------------------------------------------

    def check_grant(self, grant: Grant) -> None:
        """Checked before a payment is accepted (``apply_grant`` itself never refuses): raises
        REGISTRATION_WRONG_FIELD_FORMAT if the grant's user is registered in the other dialect, and
        RESOURCE_EXHAUSTED if the user is new while the tower holds ``max_users`` users or is in the
        reserve kept for established users, as ``register`` would refuse it (so a newcomer is not charged
        for what it could not use). Concurrent payments of new users may pass it together: ``max_users``
        may then be overshot by that many, never refused after a payment."""
        user = self.get_user(grant.user_id)
        if user is not None:
            if user.dialect is not grant.dialect:
                raise wrong_dialect(user)
            return
        if self._nearly_full():
            raise TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                            "The tower is nearly full and not accepting new users")
        cap = self.config.max_users
        if cap is not None and self._n_users >= cap:
            raise TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                            "The tower is not accepting new users (user limit reached)")

    def apply_grant(self, grant: Grant) -> tuple[UserRecord, bool]:
        """Adds what one accepted payment bought to its user, exactly once; returns the user's record and
        whether this call applied it.

        Under the user's lock: if the marker ``g|channel|nonce`` exists the grant was applied before and
        the current record is returned. Otherwise the user is created at the tip if new (an existing user
        keeps its dialect), gets ``grant.slots`` more slots (capped at 2^32-1) and an expiry extended by
        ``grant.duration`` from the later of its expiry and the tip (as ``register``), its ``x|`` entry
        moves, and the user record, the ``x|`` entry and the marker are committed as one synced batch.
        It never refuses: the payment it pays for is already accepted (docs/PAYMENTS.md §11).
        """
        cfg = self.config
        user_id = grant.user_id
        marker = keys.grant(grant.channel_id.raw, grant.nonce)
        with self._locked([user_id]):
            tip = self.chain.tip_height
            old = self.get_user(user_id)
            if self.store.get(marker) is not None:
                if old is None:  # applied, and the user has expired and been deleted since
                    old = UserRecord(user_id, grant.dialect, 0, tip, tip)
                return old, False
            batch = Batch()
            if old is None:
                user = UserRecord(
                    user_id, grant.dialect, min(U32_MAX, grant.slots), tip, tip + grant.duration, usernum=-1
                )
            else:
                batch.delete(keys.expiry(old.subscription_expiry + cfg.expiry_delta, user_id))
                user = replace(
                    old,
                    available_slots=min(U32_MAX, old.available_slots + grant.slots),
                    subscription_expiry=max(old.subscription_expiry, tip) + grant.duration,
                )
            if user.subscription_expiry + cfg.expiry_delta > U32_MAX:
                user = replace(user, subscription_expiry=U32_MAX - cfg.expiry_delta)
            batch.put(keys.expiry(user.subscription_expiry + cfg.expiry_delta, user_id), b"")
            batch.put(marker, b"")
            if old is None:
                # Numbered and counted, never capped here: check_grant refused it before the payment if full.
                user = self._commit_new_user(batch, user, capped=False)
            else:
                batch.put(keys.user(user_id), user.encode())
                self._commit(batch, 0)
        log.info(
            "paid registration applied user_id=%s channel=%s nonce=%d registrations=%d slots=%d expiry=%d",
            user_id,
            grant.channel_id,
            grant.nonce,
            grant.registrations,
            user.available_slots,
            user.subscription_expiry,
        )
        return user, True

    def forget_grants(self, channel_id: ChannelId) -> None:
        """Deletes the grant markers of a channel that has been forgotten (its state is deleted first)."""
        batch = Batch()
        for key, _ in self.store.iterate(keys.grants_of_channel(channel_id.raw)):
            batch.delete(key)
        if len(batch):
            self._commit(batch, 0)

    # -- appointments ----------------------------------------------------------------------------

    def add_appointment(self, record: AppointmentRecord) -> UserRecord:
        """Stores ``record`` (new, or an update of the same uuid) and charges its slots; returns the user.

        Under the user's lock: the user must exist and be active; an appointment whose uuid already has a
        tracker is refused (ALREADY_TRIGGERED); the slot difference must be affordable
        (INVALID_SIGNATURE_OR_SUBSCRIPTION otherwise); a new appointment must fit under
        ``max_appointments`` (RESOURCE_EXHAUSTED). The appointment, its index entry, the user record and
        the counter are committed in one synced batch before this returns.
        """
        user_id = record.user_id
        with self._locked([user_id]):
            user = self.get_user(user_id)
            if user is None:
                raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS)
            self.check_active(user)
            usernum = _number(user)
            is_new = not holds(self.store, usernum, record.locator)
            old_raw = self.store.get(keys.appointment(record.locator, usernum))
            old_slots = 0
            if not is_new:
                if old_raw is None:
                    # Indexed but no longer watched: its penalty is being (or has been) tracked.
                    raise TeosError(
                        ErrorKind.ALREADY_TRIGGERED, "The provided appointment has already been triggered"
                    )
                old_slots = slots_for(len(AppointmentRecord.decode_body(old_raw, record.locator, user_id)
                                          .encrypted_blob))  # fmt: skip
            elif self.store.get(keys.tracker(record.uuid)) is not None:
                raise TeosError(
                    ErrorKind.ALREADY_TRIGGERED, "The provided appointment has already been triggered"
                )
            delta = slots_for(len(record.encrypted_blob)) - old_slots
            if delta > user.available_slots:
                raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS)
            n_held = self.user_count(user_id, usernum) if is_new else 0
            if is_new:
                self._admit_new_appointment(user, n_held)
            user = replace(user, available_slots=min(U32_MAX, user.available_slots - delta))
            batch = Batch()
            put_watched(batch, record, usernum, self.index, new=old_raw is None)
            batch.put(keys.user(user_id), user.encode())
            if is_new:
                add_held(batch, usernum, record.locator)
                batch.put(keys.user_count(user_id), (n_held + 1).to_bytes(4, "big"))
            self._commit(batch, 1 if is_new else 0, cap=self.config.max_appointments)
        return user

    # -- SlotLedger ------------------------------------------------------------------------------

    def release(self, batch: Batch, released: Mapping[UserId, Sequence[tuple[Locator, int]]]) -> None:
        """Gives back the slots of completed trackers and commits ``batch`` with it (see SlotLedger).

        Only index entries that still exist are refunded, so an appointment released twice, or one whose
        user was deleted (and perhaps registered again since), gives nothing back. If the appointment is
        still stored (the engine drops an invalid one in ``batch``), the refund is what its stored blob was
        charged, which differs from the engine's figure if the user updated it in the meantime.
        """
        users = list(released)
        with self._locked(users):
            removed = 0
            for user_id in users:
                user = self.get_user(user_id)
                if user is None or user.usernum is None:
                    continue
                usernum = user.usernum
                refund = 0
                seen: set[Locator] = set()
                for locator, slots in released[user_id]:
                    if locator in seen or not holds(self.store, usernum, locator):
                        continue
                    seen.add(locator)
                    remove_held(batch, usernum, locator)
                    stored = self.store.get(keys.appointment(locator, usernum))
                    if stored is not None:
                        slots = slots_for(len(AppointmentRecord.decode_body(stored, locator, user_id)
                                              .encrypted_blob))  # fmt: skip
                    refund += max(0, slots)
                    removed += 1
                if seen:
                    user = replace(user, available_slots=min(U32_MAX, user.available_slots + refund))
                    batch.put(keys.user(user_id), user.encode())
                    n_held = max(0, self.user_count(user_id, usernum) - len(seen))
                    batch.put(keys.user_count(user_id), n_held.to_bytes(4, "big"))
            self._commit(batch, -removed)

    # -- BlockListener ---------------------------------------------------------------------------

    def block_connected(self, block_hash: BlockHash, height: int) -> None:
        """Deletes the data of every user whose deletion height (expiry + expiry_delta) is <= ``height``.

        Walking the whole ``x|`` range up to ``height`` makes this catch up on blocks it missed (e.g. while
        the tower was down) and makes it idempotent.
        """
        start, stop = keys.expiry_upto(height)
        due = [keys.parse_expiry(k) for k, _ in self.store.iterate_range(start, stop)]
        for deletion_height, user_id in due:
            self._delete_user(user_id, deletion_height)

    def block_disconnected(self, block_hash: BlockHash, height: int) -> None:
        """Nothing to undo: deleted users stay deleted (see the module docstring)."""

    def _delete_user(self, user_id: UserId, deletion_height: int) -> None:
        with self._locked([user_id]):
            batch = Batch()
            batch.delete(keys.expiry(deletion_height, user_id))
            user = self.get_user(user_id)
            removed = 0
            deleted = False
            if user is not None and user.subscription_expiry + self.config.expiry_delta == deletion_height:
                usernum = _number(user)
                for locator in held(self.store, usernum):
                    remove_held(batch, usernum, locator)
                    if is_watched(self.store, locator, usernum):  # else responded
                        delete_watched(batch, locator, usernum, self.index)
                    removed += 1
                batch.delete(keys.user(user_id))
                forget_number(batch, usernum)
                batch.delete(keys.user_count(user_id))
                deleted = True
                log.info("user expired and deleted user_id=%s appointments=%d", user_id, removed)
            self._commit(batch, -removed, users_delta=-1 if deleted else 0)


def _number(user: UserRecord) -> int:
    """The user's number (every stored user has one once the database is migrated)."""
    if user.usernum is None:
        raise TeosError(ErrorKind.UNEXPECTED, "user without a number: the database was not migrated")
    return user.usernum
