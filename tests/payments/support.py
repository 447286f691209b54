"""Keys, channel parameters and fakes shared by the payment tests."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field, replace

from coincurve import PrivateKey

from common import script
from common.channel import ChannelId, ChannelParams
from common.errors import ErrorKind, TeosError
from common.types import Dialect, Txid, UserId
from teos.payments.chain import ChainUnavailable, TxOutInfo
from teos.payments.handler import GrantOutcome
from teos.payments.state import Grant

U32_MAX = 2**32 - 1


def secret(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def pubkey(secret_key: bytes) -> bytes:
    return PrivateKey(secret_key).public_key.format(compressed=True)


USER_SECRET = secret("channel user")
TOWER_SECRET = secret("channel tower")
USER_KEY = pubkey(USER_SECRET)
TOWER_KEY = pubkey(TOWER_SECRET)
CHANGE_SCRIPT = script.p2wpkh(pubkey(secret("user change")))
FUNDING_TXID = Txid(hashlib.sha256(b"funding").digest())


def make_params(
    value: int = 1_000_000,
    expiry: int = 500,
    fee_rate: int = 2000,
    change_script: bytes = CHANGE_SCRIPT,
    vout: int = 1,
    tower_key: bytes = TOWER_KEY,
) -> ChannelParams:
    return ChannelParams(
        ChannelId(FUNDING_TXID, vout), value, USER_KEY, tower_key, expiry, change_script, fee_rate
    )


def user_id(n: int) -> UserId:
    return UserId(pubkey(secret(f"user id {n}")))


class FakeChain:
    """A FundingChain whose outputs and tip a test sets; ``calls`` counts gettxout calls."""

    def __init__(self, tip: int = 100) -> None:
        self.tip = tip
        self.outputs: dict[tuple[Txid, int], TxOutInfo] = {}
        self.down = False
        self.calls = 0

    def fund(self, params: ChannelParams, confirmations: int = 6) -> None:
        self.outputs[(params.channel_id.txid, params.channel_id.vout)] = TxOutInfo(
            params.funding_value, params.script_pubkey, confirmations
        )

    def get_tx_out(self, txid: Txid, vout: int) -> TxOutInfo | None:
        self.calls += 1
        if self.down:
            raise ChainUnavailable("down")
        return self.outputs.get((txid, vout))

    def tip_height(self) -> int:
        if self.down:
            raise ChainUnavailable("down")
        return self.tip


@dataclass
class _User:
    dialect: Dialect
    slots: int
    start: int
    expiry: int


@dataclass
class FakeLedger:
    """The Gatekeeper's side of a grant, in memory: idempotent per (channel, nonce), as part 2 must be."""

    tip: int = 100
    users: dict[UserId, _User] = field(default_factory=dict)
    applied: dict[tuple[ChannelId, int], int] = field(default_factory=dict)  # grant -> times applied
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_next_apply: bool = False

    def check(self, grant: Grant) -> None:
        user = self.users.get(grant.user_id)
        if user is not None and user.dialect is not grant.dialect:
            raise TeosError(ErrorKind.REGISTRATION_WRONG_FIELD_FORMAT, "registered in the other dialect")

    def apply(self, grant: Grant) -> GrantOutcome:
        with self.lock:
            if self.fail_next_apply:
                self.fail_next_apply = False
                raise OSError("disk full")
            key = (grant.channel_id, grant.nonce)
            user = self.users.get(grant.user_id)
            if key in self.applied:
                assert user is not None
                return self._outcome(grant.user_id, user, applied_now=False)
            if user is None:
                user = _User(grant.dialect, 0, self.tip, self.tip)
            user = replace(
                user,
                slots=min(U32_MAX, user.slots + grant.slots),
                expiry=max(user.expiry, self.tip) + grant.duration,
            )
            self.users[grant.user_id] = user
            self.applied[key] = self.applied.get(key, 0) + 1
            return self._outcome(grant.user_id, user, applied_now=True)

    @staticmethod
    def _outcome(uid: UserId, user: _User, applied_now: bool) -> GrantOutcome:
        return GrantOutcome(uid, user.dialect, user.slots, user.start, user.expiry, applied_now)
