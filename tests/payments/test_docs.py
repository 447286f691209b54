"""docs/PAYMENTS.md shows exactly the examples the code computes, and each example checks out: the
signatures verify, the requests parse, the transactions are the ones the parameters give."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import channel, crypto, psbt
from common.channel_wire import (
    ChannelView,
    PaymentTerms,
    parse_get_channel_request,
    parse_open_request,
    parse_pay_request,
)
from common.tx import decode_transaction
from common.types import UserId
from tests.payments.doc_examples import examples, shown

DOC = Path(__file__).resolve().parents[2] / "docs" / "PAYMENTS.md"


def test_the_document_shows_the_computed_examples() -> None:
    expected = examples()
    in_doc = shown(DOC.read_text())
    assert set(in_doc) == set(expected)
    for name, value in expected.items():
        assert in_doc[name] == value, (
            f"example {name} is stale: run python -m tests.payments.doc_examples --write docs/PAYMENTS.md"
        )


def test_the_examples_check_out() -> None:
    ex: dict[str, Any] = {k: (json.loads(v) if v.startswith("{") else v) for k, v in examples().items()}
    tower_id = UserId.from_hex(ex["terms-response"]["tower_id"])
    terms = PaymentTerms.from_json(ex["terms-response"]["terms"])
    assert terms.message().hex() == ex["terms-message"]
    assert crypto.verify(terms.message(), ex["terms-response"]["signature"], tower_id)

    open_request = parse_open_request(ex["open-request"])
    assert open_request.signed_by_user(terms.tower_key)
    params = open_request.params(terms.tower_key)
    assert params.witness_script.hex() == ex["witness-script"]
    assert params.address("mainnet") == ex["funding-address"]
    view = ChannelView.from_json(ex["open-response"]["channel"])
    assert view.params == params
    assert crypto.verify(view.ack_message(), ex["open-response"]["channel_signature"], tower_id)

    for name in ("pay-request-rust", "pay-request-python"):
        pay = parse_pay_request(ex[name])
        assert crypto.verify(pay.message(), pay.signature, UserId(params.user_key))
        assert pay.payment_tx.raw == channel.payment_tx(params, pay.amount).raw
        assert channel.verify_payment_signature(params, pay.amount, pay.payment_signature)
    for name in ("pay-response-rust", "pay-response-python", "get-channel-response"):
        view = ChannelView.from_json(ex[name]["channel"])
        assert crypto.verify(view.ack_message(), ex[name]["channel_signature"], tower_id)
    get = parse_get_channel_request(ex["get-channel-request"])
    assert crypto.verify(bytes.fromhex(ex["get-channel-message"]), get.signature, UserId(params.user_key))

    claim = decode_transaction(bytes.fromhex(ex["claim-tx"]))
    assert claim.txid == channel.payment_tx(params, 6000).txid
    refund = decode_transaction(bytes.fromhex(ex["refund-tx"]))
    assert refund.locktime == params.expiry
    funding = psbt.parse_base64(ex["funding-psbt"])
    assert funding.tx.outputs[0] == params.funding_output
    assert funding.outputs[0][bytes([psbt.OUT_WITNESS_SCRIPT])] == params.witness_script
