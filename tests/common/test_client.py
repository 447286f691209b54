"""The user client (``common.client``), its transport (``common.http``) and the request texts and bodies
(``common.messages``): what every tool here sends a tower, and how it checks what comes back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from common import crypto, messages, receipts
from common.appointment import Appointment
from common.client import ReceiptError, TowerClient, check_appointment, check_registration
from common.http import BadResponse, HttpError, JsonHttp, Unreachable
from common.types import Dialect, Locator
from teos.devtools import free_port

TOWER = crypto.generate_secret_key()
TOWER_ID = crypto.public_key(TOWER)


def test_the_signed_texts_and_the_bodies_of_each_dialect() -> None:
    locator = Locator(bytes(range(16)))
    assert messages.get_appointment_message(locator) == b"get appointment 000102030405060708090a0b0c0d0e0f"
    assert messages.GET_SUBSCRIPTION_INFO_MESSAGE == b"get subscription info"
    user = crypto.public_key(crypto.generate_secret_key())
    assert messages.register_body(user, Dialect.PYTHON) == {"public_key": user.hex()}
    assert messages.register_body(user, Dialect.RUST) == {"user_id": user.hex()}
    appointment = Appointment(locator, b"\x01\x02", 20)
    wire = {"locator": locator.hex(), "encrypted_blob": "0102", "to_self_delay": 20}
    assert messages.add_appointment_body(appointment, "sig") == {"appointment": wire, "signature": "sig"}
    assert messages.get_appointment_body(locator, "s") == {"locator": locator.hex(), "signature": "s"}
    assert messages.get_subscription_info_body("s") == {"signature": "s"}


def registration(dialect: Dialect, user_secret: bytes, signer: bytes = TOWER) -> dict[str, Any]:
    user_id = crypto.public_key(user_secret)
    signed = receipts.registration_receipt(dialect, user_id, 100, 10, 1000)
    answer = {"user_id": user_id.hex(), "available_slots": 100, "subscription_expiry": 1000,
              "subscription_signature": crypto.sign(signed, signer)}  # fmt: skip
    if dialect is Dialect.RUST:
        answer["subscription_start"] = 10
    return answer


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
def test_a_registration_signed_by_the_tower_is_kept(dialect: Dialect) -> None:
    user = crypto.generate_secret_key()
    receipt = check_registration(registration(dialect, user), dialect, crypto.public_key(user), TOWER_ID)
    assert receipt["available_slots"] == 100 and receipt["subscription_expiry"] == 1000
    assert ("subscription_start" in receipt) is (dialect is Dialect.RUST)


def test_a_registration_signed_by_another_key_is_refused_with_the_key_seen() -> None:
    user, other = crypto.generate_secret_key(), crypto.generate_secret_key()
    answer = registration(Dialect.RUST, user, other)
    with pytest.raises(ReceiptError, match="refusing this tower") as e:
        check_registration(answer, Dialect.RUST, crypto.public_key(user), TOWER_ID)
    assert e.value.details["recovered_key"] == crypto.public_key(other).hex()


@pytest.mark.parametrize("change", [
    {"user_id": "02" * 33}, {"available_slots": "100"}, {"subscription_start": True},
    {"subscription_signature": "not z-base-32!"}, {"available_slots": 101},
])  # fmt: skip
def test_a_registration_answer_that_is_not_what_was_asked_is_refused(change: dict[str, Any]) -> None:
    user = crypto.generate_secret_key()
    answer = {**registration(Dialect.RUST, user), **change}
    with pytest.raises(ReceiptError):
        check_registration(answer, Dialect.RUST, crypto.public_key(user), TOWER_ID)


def test_an_appointment_receipt_for_another_locator_is_refused() -> None:
    appointment = Appointment(Locator(b"\x01" * 16), b"blob", 20)
    user_signature = crypto.sign(appointment.serialize(), crypto.generate_secret_key())
    signed = receipts.appointment_receipt(Dialect.RUST, user_signature, 50)
    answer = {"locator": appointment.locator.hex(), "start_block": 50}
    answer["signature"] = crypto.sign(signed, TOWER)
    receipt = check_appointment(answer, Dialect.RUST, appointment, user_signature, TOWER_ID)
    assert receipt["start_block"] == 50 and receipt["tower_signature"] == answer["signature"]
    elsewhere = {**answer, "locator": "02" * 16}
    with pytest.raises(ReceiptError, match="another locator"):
        check_appointment(elsewhere, Dialect.RUST, appointment, user_signature, TOWER_ID)


# -- the transport, against a server that drops kept-alive connections ---------------------------------


class _Server:
    """Answers POST /echo with the JSON it got and the User-Agent, then closes the connection without
    saying so (as a server that times idle connections out does); other paths answer what ``replies``
    holds for them."""

    def __init__(self) -> None:
        self.agents: list[str | None] = []
        self.replies: dict[str, tuple[int, bytes]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer.agents.append(self.headers.get("User-Agent"))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, data = outer.replies.get(self.path, (200, body))
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    try:
        yield s
    finally:
        s.close()


def test_a_dropped_kept_alive_connection_is_opened_again(server: _Server) -> None:
    http = JsonHttp(f"http://127.0.0.1:{server.port}")
    assert http.request("POST", "/echo", {"n": 1}) == (200, {"n": 1})
    assert http.request("POST", "/echo", {"n": 2}) == (200, {"n": 2})  # the first connection is gone
    assert len(server.agents) == 2


def test_answers_that_are_not_json(server: _Server) -> None:
    http = JsonHttp(f"http://127.0.0.1:{server.port}")
    server.replies["/text"] = (200, b"<html>")
    with pytest.raises(BadResponse):
        http.request("POST", "/text")
    server.replies["/broken"] = (502, b"Bad Gateway")
    assert http.request("POST", "/broken") == (502, {"error": "Bad Gateway"})
    with pytest.raises(HttpError) as e:
        http.call("POST", "/broken")
    assert e.value.status == 502


def test_nobody_listening_is_unreachable() -> None:
    with pytest.raises(Unreachable):
        JsonHttp(f"http://127.0.0.1:{free_port()}", timeout=2).request("GET", "/ping")


def test_the_client_identifies_itself_as_its_family_does(server: _Server) -> None:
    for dialect in (Dialect.PYTHON, Dialect.RUST):
        TowerClient("127.0.0.1", server.port, dialect).request("POST", "/echo", {})
    TowerClient.at(f"http://127.0.0.1:{server.port}", Dialect.RUST, user_agent="teos-client").request(
        "POST", "/echo", {})  # fmt: skip
    assert server.agents == ["python-requests/2.31.0", None, "teos-client"]


def test_the_client_signs_what_it_sends(server: _Server) -> None:
    server.replies["/get_subscription_info"] = (200, json.dumps({"available_slots": 1}).encode())
    client = TowerClient("127.0.0.1", server.port, Dialect.RUST)
    assert client.get_subscription_info() == {"available_slots": 1}
    status, echoed = client.request("POST", "/echo", messages.get_appointment_body(Locator(bytes(16)), "x"))
    assert status == 200 and echoed["signature"] == "x"
    signature = crypto.sign(messages.GET_SUBSCRIPTION_INFO_MESSAGE, client.secret_key)
    assert crypto.recover_public_key(messages.GET_SUBSCRIPTION_INFO_MESSAGE, signature) == client.user_id
