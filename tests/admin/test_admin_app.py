"""The admin API over a real LevelDB: fields, authentication, paging, readiness and stop."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from common.types import BlockHash, Locator, UserId
from teos.admin import COOKIE_USER, Metrics, StoreAdminBackend, create_admin_app
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.admin.support import FakeEngineStatus, Filler, new_user_id

GOLDEN = Path(__file__).parent / "golden" / "gettowerinfo.json"
COOKIE = "ab" * 32
TOWER_ID = new_user_id()


def auth(secret: str = COOKIE, user: str = COOKIE_USER) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class StopRecorder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def stopper() -> StopRecorder:
    return StopRecorder()


@pytest.fixture
def backend(
    store: Store, engine_status: FakeEngineStatus, stopper: StopRecorder, index: LocatorIndex
) -> StoreAdminBackend:
    return StoreAdminBackend(store, engine_status, TOWER_ID, stopper, index)


@pytest.fixture
def client(backend: StoreAdminBackend) -> FlaskClient:
    return create_admin_app(backend, COOKIE, Metrics()).test_client()


def get(client: FlaskClient, path: str) -> Any:
    resp = client.get(path, headers=auth())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def type_shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: type_shape(v) for k, v in value.items()}
    names = {bool: "bool", int: "int", str: "str", float: "float", type(None): "null", list: "list"}
    return names[type(value)]


# -- authentication ------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    auth(secret="cd" * 32),
    auth(user="admin"),
    {"Authorization": "Bearer " + COOKIE},
    {"Authorization": "Basic !!!"},
])
@pytest.mark.parametrize("method,path", [
    ("GET", "/gettowerinfo"), ("GET", "/getallappointments"), ("GET", "/getusers"),
    ("GET", "/getuser/" + "02" * 33), ("GET", "/getappointments/" + "00" * 16), ("POST", "/stop"),
    ("GET", "/nonexistent"),
])
def test_refuses_without_the_right_cookie(client: FlaskClient, stopper: StopRecorder, headers: dict[str, str],
                                          method: str, path: str) -> None:
    resp = client.open(path, method=method, headers=headers)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic")
    assert "cookie" in resp.get_json()["error"]
    assert stopper.calls == 0


def test_empty_cookie_is_refused_at_construction(backend: StoreAdminBackend) -> None:
    with pytest.raises(ValueError):
        create_admin_app(backend, "")


# -- gettowerinfo --------------------------------------------------------------------------------------


def test_gettowerinfo_counts_and_fields_match_golden(client: FlaskClient, filler: Filler) -> None:
    users = [filler.user() for _ in range(3)]
    filler.appointments(users[0], 5)
    filler.appointments(users[1], 2)
    filler.tracker(users[2])
    info = get(client, "/gettowerinfo")
    assert info["tower_id"] == TOWER_ID.hex()
    counts = (info["n_registered_users"], info["n_watcher_appointments"], info["n_responder_trackers"])
    assert counts == (3, 7, 1)
    assert info["n_appointments"] == 8  # no gatekeeper counter stored: counted from the i| index
    assert info["bitcoind_reachable"] is True and info["ready"] is True and info["not_ready_reason"] is None
    assert info["tip_height"] == 120
    assert info["last_processed_block"] == {"block_hash": "11" * 32, "height": 120}
    assert (info["blocks_behind"], info["catching_up"]) == (0, False)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(type_shape(info), indent=2, sort_keys=True) + "\n")
    assert type_shape(info) == json.loads(GOLDEN.read_text())


def test_gettowerinfo_catching_up_and_unreachable(
    client: FlaskClient, engine_status: FakeEngineStatus
) -> None:
    engine_status.tip, engine_status.processed = 500, 400
    info = get(client, "/gettowerinfo")
    assert (info["catching_up"], info["blocks_behind"], info["ready"]) == (True, 100, False)
    assert "100 blocks behind" in info["not_ready_reason"]
    engine_status.processed = 499  # one block behind: the block in hand, still ready
    assert get(client, "/gettowerinfo")["ready"] is True
    engine_status.reachable = False
    info = get(client, "/gettowerinfo")
    assert (info["bitcoind_reachable"], info["ready"]) == (False, False)
    assert info["not_ready_reason"] == "bitcoind is not reachable"


def test_gettowerinfo_when_engine_status_fails_reads_the_stored_pointer(
    client: FlaskClient, engine_status: FakeEngineStatus, filler: Filler
) -> None:
    engine_status.fail = True
    block = BlockHash(os.urandom(32))
    filler.last_block(block, 77)
    info = get(client, "/gettowerinfo")
    assert info["last_processed_block"] == {"block_hash": block.hex(), "height": 77}
    assert (info["bitcoind_reachable"], info["ready"], info["tip_height"]) == (False, False, None)


def test_stale_tip_check_is_not_ready(client: FlaskClient, engine_status: FakeEngineStatus) -> None:
    engine_status.extra["seconds_since_tip_check"] = 5.0
    assert client.get("/ready").status_code == 200
    engine_status.extra["seconds_since_tip_check"] = 3600.0
    resp = client.get("/ready")
    assert resp.status_code == 503
    assert "last checked" in resp.get_json()["reason"]


def test_tower_that_stopped_watching_is_not_ready_and_says_why(
    client: FlaskClient, engine_status: FakeEngineStatus
) -> None:
    engine_status.extra["stopped_watching"] = None
    assert client.get("/ready").status_code == 200
    engine_status.extra["stopped_watching"] = "thread engine stopped"
    resp = client.get("/ready")
    assert resp.status_code == 503
    assert resp.get_json()["reason"].startswith("the tower stopped watching the chain: thread engine stopped")
    info = get(client, "/gettowerinfo")
    assert info["ready"] is False and "thread engine stopped" in info["not_ready_reason"]


# -- readiness and metrics need no cookie ----------------------------------------------------------------


def test_ready_endpoint(client: FlaskClient, engine_status: FakeEngineStatus) -> None:
    resp = client.get("/ready")
    assert (resp.status_code, resp.get_json()) == (200, {"ready": True, "reason": None})
    engine_status.tip = -1  # the engine has not seen bitcoind's tip yet
    resp = client.get("/ready")
    assert resp.status_code == 503 and resp.get_json()["ready"] is False


def test_metrics_endpoint_pulls_state_from_the_database(client: FlaskClient, filler: Filler) -> None:
    uid = filler.user()
    filler.appointments(uid, 4)
    text = client.get("/metrics").get_data(as_text=True)
    assert "teos_registered_users 1.0" in text
    assert "teos_watcher_appointments 4.0" in text
    assert "teos_ready 1.0" in text
    assert "teos_bitcoind_reachable 1.0" in text


# -- listings ----------------------------------------------------------------------------------------------


def test_getallappointments_pages_through_every_entry(client: FlaskClient, filler: Filler) -> None:
    uid = filler.user()
    records = filler.appointments(uid, 253)
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = get(client, f"/getallappointments?section=watcher&limit=50&cursor={cursor}")
        pages += 1
        assert len(page["items"]) <= 50
        seen.extend(item["uuid"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 6
    assert sorted(seen) == sorted(r.uuid.hex() for r in records)
    assert len(set(seen)) == len(seen)
    item = page["items"][0]
    assert set(item) == {"uuid", "locator", "user_id", "encrypted_blob", "to_self_delay", "start_block",
                         "user_signature", "dialect"}


def test_exactly_full_last_page_has_no_next_cursor(client: FlaskClient, filler: Filler) -> None:
    filler.appointments(filler.user(), 10)
    page = get(client, "/getallappointments?section=watcher&limit=10")
    assert (len(page["items"]), page["next_cursor"]) == (10, None)


def test_getallappointments_responder_section(client: FlaskClient, filler: Filler) -> None:
    uid = filler.user()
    trackers = [filler.tracker(uid) for _ in range(3)]
    page = get(client, "/getallappointments?section=responder&limit=2")
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = get(client, f"/getallappointments?section=responder&limit=2&cursor={page['next_cursor']}")
    got = {i["uuid"]: i for i in page["items"] + rest["items"]}
    assert set(got) == {t.uuid.hex() for t in trackers}
    t = trackers[0]
    assert got[t.uuid.hex()]["penalty_txid"] == t.penalty_txid.hex()
    assert got[t.uuid.hex()]["dispute_txid"] == t.dispute_txid.hex()
    assert got[t.uuid.hex()]["confirmed_height"] == 119


@pytest.mark.parametrize("query,message", [
    ("section=nope", "unknown section"),
    ("cursor=zz", "hex"),
    ("cursor=abcd", "bytes"),
    ("limit=0", "limit"),
    ("limit=x", "integer"),
    ("limit=100000", "limit"),
])
def test_bad_listing_arguments_are_400(client: FlaskClient, query: str, message: str) -> None:
    resp = client.get("/getallappointments?" + query, headers=auth())
    assert resp.status_code == 400
    assert message in resp.get_json()["error"]


def test_getappointments_by_locator_finds_watched_and_responded(client: FlaskClient, filler: Filler) -> None:
    locator = Locator(os.urandom(16))
    users = [filler.user() for _ in range(3)]
    filler.appointments(users[0], 1, locator)
    filler.appointments(users[1], 1, locator)
    filler.appointments(users[1], 3)  # other locators
    tracker = filler.tracker(users[2], locator)
    filler.tracker(users[2])
    body = get(client, f"/getappointments/{locator.hex()}")
    assert body["locator"] == locator.hex()
    assert sorted(a["user_id"] for a in body["watcher_appointments"]) == sorted(u.hex() for u in users[:2])
    assert [t["uuid"] for t in body["responder_trackers"]] == [tracker.uuid.hex()]
    empty = get(client, f"/getappointments/{'00' * 16}")
    assert (empty["watcher_appointments"], empty["responder_trackers"]) == ([], [])
    resp = client.get("/getappointments/xyz", headers=auth())
    assert resp.status_code == 400 and "locator" in resp.get_json()["error"]


def test_getusers_and_getuser(client: FlaskClient, filler: Filler) -> None:
    users = [filler.user() for _ in range(7)]
    records = filler.appointments(users[0], 3)
    filler.tracker(users[0])
    page = get(client, "/getusers?limit=4")
    rest = get(client, f"/getusers?limit=4&cursor={page['next_cursor']}")
    assert rest["next_cursor"] is None
    listed = [u["user_id"] for u in page["items"] + rest["items"]]
    assert sorted(listed) == sorted(u.hex() for u in users)
    assert set(page["items"][0]) == {"user_id", "dialect", "available_slots", "subscription_start",
                                     "subscription_expiry"}
    user = get(client, f"/getuser/{users[0].hex()}")
    assert user["available_slots"] == 100 and user["dialect"] == "rust"
    assert len(user["appointments"]) == 4
    assert {a["uuid"] for a in user["appointments"]} >= {r.uuid.hex() for r in records}
    missing = client.get(f"/getuser/{new_user_id().hex()}", headers=auth())
    assert missing.status_code == 404 and "not found" in missing.get_json()["error"]
    bad = client.get("/getuser/1234", headers=auth())
    assert bad.status_code == 400


def test_stop_calls_back(client: FlaskClient, stopper: StopRecorder) -> None:
    resp = client.post("/stop", headers=auth())
    assert (resp.status_code, resp.get_json()) == (200, {"stopping": True})
    assert stopper.calls == 0  # not before the answer is out
    resp.close()
    assert stopper.calls == 1
    assert client.get("/stop", headers=auth()).status_code == 405


def test_many_users_count_without_decoding(
    store: Store, engine_status: FakeEngineStatus, index: LocatorIndex
) -> None:
    """Counts come from the counters, never from the records: entries whose value would not decode are
    still counted, and listed with an error."""
    from teos.storage import keys
    from teos.storage.index import USERS
    from teos.storage.store import Batch

    batch = Batch()
    for i in range(5000):
        batch.put(keys.USER + UserId(b"\x02" + i.to_bytes(32, "big")).raw, b"not a record")
    index.stage(batch, counts={USERS: 5000})
    store.commit(batch)
    backend = StoreAdminBackend(store, engine_status, TOWER_ID, lambda: None, index)
    assert backend.tower_info()["n_registered_users"] == 5000
    page = backend.users(None, 2)
    assert all("undecodable" in item["error"] for item in page.items)
