"""The tower's use cases, as the public API calls them: register, add/get an appointment, subscription info.

Two halves, so the HTTP side can run in other processes than the one that owns the database:

- ``TowerCore`` is the state side. It lives in the process that owns the store, the Gatekeeper and the
  engine (teosd's main process) and takes identified users (``UserId``), never signatures or keys.
- ``TowerService`` is the request side. It recovers who signed a request (ECDSA public-key recovery),
  checks that a signature was made over the very message acted on, asks a core for the state change, and
  signs the receipt with the tower key, in the byte layout of the user's dialect (``common.receipts``).
  Its core is a ``TowerCore`` in the same process, or a ``teos.api.ipc.RemoteCore`` speaking to one in
  teosd's main process: the CPU work of a request (key recovery, receipt signing, HTTP and JSON) then runs
  in API worker processes while one process stays the single writer.

Neither knows anything of HTTP or JSON: they take value types (already validated by ``common.validation``)
and return plain records, or raise ``TeosError`` (the API maps the error kind to a status and a code in the
caller's dialect).

Authentication is a capability: ``authenticate(message, signature)`` recovers the signer and returns a
``Caller`` only if the signer is a registered user. Use cases take that ``Caller`` and check that it was
made for the very message they act on. Whether the user's subscription is still active is checked by the
core on each use case, on the user record as it is then (expired users are known users, so their errors
can be answered in their own dialect).

Durability: ``add_appointment`` returns the signed receipt only after the appointment and the slot change
are synced to disk (the Gatekeeper commits them in one batch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from common import crypto, receipts
from common.appointment import Appointment, compute_uuid
from common.errors import ErrorKind, RequestError, TeosError
from common.messages import GET_SUBSCRIPTION_INFO_MESSAGE, get_appointment_message
from common.tx import TxDecodeError, decode_transaction
from common.types import Dialect, Locator, Txid, UserId
from teos.gatekeeper import Gatekeeper
from teos.interfaces import ChainView, LateBreaches, TipView, Watching
from teos.storage import keys
from teos.storage.codec import AppointmentRecord, TrackerRecord, UserRecord
from teos.storage.store import Store
from teos.storage.watched import get_watched

log = logging.getLogger(__name__)

BEING_WATCHED = "being_watched"
DISPUTE_RESPONDED = "dispute_responded"

# python-teos accepted blobs over 2048 bytes (charging one slot per started 2048 bytes); this caps them
# at eight slots' worth. rust-teos clients are bounded tighter by their per-endpoint body limit.
DEFAULT_MAX_BLOB_BYTES = 16 * 1024

SUBSCRIPTION_PAGE = 1024  # locators per read of a subscription's list (a few ms in the main process)
SUBSCRIPTION_FIRST_PAGE = 64  # the first read: enough for most users, and cheap to refuse after

NOT_ENOUGH_SLOTS = "Invalid signature or user does not have enough slots available"


@dataclass(frozen=True)
class Caller:
    """A registered user who signed ``message`` (made only by ``caller_of``: ``TowerService.authenticate``
    and the add_appointment fast path)."""

    user: UserRecord
    message: bytes
    signature: str

    @property
    def dialect(self) -> Dialect:
        return self.user.dialect

    @property
    def user_id(self) -> UserId:
        return self.user.user_id


@dataclass(frozen=True)
class Registration:
    """A registration or top-up: the stored subscription and the tower's signature over its receipt."""

    user: UserRecord
    dialect: Dialect
    signature: str


@dataclass(frozen=True)
class AcceptedAppointment:
    """An appointment on disk, the user's subscription after paying for it, and the signed receipt."""

    record: AppointmentRecord
    user: UserRecord
    signature: str


@dataclass(frozen=True)
class AppointmentState:
    """What the tower holds for one of a user's locators: the watched appointment, or its tracker."""

    status: str
    appointment: AppointmentRecord | None = None
    tracker: TrackerRecord | None = None


@dataclass(frozen=True)
class SubscriptionInfo:
    """A user's subscription and locators: all of them, or (asked with a ``limit``) the first page and
    where the next one starts (``subscription_page``), None if there is none."""

    user: UserRecord
    locators: list[Locator]
    next_page: Locator | None = None  # the last locator of this page (pages are in locator order)


class Core(Protocol):
    """The state side of the use cases, as ``TowerService`` needs it (``TowerCore`` or a remote one)."""

    def user(self, user_id: UserId) -> UserRecord | None: ...

    def register(self, user_id: UserId, dialect: Dialect) -> UserRecord: ...

    def add_appointment(
        self, user_id: UserId, signature: str, appointment: Appointment
    ) -> tuple[AppointmentRecord, UserRecord]: ...

    def get_appointment(self, user_id: UserId, locator: Locator) -> AppointmentState: ...

    def get_subscription_info(self, user_id: UserId, limit: int | None = None) -> SubscriptionInfo: ...

    def subscription_page(
        self, user_id: UserId, after: Locator, limit: int
    ) -> tuple[list[Locator], Locator | None]:
        ...


class TowerCore:
    """The state side of the use cases (see the module docstring); implements ``Core``.

    ``tip`` says where the chain is and whether bitcoind answers; ``late`` finds a breach already in the
    chain and hands such an appointment to the engine; ``watching`` (when given) says whether the tower
    still watches the chain: registrations and appointments are refused (503) while it does not, so no
    receipt is ever signed by a tower whose engine is dead or stuck. A ``paid`` tower registers users
    only through payments (``teos.payments``): ``register`` is refused with PAYMENT_REQUIRED (the API
    workers answer 402 before asking; this guards any other way in).
    """

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        tip: TipView,
        late: LateBreaches,
        store: Store,
        watching: Watching | None = None,
        *,
        paid: bool = False,
    ) -> None:
        self.gatekeeper = gatekeeper
        self.tip = tip
        self.late = late
        self.store = store
        self.watching = watching
        self.paid = paid

    def _require_bitcoind(self) -> None:
        """Refuses (503) while bitcoind does not answer or the tower has stopped watching the chain."""
        if self.watching is not None:
            reason = self.watching.stopped_watching()
            if reason is not None:
                log.warning("refused: the tower is not watching the chain reason=%s", reason)
                raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable")
        if not self.tip.bitcoind_reachable:
            raise TeosError(ErrorKind.SERVICE_UNAVAILABLE, "Service currently unavailable")

    def _active_user(self, user_id: UserId, refusal: str) -> UserRecord:
        user = self.gatekeeper.get_user(user_id)
        if user is None:  # deleted (expired) since the request was authenticated
            raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, refusal)
        self.gatekeeper.check_active(user)
        return user

    def user(self, user_id: UserId) -> UserRecord | None:
        """The registered user ``user_id`` (perhaps expired), or None."""
        return self.gatekeeper.get_user(user_id)

    def register(self, user_id: UserId, dialect: Dialect) -> UserRecord:
        """Registers (or tops up) ``user_id``; returns the stored subscription."""
        if self.paid:
            raise TeosError(
                ErrorKind.PAYMENT_REQUIRED, "Payment required: this tower charges for registrations"
            )
        self._require_bitcoind()
        return self.gatekeeper.register(user_id, dialect)

    def add_appointment(
        self, user_id: UserId, signature: str, appointment: Appointment
    ) -> tuple[AppointmentRecord, UserRecord]:
        """Stores ``appointment`` for ``user_id`` (who signed it with ``signature``) and charges its slots.

        If the dispute is already in the chain's locator cache, the blob must decrypt (with the key of
        the user's dialect) to a transaction; otherwise the appointment is refused (WRONG_FIELD_FORMAT,
        nothing charged, nothing signed) rather than accepted, charged and forgotten as python-teos did.
        A valid one is stored like any other, and the engine is told after the commit so it responds at
        once.
        """
        self._require_bitcoind()
        user = self.gatekeeper.get_user(user_id)
        if user is None:
            raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, NOT_ENOUGH_SLOTS)
        record = AppointmentRecord.of(appointment, user_id, signature, self.tip.tip_height, user.dialect)
        dispute_txid = self.late.breach_in_cache(record)
        if dispute_txid is not None:
            self._check_penalty_decodes(record, dispute_txid)
        user = self.gatekeeper.add_appointment(record)
        if dispute_txid is None:
            # The breach block may have been processed between the check above and the commit: the
            # Watcher puts a block in the cache before its lookups, so looking again closes that gap.
            dispute_txid = self.late.breach_in_cache(record)
        if dispute_txid is not None:
            self.late.appointment_added(record, dispute_txid)
        log.debug(
            "appointment accepted locator=%s user_id=%s slots_left=%d breached=%s",
            record.locator,
            record.user_id,
            user.available_slots,
            dispute_txid is not None,
        )
        return record, user

    def _check_penalty_decodes(self, record: AppointmentRecord, dispute_txid: Txid) -> None:
        try:
            decode_transaction(crypto.decrypt(record.encrypted_blob, dispute_txid, record.dialect))
        except (crypto.DecryptionError, TxDecodeError) as exc:
            log.info("appointment refused: breach in cache, blob invalid locator=%s: %s", record.locator, exc)
            raise RequestError(
                ErrorKind.WRONG_FIELD_FORMAT,
                "encrypted_blob does not decrypt to a valid transaction for a dispute already in the chain",
            ) from None

    def get_appointment(self, user_id: UserId, locator: Locator) -> AppointmentState:
        """The user's appointment at ``locator``: watched, or responded (its tracker). Raises
        APPOINTMENT_NOT_FOUND if the user holds none there."""
        user = self._active_user(user_id, "User cannot be authenticated")
        uuid = compute_uuid(locator, user_id)
        watched = get_watched(self.store, locator, user)
        if watched is not None:
            return AppointmentState(BEING_WATCHED, appointment=watched)
        raw = self.store.get(keys.tracker(uuid))
        if raw is not None:
            return AppointmentState(DISPUTE_RESPONDED, tracker=TrackerRecord.decode(raw))
        raise TeosError(ErrorKind.APPOINTMENT_NOT_FOUND, "Appointment not found")

    def get_subscription_info(self, user_id: UserId, limit: int | None = None) -> SubscriptionInfo:
        """The user's subscription and the locators of every appointment it holds (watched or
        responded); with ``limit``, only the first page of them (see ``subscription_page``)."""
        user = self._active_user(user_id, "User not found. Have you registered?")
        if limit is None:
            locators = [locator for _, locator in self.gatekeeper.user_appointments(user_id)]
            return SubscriptionInfo(user=user, locators=locators)
        locators, next_page = self.gatekeeper.user_appointments_page(user_id, None, limit)
        return SubscriptionInfo(user=user, locators=locators, next_page=next_page)

    def subscription_page(
        self, user_id: UserId, after: Locator, limit: int
    ) -> tuple[list[Locator], Locator | None]:
        """The next page of the user's locators after ``after`` (the caller was authenticated for the
        first page; a user deleted meanwhile simply has no more)."""
        return self.gatekeeper.user_appointments_page(user_id, after, limit)


def signer(message: bytes, signature: str) -> UserId | None:
    """The key that signed ``message`` (Lightning's signmessage), or None for a bad signature."""
    try:
        return crypto.recover_public_key(message, signature)
    except crypto.InvalidSignature:
        return None


def caller_of(user: UserRecord | None, message: bytes, signature: str) -> Caller | None:
    """The caller a registered signer makes (None for no user): ``TowerService.authenticate``'s end."""
    return None if user is None else Caller(user=user, message=message, signature=signature)


class TowerService:
    """The request side of the use cases (see the module docstring): who signed, and the signed receipts."""

    def __init__(
        self,
        core: Core,
        tower_secret_key: bytes,
        *,
        min_to_self_delay: int,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    ) -> None:
        self.core = core
        self._secret_key = tower_secret_key
        self.min_to_self_delay = min_to_self_delay
        self.max_blob_bytes = max_blob_bytes
        self.subscription_page_size = SUBSCRIPTION_PAGE
        self.subscription_first_page_size = SUBSCRIPTION_FIRST_PAGE

    @classmethod
    def local(
        cls,
        gatekeeper: Gatekeeper,
        chain: ChainView,
        store: Store,
        tower_secret_key: bytes,
        *,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    ) -> TowerService:
        """A service over a ``TowerCore`` in this process (tests, and tools that own the database);
        ``chain`` is both the tip and the late-breach seam."""
        return cls(
            TowerCore(gatekeeper, chain, chain, store),
            tower_secret_key,
            min_to_self_delay=gatekeeper.config.min_to_self_delay,
            max_blob_bytes=max_blob_bytes,
        )

    # -- authentication --------------------------------------------------------------------------

    def authenticate(self, message: bytes, signature: str) -> Caller | None:
        """The registered user who signed ``message``, or None (bad signature or unknown signer)."""
        user_id = signer(message, signature)
        user = self.core.user(user_id) if user_id is not None else None
        return caller_of(user, message, signature)

    def _check_caller(self, caller: Caller, message: bytes) -> None:
        if caller.message != message:
            raise TeosError(ErrorKind.INVALID_SIGNATURE_OR_SUBSCRIPTION, "Invalid signature")

    # -- use cases -------------------------------------------------------------------------------

    def register(self, user_id: UserId, dialect: Dialect) -> Registration:
        """Registers (or tops up) ``user_id`` and signs the registration receipt in its dialect."""
        user = self.core.register(user_id, dialect)
        receipt = receipts.registration_receipt(
            user.dialect,
            user.user_id,
            user.available_slots,
            user.subscription_start,
            user.subscription_expiry,
        )
        return Registration(user=user, dialect=user.dialect, signature=crypto.sign(receipt, self._secret_key))

    def add_appointment(self, caller: Caller, appointment: Appointment) -> AcceptedAppointment:
        """Stores ``appointment`` for ``caller`` (who signed its serialization) and signs the receipt
        (see ``TowerCore.add_appointment`` for an appointment whose breach is already known)."""
        self._check_caller(caller, appointment.serialize())
        record, user = self.core.add_appointment(caller.user_id, caller.signature, appointment)
        return self.accepted(record, user)

    def accepted(self, record: AppointmentRecord, user: UserRecord) -> AcceptedAppointment:
        """An appointment the core stored, with its receipt signed."""
        signature = self.receipt_signature(record.dialect, record.user_signature, record.start_block)
        return AcceptedAppointment(record=record, user=user, signature=signature)

    def receipt_signature(self, dialect: Dialect, user_signature: str, start_block: int) -> str:
        """The tower's signature of an accepted appointment's receipt (also for ``AsyncFastAdd``, which
        reaches the core itself)."""
        receipt = receipts.appointment_receipt(dialect, user_signature, start_block)
        return crypto.sign(receipt, self._secret_key)

    def get_appointment(self, caller: Caller, locator: Locator) -> AppointmentState:
        """The caller's appointment at ``locator``: watched, or responded (its tracker). Raises
        APPOINTMENT_NOT_FOUND if the caller holds none there."""
        self._check_caller(caller, get_appointment_message(locator))
        return self.core.get_appointment(caller.user_id, locator)

    def get_subscription_info(self, caller: Caller) -> SubscriptionInfo:
        """The caller's subscription and the locators of every appointment it holds."""
        self._check_caller(caller, GET_SUBSCRIPTION_INFO_MESSAGE)
        return self.core.get_subscription_info(caller.user_id)

    def subscription_pages(self, caller: Caller) -> tuple[UserRecord, Iterator[list[Locator]], bool]:
        """The caller's subscription, and its locators page by page: the first page is read now (so a
        refusal is raised here), the others as the iterator is consumed. The flag says whether there
        is more than one page.

        A user with 100,000 appointments no longer costs a 1.7 MB list held at once in the process that
        owns the database (16 concurrent asks grew it by 200 MB): each page is a short read there. The
        pages are read one after another, not in one snapshot: an appointment added or removed meanwhile
        may or may not be listed, and none is listed twice."""
        self._check_caller(caller, GET_SUBSCRIPTION_INFO_MESSAGE)
        page_size = self.subscription_page_size
        first = self.core.get_subscription_info(caller.user_id, self.subscription_first_page_size)

        def pages() -> Iterator[list[Locator]]:
            yield first.locators
            after = first.next_page
            while after is not None:
                locators, after = self.core.subscription_page(caller.user_id, after, page_size)
                yield locators

        return first.user, pages(), first.next_page is not None
