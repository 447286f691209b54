"""The ``GrantLedger`` over the Gatekeeper: what a payment buys lands in the user's subscription.

The Gatekeeper owns users (``u|``), their expiry schedule (``x|``) and the grant markers (``g|``); it
applies a grant under the user's lock as one synced batch (user record, ``x|`` entry, marker), so a grant
is applied at most once whatever crashes or races (docs/PAYMENTS.md §11). This adapter only turns the
record the Gatekeeper returns into the ``GrantOutcome`` the payment handler answers with.
"""

from __future__ import annotations

from typing import Protocol

from teos.payments.handler import GrantOutcome
from teos.payments.state import Grant
from teos.storage.codec import UserRecord


class GrantGatekeeper(Protocol):
    """The Gatekeeper's two grant calls (``teos.gatekeeper.Gatekeeper`` satisfies it)."""

    def check_grant(self, grant: Grant) -> None:
        """Raises REGISTRATION_WRONG_FIELD_FORMAT if the user is registered in the other dialect."""
        ...

    def apply_grant(self, grant: Grant) -> tuple[UserRecord, bool]:
        """Applies ``grant`` unless its marker exists; the user's record after it, and whether it was
        applied by this call."""
        ...


class GatekeeperLedger:
    """``teos.payments.handler.GrantLedger`` over a ``GrantGatekeeper``."""

    def __init__(self, gatekeeper: GrantGatekeeper) -> None:
        self.gatekeeper = gatekeeper

    def check(self, grant: Grant) -> None:
        self.gatekeeper.check_grant(grant)

    def apply(self, grant: Grant) -> GrantOutcome:
        user, applied_now = self.gatekeeper.apply_grant(grant)
        return GrantOutcome(
            user_id=user.user_id,
            dialect=user.dialect,
            available_slots=user.available_slots,
            subscription_start=user.subscription_start,
            subscription_expiry=user.subscription_expiry,
            applied_now=applied_now,
        )
