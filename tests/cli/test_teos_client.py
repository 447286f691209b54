"""teos-client against the tower's real public API (both dialects), against a tower that signs with the
wrong key, and against nothing at all."""

from __future__ import annotations

import io
import json
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request

from common import crypto, receipts, zbase32
from common.dialects import locator_from_txid
from common.types import Dialect, Txid, UserId
from teos.cli import teos_client
from teos.cli.teos_client import build_appointment, run
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.admin.support import serve
from tests.common.vectors import vectors_dir
from tests.support.users import FakeChainView

VECTORS = vectors_dir()
# A real transaction (rust-teos's published encryption vector) stands in as the penalty: the tower only
# stores it encrypted, but what the client sends is then a real, well-formed transaction.
RUST_VECTOR = {
    "plaintext": (
        "010000000001010000000000000000000000000000000000000000000000000000000000000000ffffffff54038e830a"
        "1b4d696e656420627920416e74506f6f6c373432c2005b005e7a0ae3fabe6d6d7841cd582ead8ea5dd8e3de1173cae6f"
        "cd2a53c7362ebb7fb6f815604fe07cbe0200000000000000ac0e060005f90000ffffffff04d9476026000000001976a9"
        "1411dbe48cc6b617f9c6adaf4d9ed5f625b1c7cb5988ac0000000000000000266a24aa21a9ed7248c6efddd8d99bfddd"
        "7f499f0b915bffa8253003cc934df1ff14a81301e2340000000000000000266a24b9e11b6d7054937e13f39529d6ad7e"
        "685e9dd4efa426f247d5f5a5bed58cdddb2d0fa60100000000000000002b6a2952534b424c4f434b3a054a68aa536874"
        "0e8b3e3c67bce45619c2cfd07d4d4f0936a5612d2d0034fa0a0120000000000000000000000000000000000000000000"
        "000000000000000000000000000000"
    ),
    "dispute_txid": "d6ac4a5e61657c4c604dcde855a1db74ec6b3e54f32695d72c5e11c7761ea1b4",
}


def cli(datadir: Path, *args: str) -> tuple[int, Any, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--datadir", str(datadir), *args], out=out, err=err)
    return code, (json.loads(out.getvalue()) if out.getvalue() else None), (
        json.loads(err.getvalue()) if err.getvalue() else None)


# -- known answers: the client derives locator and blob exactly as each dialect does ---------------------


def _encryption_vectors(name: str) -> list[dict[str, str]]:
    path = VECTORS / f"{name}.json"
    vectors: list[dict[str, str]] = json.loads(path.read_text())["encryption"]
    return vectors


@pytest.mark.parametrize("dialect,name", [(Dialect.RUST, "rust-teos"), (Dialect.PYTHON, "python-teos")])
def test_blob_matches_the_dialect_vectors(dialect: Dialect, name: str) -> None:
    vectors = _encryption_vectors(name)
    assert vectors, f"{name} has no encryption vectors"
    for v in vectors:
        txid = Txid.from_hex(v["dispute_txid"])
        appointment = build_appointment(txid, bytes.fromhex(v["plaintext"]), 20, dialect)
        assert appointment.encrypted_blob.hex() == v["encrypted_blob"]
        assert appointment.locator == locator_from_txid(txid, dialect)


def test_rust_blob_vector_inline() -> None:
    txid = Txid.from_hex(RUST_VECTOR["dispute_txid"])
    appointment = build_appointment(txid, bytes.fromhex(RUST_VECTOR["plaintext"]), 20, Dialect.RUST)
    assert appointment.encrypted_blob.hex().startswith("f64d730654738fdbcd9e65068be17bc1")
    assert appointment.locator.raw == bytes.fromhex(RUST_VECTOR["dispute_txid"])[::-1][:16]


# -- against the real public API ---------------------------------------------------------------------------


@dataclass
class RealTower:
    tower_id: UserId
    port: int
    store: Store

    @property
    def address(self) -> str:
        return f"{self.tower_id.hex()}@127.0.0.1:{self.port}"


@pytest.fixture
def real_tower(tmp_path: Path) -> Iterator[RealTower]:
    api = pytest.importorskip("teos.api")
    service_mod = pytest.importorskip("teos.service")
    from teos.gatekeeper import Gatekeeper, GatekeeperConfig

    store = Store(tmp_path / "tower-db")
    store.open()
    index = LocatorIndex(store)
    index.start()
    chain = FakeChainView(tip_height=200)
    gatekeeper = Gatekeeper(store, GatekeeperConfig(), chain, index)
    gatekeeper.start()
    secret = crypto.generate_secret_key()
    service = service_mod.TowerService.local(gatekeeper, chain, store, secret)
    try:
        with serve(api.create_app(service)) as port:
            yield RealTower(crypto.public_key(secret), port, store)
    finally:
        gatekeeper.stop()
        index.stop()
        store.close()


@pytest.mark.parametrize("dialect", ["rust", "python"])
def test_full_session_against_the_real_api(tmp_path: Path, real_tower: RealTower, dialect: str) -> None:
    home = tmp_path / "user"
    code, reg, err = cli(home, "--dialect", dialect, "register", real_tower.address)
    assert code == 0, err
    assert reg["tower_id"] == real_tower.tower_id.hex() and reg["dialect"] == dialect
    assert reg["available_slots"] == 10000
    key_file = home / "user_sk.der"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    stored = json.loads((home / "towers" / real_tower.tower_id.hex() / "tower.json").read_text())
    assert stored["registration"]["subscription_signature"] == reg["subscription_signature"]
    user_id = reg["user_id"]

    txid = RUST_VECTOR["dispute_txid"]
    code, receipt, err = cli(home, "add_appointment", "--dispute-txid", txid,
                             "--penalty-rawtx", RUST_VECTOR["plaintext"], "--to-self-delay", "30")
    assert code == 0, err
    locator = locator_from_txid(Txid.from_hex(txid), Dialect(dialect)).hex()
    assert receipt["appointment"]["locator"] == locator and receipt["start_block"] == 200
    saved = json.loads(Path(receipt["receipt_file"]).read_text())
    assert saved["tower_signature"] == receipt["tower_signature"]
    assert receipt["available_slots"] == 9999

    code, got, err = cli(home, "get_appointment", locator)
    assert code == 0, err
    assert got["status"] == "being_watched"
    assert got["appointment"]["locator"] == locator and got["appointment"]["to_self_delay"] == 30

    code, info, err = cli(home, "get_subscription_info")
    assert code == 0, err
    assert locator in (info.get("locators") or info.get("appointments"))

    # The same key is used again (the user id does not change between runs).
    code, again, _ = cli(home, "register", real_tower.address)
    assert code == 0 and again["user_id"] == user_id and again["dialect"] == dialect


def test_appointment_from_a_json_file(tmp_path: Path, real_tower: RealTower) -> None:
    home = tmp_path / "user"
    assert cli(home, "register", real_tower.address)[0] == 0
    spec = tmp_path / "appointment.json"
    spec.write_text(json.dumps({"tx": RUST_VECTOR["plaintext"], "tx_id": RUST_VECTOR["dispute_txid"],
                                "to_self_delay": 25}))
    code, receipt, err = cli(home, "add_appointment", str(spec), "--tower", real_tower.tower_id.hex())
    assert code == 0, err
    assert receipt["appointment"]["to_self_delay"] == 25


def test_tower_refusal_exits_1(tmp_path: Path, real_tower: RealTower) -> None:
    home = tmp_path / "user"
    assert cli(home, "register", real_tower.address)[0] == 0
    code, out, err = cli(home, "get_appointment", "00" * 16)
    assert code == 1 and out is None
    assert err["http_status"] == 404


def test_dialect_is_remembered_per_tower(tmp_path: Path, real_tower: RealTower) -> None:
    home = tmp_path / "user"
    assert cli(home, "--dialect", "python", "register", real_tower.address)[0] == 0
    code, _, err = cli(home, "--dialect", "rust", "get_subscription_info")
    assert code == 2 and "python dialect" in err["error"]


def test_console_script_runs(tmp_path: Path, real_tower: RealTower) -> None:
    cmd = [sys.executable, "-m", "teos.cli.teos_client", "--datadir", str(tmp_path / "u"), "register",
           real_tower.address]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tower_id"] == real_tower.tower_id.hex()


# -- a tower that signs with another key is refused ------------------------------------------------------


def lying_tower(real_key: bytes, signing_key: bytes, lie_on: str) -> Flask:
    """Answers like a rust-teos tower, but signs ``lie_on`` ("register" or "add_appointment") with
    ``signing_key`` instead of its own key ``real_key``."""
    app = Flask("liar")

    @app.post("/register")
    def register() -> Any:
        user_id = UserId.from_hex(request.get_json()["user_id"])
        message = receipts.registration_receipt(Dialect.RUST, user_id, 100, 10, 1000)
        key = signing_key if lie_on == "register" else real_key
        return jsonify({"user_id": user_id.hex(), "available_slots": 100, "subscription_start": 10,
                        "subscription_expiry": 1000, "subscription_signature": crypto.sign(message, key)})

    @app.post("/add_appointment")
    def add_appointment() -> Any:
        body = request.get_json()
        message = receipts.appointment_receipt(Dialect.RUST, body["signature"], 50)
        key = signing_key if lie_on == "add_appointment" else real_key
        return jsonify({"locator": body["appointment"]["locator"], "start_block": 50,
                        "signature": crypto.sign(message, key), "available_slots": 99,
                        "subscription_expiry": 1000})

    return app


def test_refuses_a_registration_signed_by_another_key(tmp_path: Path) -> None:
    real, other = crypto.generate_secret_key(), crypto.generate_secret_key()
    home = tmp_path / "user"
    with serve(lying_tower(real, other, "register")) as port:
        code, out, err = cli(home, "register", f"{crypto.public_key(real).hex()}@127.0.0.1:{port}")
    assert code == 4 and out is None
    assert "refusing this tower" in err["error"]
    assert err["details"]["recovered_key"] == crypto.public_key(other).hex()
    assert not (home / "towers").exists()


def test_refuses_an_appointment_receipt_signed_by_another_key(tmp_path: Path) -> None:
    real, other = crypto.generate_secret_key(), crypto.generate_secret_key()
    home = tmp_path / "user"
    with serve(lying_tower(real, other, "add_appointment")) as port:
        address = f"{crypto.public_key(real).hex()}@127.0.0.1:{port}"
        assert cli(home, "register", address)[0] == 0
        code, out, err = cli(home, "add_appointment", "--dispute-txid", RUST_VECTOR["dispute_txid"],
                             "--penalty-rawtx", RUST_VECTOR["plaintext"])
    assert code == 4 and out is None and "refusing this tower" in err["error"]
    assert not (home / "towers" / crypto.public_key(real).hex() / "appointments").exists()


def test_refuses_a_garbled_signature(tmp_path: Path) -> None:
    real = crypto.generate_secret_key()
    app = Flask("garbled")

    @app.post("/register")
    def register() -> Any:
        body = request.get_json()
        return jsonify({"user_id": body["user_id"], "available_slots": 1, "subscription_start": 1,
                        "subscription_expiry": 2, "subscription_signature": zbase32.encode(b"\x00" * 65)})

    with serve(app) as port:
        code, _, err = cli(tmp_path / "u", "register", f"{crypto.public_key(real).hex()}@127.0.0.1:{port}")
    assert code == 4 and "invalid" in err["error"]


# -- usage and unreachable -----------------------------------------------------------------------------------


def test_unreachable_tower_exits_3(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = cli(tmp_path / "u", "register", f"{crypto.public_key(crypto.generate_secret_key()).hex()}"
                       f"@127.0.0.1:{port}")
    assert code == 3 and "not reachable" in err["error"]


@pytest.mark.parametrize("args,message", [
    (["register", "nonsense"], "<tower_id>@"),
    (["register", "abcd@127.0.0.1:1"], "not a tower id"),
    (["get_subscription_info"], "not registered"),
    (["add_appointment", "--dispute-txid", "00"], "--penalty-rawtx"),
    (["add_appointment", "--dispute-txid", "00", "--penalty-rawtx", "00"], "64 hex"),
    (["add_appointment", "--dispute-txid", "ab" * 32, "--penalty-rawtx", "zz"], "non-empty hex"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = cli(tmp_path / "u", *args)
    assert code == 2 and message in err["error"]


@pytest.mark.parametrize("text,netaddr,url", [
    ("@h", "h:9814", "http://h:9814"),
    ("@h:1234", "h:1234", "http://h:1234"),
    ("@[::1]:99", "[::1]:99", "http://[::1]:99"),
    ("@https://tower.example/", "https://tower.example/", "https://tower.example"),
])
def test_tower_address_parsing(text: str, netaddr: str, url: str) -> None:
    tower_id = crypto.public_key(crypto.generate_secret_key())
    address = teos_client.TowerAddress.parse(tower_id.hex() + text)
    assert (address.tower_id, address.netaddr, address.url) == (tower_id, netaddr, url)


# -- the pieces wired as the daemon wires them: what users do shows in teos-cli and in /metrics ----------


def test_admin_sees_what_the_real_gatekeeper_wrote(tmp_path: Path) -> None:
    api = pytest.importorskip("teos.api")
    service_mod = pytest.importorskip("teos.service")
    from teos.admin import AdminServer, Metrics, StoreAdminBackend, instrument
    from teos.cli import teos_cli
    from teos.gatekeeper import Gatekeeper, GatekeeperConfig
    from tests.admin.support import FakeEngineStatus

    store = Store(tmp_path / "regtest" / "db")
    store.open()
    index = LocatorIndex(store)
    index.start()
    chain = FakeChainView(tip_height=200)
    gatekeeper = Gatekeeper(store, GatekeeperConfig(), chain, index)
    gatekeeper.start()
    secret = crypto.generate_secret_key()
    tower_id = crypto.public_key(secret)
    metrics = Metrics()
    public_app = api.create_app(service_mod.TowerService.local(gatekeeper, chain, store, secret))
    instrument(public_app, metrics, name="public")
    admin = AdminServer(StoreAdminBackend(store, FakeEngineStatus(), tower_id, lambda: None, index),
                        tmp_path / "regtest", port=0, metrics=metrics)
    admin.start()
    try:
        with serve(public_app) as port:
            home = tmp_path / "user"
            assert cli(home, "register", f"{tower_id.hex()}@127.0.0.1:{port}")[0] == 0
            code, receipt, err = cli(home, "add_appointment", "--dispute-txid", RUST_VECTOR["dispute_txid"],
                                     "--penalty-rawtx", RUST_VECTOR["plaintext"])
            assert code == 0, err
        out, errs = io.StringIO(), io.StringIO()
        assert teos_cli.run(["--datadir", str(tmp_path), "--btcnetwork", "regtest", "--rpcport",
                             str(admin.port), "gettowerinfo"], out=out, err=errs) == 0, errs.getvalue()
        info = json.loads(out.getvalue())
        counts = (info["n_registered_users"], info["n_watcher_appointments"], info["n_appointments"])
        assert counts == (1, 1, 1) and info["tower_id"] == tower_id.hex()
        user_id = crypto.public_key(teos_client.UserData(home).secret_key()).hex()
        out = io.StringIO()
        assert teos_cli.run(["--datadir", str(tmp_path), "--btcnetwork", "regtest", "--rpcport",
                             str(admin.port), "getuser", user_id], out=out, err=io.StringIO()) == 0
        user = json.loads(out.getvalue())
        assert [a["locator"] for a in user["appointments"]] == [receipt["appointment"]["locator"]]
        assert user["available_slots"] == 9999
        labels = {"app": "public", "endpoint": "/add_appointment", "method": "POST", "status": "200"}
        assert metrics.value("teos_http_requests_total", labels) == 1
        assert metrics.value("teos_registered_users") == 1
    finally:
        admin.stop()
        gatekeeper.stop()
        index.stop()
        store.close()
