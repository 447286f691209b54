"""The worked examples of docs/PAYMENTS.md, computed from fixed keys by this code.

Every signature is deterministic (RFC6979), so each example has one right value; ``test_docs.py`` checks
that the document shows exactly these, so a client writer can test against them. To refresh the document
after a deliberate format change::

    .venv/bin/python -m tests.payments.doc_examples --write docs/PAYMENTS.md
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from coincurve import PrivateKey

from common import channel, crypto, receipts, script
from common.channel import ChannelId, ChannelParams
from common.channel_wire import (
    PaymentError,
    PaymentTerms,
    Refusal,
    channel_response,
    error_body,
    get_channel_message,
    make_get_channel_request,
    make_open_request,
    make_pay_request,
    open_message,
    pay_response,
    payment_required_body,
    terms_response,
)
from common.tx import TxOut
from common.types import Dialect, Txid, UserId
from teos.payments.handler import channel_view
from teos.payments.state import ChannelState, Grant
from teos.payments.tower_key import TowerPaymentKey

# A marker, then a fenced block whose body (never empty, never containing a fence) is the example.
MARKER = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```[a-z]*\n((?:(?!```)[\s\S])+?)\n```")


def _h(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


TOWER_SECRET = _h("teos docs tower")
USER_SECRET = _h("teos docs user channel key")
TIP = 870_000


def examples() -> dict[str, str]:
    tower_id = crypto.public_key(TOWER_SECRET)
    pay_key = TowerPaymentKey.from_tower_secret(TOWER_SECRET)
    user_key = PrivateKey(USER_SECRET).public_key.format()
    user_rust = crypto.public_key(_h("teos docs user id"))
    user_python = crypto.public_key(_h("teos docs python user id"))
    change = script.p2wpkh(PrivateKey(_h("teos docs user change")).public_key.format())
    terms = PaymentTerms(pay_key.public_key, 2000, 10000, 4320, 3, 288, 52560, 2000, 144, "mainnet")
    expiry = TIP + 8640
    funding_txid = Txid(hashlib.sha256(hashlib.sha256(b"docs funding tx").digest()).digest())
    params = ChannelParams(
        ChannelId(funding_txid, 0), 250_000, user_key, pay_key.public_key, expiry, change, 2000
    )
    params.validate()
    out: dict[str, str] = {}

    def js(value: object) -> str:
        return json.dumps(value, indent=2)

    terms_sig = crypto.sign(terms.message(), TOWER_SECRET)
    out["terms-message"] = terms.message().hex()
    out["terms-response"] = js({**terms_response(tower_id, terms, terms_sig), "tip_height": TIP})
    out["witness-script"] = params.witness_script.hex()
    out["funding-script"] = params.script_pubkey.hex()
    out["funding-address"] = params.address("mainnet")

    open_request = make_open_request(params, USER_SECRET)
    out["open-message"] = open_message(params).hex()
    out["open-request"] = js(open_request.to_json())
    state = ChannelState(params, TIP)
    view = channel_view(state)
    out["open-response"] = js(channel_response(view, crypto.sign(view.ack_message(), TOWER_SECRET)))

    pay1 = make_pay_request(params, 1, 2000, UserId(user_rust.raw), Dialect.RUST, USER_SECRET)
    out["payment-tx"] = pay1.payment_tx.raw.hex()
    out["pay-message"] = pay1.message().hex()
    out["pay-request-rust"] = js(pay1.to_json())
    grant1 = Grant(params.channel_id, 1, user_rust, Dialect.RUST, 1, 10000, 4320)
    state = state.with_payment(1, 2000, pay1.payment_signature, grant1)
    view = channel_view(state)
    out["ack-message"] = view.ack_message().hex()
    receipt = receipts.registration_receipt(Dialect.RUST, user_rust, 10000, TIP, TIP + 4320)
    out["pay-response-rust"] = js(
        pay_response(
            Dialect.RUST, user_rust, 10000, TIP, TIP + 4320, crypto.sign(receipt, TOWER_SECRET), 1, view,
            crypto.sign(view.ack_message(), TOWER_SECRET),
        )
    )  # fmt: skip

    pay2 = make_pay_request(params, 2, 6000, user_python, Dialect.PYTHON, USER_SECRET)
    out["pay-request-python"] = js(pay2.to_json())
    grant2 = Grant(params.channel_id, 2, user_python, Dialect.PYTHON, 2, 20000, 8640)
    state = state.with_payment(2, 6000, pay2.payment_signature, grant2)
    view = channel_view(state)
    receipt = receipts.registration_receipt(Dialect.PYTHON, user_python, 20000, TIP, TIP + 8640)
    out["pay-response-python"] = js(
        pay_response(
            Dialect.PYTHON, user_python, 20000, TIP, TIP + 8640, crypto.sign(receipt, TOWER_SECRET), 2, view,
            crypto.sign(view.ack_message(), TOWER_SECRET),
        )
    )  # fmt: skip

    get = make_get_channel_request(params.channel_id, USER_SECRET)
    out["get-channel-message"] = get_channel_message(params.channel_id).hex()
    out["get-channel-request"] = js(get.to_json())
    out["get-channel-response"] = js(channel_response(view, crypto.sign(view.ack_message(), TOWER_SECRET)))

    claim = channel.claim_tx(params, 6000, pay2.payment_signature, pay_key.secret)
    out["claim-tx"] = claim.raw.hex()
    refund = channel.refund_tx(params, script.p2wpkh(user_key), 1000, USER_SECRET)
    out["refund-tx"] = refund.raw.hex()

    for dialect in Dialect:
        out[f"register-402-{dialect.value}"] = js(payment_required_body(dialect, tower_id, terms, terms_sig))
    refusal = PaymentError(
        Refusal.FUNDING_UNCONFIRMED, "funding output ...:0 has 1 confirmations; 3 are required"
    )
    out["error-rust"] = js(error_body(refusal, Dialect.RUST))
    out["error-python"] = js(error_body(refusal, Dialect.PYTHON))

    coin_key = _h("teos docs wallet coin")
    coin_script = script.p2wpkh(PrivateKey(coin_key).public_key.format())
    funding_psbt = channel.funding_psbt(
        user_key, pay_key.public_key, expiry, 250_000,
        [(Txid(_h("teos docs wallet utxo")), 1, TxOut(300_000, coin_script))], TxOut(49_700, coin_script),
    )  # fmt: skip
    out["funding-psbt"] = funding_psbt.to_base64()
    return out


def render(document: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        fence = match.group(0).split("\n", 2)[1]
        return f"<!-- example: {name} -->\n{fence}\n{values[name]}\n```"

    return MARKER.sub(sub, document)


def shown(document: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in MARKER.finditer(document)}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        path.write_text(render(path.read_text(), examples()))
    else:
        for name, value in examples().items():
            print(f"<!-- example: {name} -->\n{value}\n")
