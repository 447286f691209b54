"""The user side of paid subscriptions without HTTP: the channel records a client keeps (0600 files, the
pending file superseded once funded), and ``PaymentClient`` against a real payment gateway in this process,
honest or not: every answer is checked against the tower id and against what was asked."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from common import crypto
from common.channel_wire import (
    PaymentError,
    make_pay_request,
    parse_get_channel_request,
    parse_open_request,
    parse_pay_request,
)
from common.client import ReceiptError, TowerClient
from common.errors import TeosError
from common.payment_client import PLACEHOLDER_ID, ChannelBook, ChannelRecord, PaymentClient
from common.types import Dialect, UserId
from teos.api.errors import http_status
from teos.payments.config import PaymentConfig
from teos.payments.handler import PaymentHandler
from teos.payments.income import FixedPrice
from teos.payments.service import LocalPayments, PaymentCore, PaymentGateway
from teos.payments.store import ChannelStore
from teos.storage.atomic import MemoryAtomicStore
from tests.payments.support import TOWER_KEY, USER_SECRET, FakeChain, FakeLedger, make_params, secret

PRICE = 1_500
CONFIG = PaymentConfig(price=PRICE)
TOWER_SECRET = secret("client tower")
TOWER_ID = crypto.public_key(TOWER_SECRET)


class InProcessTower:
    """What ``TowerClient`` gives ``PaymentClient``: its user and dialect, and ``request`` answered by a
    payment gateway in this process (signing with ``signing_key``, the tower's own unless a test lies)."""

    def __init__(self, dialect: Dialect, signing_key: bytes = TOWER_SECRET, lose_races: int = 0) -> None:
        self.dialect = dialect
        self.secret_key = crypto.generate_secret_key()
        self.user_id: UserId = crypto.public_key(self.secret_key)
        self.chain = FakeChain(tip=100)
        handler = PaymentHandler(
            CONFIG, ChannelStore(MemoryAtomicStore()), self.chain, FakeLedger(), FixedPrice(PRICE), TOWER_KEY,
            100, 1000,
        )  # fmt: skip
        terms = CONFIG.terms(TOWER_KEY, 100, 1000, "regtest")
        self.gateway = PaymentGateway(handler.rules, LocalPayments(PaymentCore(handler)), terms, signing_key)
        self.lose_races = lose_races
        self.handler = handler

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            if path == "/payment_terms":
                return 200, self.gateway.terms_body()
            if path == "/open_channel":
                return 200, self.gateway.open_channel(parse_open_request(body))
            if path == "/get_channel":
                return 200, self.gateway.get_channel(parse_get_channel_request(body))
            if path == "/pay":
                request = parse_pay_request(body)
                if self.lose_races:  # another client of the channel pays first
                    self.lose_races -= 1
                    snap = self.handler.store.get(request.channel_id)
                    assert snap is not None
                    rival = make_pay_request(snap.state.params, snap.state.nonce + 1,
                                             snap.state.amount + PRICE, UserId(TOWER_KEY), Dialect.RUST,
                                             USER_SECRET)  # fmt: skip
                    self.gateway.pay(rival)
                return 200, self.gateway.pay(request)
        except TeosError as e:
            body = {"error": e.message, "error_code": e.code(self.dialect)}
            if isinstance(e, PaymentError):
                body["reason"] = e.reason.text
            return http_status(e.kind, self.dialect), body
        raise AssertionError(path)


def client(tower: InProcessTower) -> PaymentClient:
    return PaymentClient(cast(TowerClient, tower), TOWER_ID)


def funded_record(tower: InProcessTower, value: int = 50_000) -> ChannelRecord:
    params = make_params(value=value, expiry=600)
    tower.chain.fund(params)
    terms, _ = client(tower).terms()
    return ChannelRecord(TOWER_ID, "127.0.0.1:9814", terms, USER_SECRET, params, funded=True)


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_open_pay_and_resume(dialect: Dialect) -> None:
    tower = InProcessTower(dialect)
    payments = client(tower)
    record = payments.open_channel(funded_record(tower))
    assert record.status == "open" and record.channel_signature
    paid = payments.pay(record, registrations=2)
    assert paid.registrations == 2 and paid.receipt["available_slots"] == 200
    assert (paid.record.nonce, paid.record.amount) == (1, 2 * PRICE) and paid.record.payment_signature
    lost = replace(paid.record, nonce=0, amount=0, payment_signature=b"")
    resumed = payments.get_channel(lost)
    assert (resumed.nonce, resumed.amount) == (1, 2 * PRICE)


def test_a_lost_race_is_retried_after_reading_the_channel() -> None:
    tower = InProcessTower(Dialect.RUST, lose_races=2)
    payments = client(tower)
    record = payments.open_channel(funded_record(tower))
    paid = payments.pay_retrying(record)
    assert paid.record.nonce == 3 and paid.record.amount == 3 * PRICE
    tower.lose_races = 5
    with pytest.raises(Exception, match="409"):
        payments.pay_retrying(paid.record, attempts=2)


def test_the_last_payment_takes_everything_when_its_change_would_be_dust() -> None:
    tower = InProcessTower(Dialect.RUST)
    payments = client(tower)
    record = payments.open_channel(funded_record(tower, value=PRICE * 2 + 500))
    paid = payments.pay(record, registrations=2)  # 3000 leaves a change below dust: pays max_amount
    assert paid.record.amount == record.params.max_amount
    with pytest.raises(ValueError, match="at most"):
        payments.pay(paid.record)


def test_a_tower_signing_with_another_key_is_refused() -> None:
    liar = InProcessTower(Dialect.RUST, signing_key=secret("someone else"))
    with pytest.raises(ReceiptError, match="terms"):
        client(liar).terms()
    honest = InProcessTower(Dialect.RUST)
    record = funded_record(honest)
    liar.chain.fund(record.params)
    with pytest.raises(ReceiptError):
        client(liar).open_channel(record)


def test_an_answer_for_other_parameters_is_refused() -> None:
    tower = InProcessTower(Dialect.RUST)
    record = client(tower).open_channel(funded_record(tower))
    other = replace(record, params=replace(record.params, change_script=b"\x00\x14" + bytes(20)))
    with pytest.raises(ReceiptError, match="other parameters"):
        client(tower).get_channel(other)


def test_channel_records_on_disk(tmp_path: Path) -> None:
    book = ChannelBook(tmp_path)
    tower = InProcessTower(Dialect.RUST)
    funded = funded_record(tower)
    pending = replace(funded, params=replace(funded.params, channel_id=PLACEHOLDER_ID), funded=False)
    path = book.save(pending)
    assert path.name.startswith("pending-") and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert book.pending() == [pending]
    funded_path = book.save(funded)
    assert not path.exists() and book.get(funded.channel_id) == funded
    assert [r.channel_id for r in book.records()] == [funded.channel_id]
    data = json.loads(funded_path.read_text())
    assert data["funding_address"].startswith("bcrt1q") and data["user_secret"] == USER_SECRET.hex()
    data["user_key"] = crypto.public_key(secret("not mine")).hex()
    funded_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not its secret"):
        book.records()
