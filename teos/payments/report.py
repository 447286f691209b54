"""What the operator sees of the payments: every channel (``teos-cli listchannels``) and the totals
``/metrics`` shows, read from the channel store at the time of asking (nothing is kept in sync by hand).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from teos.payments.claims import ChannelSummary, summarize, totals
from teos.payments.config import PaymentConfig
from teos.payments.state import ChannelState, ChannelStatus, ClaimRecord, ClaimStatus
from teos.payments.store import ChannelStore


@dataclass(frozen=True)
class ChannelLine:
    state: ChannelState
    claim: ClaimRecord | None
    summary: ChannelSummary

    def to_json(self) -> dict[str, Any]:
        s, p = self.summary, self.state.params
        return {
            "channel_id": str(s.channel_id),
            "status": s.status.name.lower(),
            "funding_value": p.funding_value,
            "expiry": p.expiry,
            "blocks_to_expiry": s.blocks_to_expiry,
            "paid": s.amount,
            "claimed": s.claimed,
            "unclaimed": s.unclaimed,
            "at_risk": s.at_risk,
            "registrations": self.state.registrations,
            "nonce": self.state.nonce,
            "claim_status": s.claim_status.name.lower() if s.claim_status is not None else None,
            "claim_txid": self.claim.txid.hex() if self.claim is not None else None,
            "claim_confirmed_height": (self.claim.confirmed_height or None)
            if self.claim is not None
            else None,
        }


@dataclass(frozen=True)
class PaymentsReport:
    tip: int
    lines: list[ChannelLine]
    sats: dict[str, int] = field(default_factory=dict)  # earned, claimed, at_risk, lost
    channels_by_status: dict[str, int] = field(default_factory=dict)
    claims_by_status: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tip_height": self.tip,
            "channels": [line.to_json() for line in self.lines],
            "totals": {**self.sats, "channels": self.channels_by_status, "claims": self.claims_by_status},
        }


def payments_report(store: ChannelStore, tip: int, config: PaymentConfig) -> PaymentsReport:
    claims = {c.record.channel_id: c.record for c in store.claims()}
    lines = []
    for snap in store.all():
        claim = claims.get(snap.state.channel_id)
        lines.append(ChannelLine(snap.state, claim, summarize(snap.state, claim, tip, config)))
    t = totals([line.summary for line in lines], claims)
    by_status = {s.name.lower(): 0 for s in ChannelStatus}
    for line in lines:
        by_status[line.summary.status.name.lower()] += 1
    by_claim = {s.name.lower(): 0 for s in ClaimStatus}
    for record in claims.values():
        by_claim[record.status.name.lower()] += 1
    return PaymentsReport(
        tip,
        lines,
        {"earned": t.earned, "claimed": t.claimed, "at_risk": t.at_risk, "lost": t.lost},
        by_status,
        by_claim,
    )
