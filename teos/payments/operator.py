"""The operator's control of the payments (``teos-cli listchannels``, ``claim``, ``claimall``), as the
admin API calls it.

Listing reads the channel store at the time of asking. Claiming changes claims, which the engine thread
drives block by block, so a claim asked by the operator runs on the engine thread too (``on_engine``:
``Engine.call``), between two blocks: an operator's claim and a block never race.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from common.channel import ChannelId
from teos.payments.config import PaymentConfig
from teos.payments.report import payments_report
from teos.payments.runner import ClaimOutcome, ClaimRunner
from teos.payments.store import ChannelStore

T = TypeVar("T")
JsonObject = dict[str, Any]


def outcome_json(outcome: ClaimOutcome) -> JsonObject:
    record = outcome.record
    return {
        "channel_id": str(outcome.channel_id),
        "claimed": record is not None,
        "error": outcome.error,
        "amount": record.amount if record is not None else None,
        "claim_txid": record.txid.hex() if record is not None else None,
        "claim_status": record.status.name.lower() if record is not None else None,
        "deadline": record.deadline if record is not None else None,
    }


class PaymentsOperator:
    """``teos.admin.backend.PaymentsAdmin`` over the channel store and the claim runner."""

    def __init__(
        self,
        store: ChannelStore,
        config: PaymentConfig,
        tip: Callable[[], int],
        runner: ClaimRunner,
        on_engine: Callable[[Callable[[], Any]], Any],
    ) -> None:
        self.store = store
        self.config = config
        self.tip = tip
        self.runner = runner
        self.on_engine = on_engine

    def channels(self) -> JsonObject:
        return payments_report(self.store, self.tip(), self.config).to_json()

    def claim(self, channel_id: ChannelId) -> JsonObject:
        outcome: ClaimOutcome = self.on_engine(lambda: self.runner.claim(channel_id, self.tip()))
        return outcome_json(outcome)

    def claim_all(self) -> JsonObject:
        outcomes: list[ClaimOutcome] = self.on_engine(lambda: self.runner.claim_all(self.tip()))
        return {"claims": [outcome_json(o) for o in outcomes]}
