"""Issue 13, F7: get_subscription_info is read page by page and streamed, in the shape both client
families expect (one JSON object holding the whole list), byte for byte what ``jsonify`` made.

Before: the main process built the whole list for every call (16 concurrent calls for a user with
47,000 appointments took it from 65 to 261 MB, and other users' add_appointment to 785 ms median).
"""

from __future__ import annotations

import json

import pytest

from common.types import Dialect
from teos.api import ipc, public
from teos.api.ipc import CoreClient, RemoteCore
from teos.service import SUBSCRIPTION_PAGE
from teos.storage.store import Store
from tests.api.support import Client, Tower, appointment


def fill(tower: Tower, client: Client, n: int) -> list[str]:
    """``n`` appointments for ``client``; their locators in the tower's order (locator order)."""
    for _ in range(n):
        status, body = tower.add(client, appointment())
        assert status == 200, body
    return sorted(locator.hex() for _, locator in tower.gatekeeper.user_appointments(client.user_id))


def expected_bytes(dialect: Dialect, locators: list[str], slots: int, expiry: int) -> bytes:
    field = "appointments" if dialect is Dialect.PYTHON else "locators"
    body = {field: locators, "available_slots": slots, "subscription_expiry": expiry}
    return (json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n").encode()


@pytest.mark.parametrize("dialect", [Dialect.PYTHON, Dialect.RUST])
@pytest.mark.parametrize("n", [0, 1, 7, 9])
def test_every_page_in_one_json_object_exactly_as_before(tower: Tower, dialect: Dialect, n: int) -> None:
    tower.service.subscription_page_size = 3  # after a first page of 2: 0, 1, 2+3+2 (7), 2+3+3+1 (9)
    tower.service.subscription_first_page_size = 2
    client = Client.new()
    tower.register(client, dialect)
    locators = fill(tower, client, n)
    with tower.app.test_client().post(
        "/get_subscription_info", json={"signature": client.sign(b"get subscription info")},
        headers={"User-Agent": "python-requests/2.31.0"} if dialect is Dialect.PYTHON else {"User-Agent": ""},
    ) as response:
        data = response.data
    assert response.status_code == 200 and response.content_type == "application/json"
    user = tower.gatekeeper.get_user(client.user_id)
    assert user is not None
    assert data == expected_bytes(dialect, locators, user.available_slots, user.subscription_expiry)
    with tower.app.test_request_context():  # what the endpoint answered before it streamed
        field = "appointments" if dialect is Dialect.PYTHON else "locators"
        before = public.jsonify({field: locators, "available_slots": user.available_slots,
                                 "subscription_expiry": user.subscription_expiry})
    assert data == before.get_data()


def test_refusals_come_before_any_streaming(tower: Tower) -> None:
    client = Client.new()
    tower.register(client)
    tower.chain.tip_height = 10_000  # expired
    status, body = tower.subscription_info(client)
    assert status == 400 and "expired" in body["error"]


def test_big_answers_at_once_are_bounded_and_their_slots_come_back(
    tower: Tower, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(public, "BIG_ANSWER_INTERVAL", 0.0)
    tower.service.subscription_page_size = 2
    tower.service.subscription_first_page_size = 2
    client = Client.new()
    tower.register(client)
    fill(tower, client, 5)
    body = {"signature": client.sign(b"get subscription info")}
    headers = {"User-Agent": "python-requests/2.31.0"}
    held = [tower.app.test_client().post("/get_subscription_info", json=body, headers=headers, buffered=False)
            for _ in range(public.BIG_ANSWERS_AT_ONCE)]
    assert all(r.status_code == 200 for r in held)
    with tower.app.test_client().post("/get_subscription_info", json=body, headers=headers) as refused:
        assert refused.status_code == 503
    held[0].close()  # a reader gone before reading anything: its slot comes back anyway
    with tower.app.test_client().post("/get_subscription_info", json=body, headers=headers) as again:
        assert again.status_code == 200 and len(json.loads(again.data)["appointments"]) == 5
    read = tower.app.test_client().post("/get_subscription_info", json=body, headers=headers)
    assert len(json.loads(read.data)["appointments"]) == 5  # read to the end, not closed yet ...
    with tower.app.test_client().post("/get_subscription_info", json=body, headers=headers) as another:
        assert another.status_code == 200  # ... its slot is back already
    read.close()
    for r in held[1:]:
        r.close()


def test_one_user_gets_a_big_answer_every_interval(tower: Tower, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(public, "big_answer_clock", lambda: now[0])
    tower.service.subscription_page_size = 2
    tower.service.subscription_first_page_size = 2
    big, small = Client.new(), Client.new()
    for client, n in ((big, 5), (small, 1)):
        tower.register(client)
        fill(tower, client, n)
    assert tower.subscription_info(big)[0] == 200
    now[0] += public.BIG_ANSWER_INTERVAL - 1
    assert tower.subscription_info(big)[0] == 503
    assert tower.subscription_info(small)[0] == 200  # one page: never limited
    now[0] += 1
    assert tower.subscription_info(big)[0] == 200


def test_a_worker_cannot_ask_the_main_process_for_a_huge_page(store: Store) -> None:
    tower = Tower.build(store, remote=True)
    assert tower.core_server is not None
    client = Client.new()
    tower.register(client)
    fill(tower, client, 3)
    core = RemoteCore(CoreClient(tower.core_server.address, tower.core_server.token, timeout=10))
    info = core.get_subscription_info(client.user_id, 10**9)
    assert len(info.locators) == 3 and info.next_page is None
    assert ipc._page_limit(10**9) == ipc.MAX_PAGE
    with pytest.raises(TypeError):
        ipc._page_limit("many")
    assert SUBSCRIPTION_PAGE <= ipc.MAX_PAGE
    tower.close()
