"""Issue 13, F2, over the API: a 60 KB signature is answered like any bad signature, never decoded."""

from __future__ import annotations

import random

import pytest

from common import crypto, zbase32
from tests.api.support import Client, Tower
from tests.common.test_untrusted_cost import DecodeSpy


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch) -> DecodeSpy:
    spy = DecodeSpy()
    monkeypatch.setattr(crypto.zbase32, "decode", spy)
    return spy


def test_api_answers_a_60k_signature_as_a_bad_one_without_decoding_it(
    tower: Tower, decode_spy: DecodeSpy
) -> None:
    """python-teos clients may send bodies up to the global limit (rust-teos's are refused at 127 B)."""
    rust = False
    junk = "".join(random.choices(zbase32.ALPHABET, k=60_000))  # under the 64 KiB body limit
    user = Client.new()
    tower.register(user)
    bad = tower.post("/get_subscription_info", {"signature": junk[:103] + "y"}, rust=rust)  # wrong length too
    status, body = tower.post("/get_subscription_info", {"signature": junk}, rust=rust)
    assert (status, body) == bad
    assert status == (401 if rust else 400)
    assert body["error_code"] == (7 if rust else -8)
    assert all(n == 104 for n in decode_spy.lengths)
