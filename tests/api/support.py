"""The public API app over a real store, for the API tests (over ``tests.support.users``' doubles)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from flask import Flask

from common import crypto
from common.appointment import Appointment
from common.messages import (
    GET_SUBSCRIPTION_INFO_MESSAGE,
    add_appointment_body,
    get_appointment_body,
    get_appointment_message,
    get_subscription_info_body,
    register_body,
)
from common.tx import Transaction, TxIn, TxOut
from common.types import Dialect, Locator, Txid, UserId
from teos.api import create_app
from teos.api.ipc import TOKEN_BYTES, CoreClient, CoreServer, RemoteCore
from teos.gatekeeper import Gatekeeper, GatekeeperConfig
from teos.interfaces import Watching
from teos.service import TowerCore, TowerService
from teos.storage.index import LocatorIndex
from teos.storage.store import Store
from tests.support.users import Client, FakeChainView, random_locator


def signed_appointment(client: Client, appointment: Appointment) -> dict[str, Any]:
    """The JSON body of an add_appointment request."""
    return add_appointment_body(appointment, client.sign(appointment.serialize()))


PYTHON_UA = {"User-Agent": "python-requests/2.31.0"}
RUST_UA = {"User-Agent": ""}  # reqwest sends none


@dataclass
class Tower:
    """The public API app over a real store, with handles on its parts and a test client."""

    store: Store
    chain: FakeChainView
    gatekeeper: Gatekeeper
    service: TowerService
    app: Flask
    secret_key: bytes
    index: LocatorIndex
    core_server: CoreServer | None = None

    def close(self) -> None:
        if self.core_server is not None:
            self.core_server.stop()
        self.index.stop()

    @classmethod
    def build(
        cls,
        store: Store,
        *,
        slots: int = 100,
        tip: int = 11,
        max_appointments: int = 1_000_000,
        chain: Any = None,
        remote: bool = False,
        watching: Watching | None = None,
    ) -> Tower:
        """The app over a Gatekeeper on ``store``; with ``remote`` its service reaches the state through
        the worker channel (a ``CoreServer`` on a real Unix socket), as in teosd's API workers.
        ``watching`` is the tower's health as teosd passes it (none: always watching)."""
        chain = chain if chain is not None else FakeChainView(tip_height=tip)
        config = GatekeeperConfig(subscription_slots=slots, max_appointments=max_appointments)
        index = LocatorIndex(store)
        index.start()
        gatekeeper = Gatekeeper(store, config, chain, index)
        gatekeeper.start()
        secret_key = crypto.generate_secret_key()
        core = TowerCore(gatekeeper, chain, chain, store, watching)
        if not remote:
            service = TowerService(core, secret_key, min_to_self_delay=config.min_to_self_delay)
            return cls(store, chain, gatekeeper, service, create_app(service), secret_key, index)
        server = CoreServer(core, os.urandom(TOKEN_BYTES))
        server.start()
        service = TowerService(
            RemoteCore(CoreClient(server.address, server.token)),
            secret_key,
            min_to_self_delay=config.min_to_self_delay,
        )
        return cls(store, chain, gatekeeper, service, create_app(service), secret_key, index, server)

    @property
    def tower_id(self) -> UserId:
        return crypto.public_key(self.secret_key)

    def post(
        self,
        path: str,
        json_body: object = None,
        *,
        rust: bool = False,
        data: bytes | str | None = None,
        content_type: str | None = None,
    ) -> tuple[int, Any]:
        """POSTs and returns (status, decoded JSON body or None for an empty one)."""
        client = self.app.test_client()
        headers = RUST_UA if rust else PYTHON_UA
        if data is not None:
            resp = client.post(path, data=data, content_type=content_type, headers=headers)
        else:
            resp = client.post(path, json=json_body, headers=headers)
        assert resp.content_type.startswith("application/json") or not resp.data, resp.data[:200]
        return resp.status_code, (json.loads(resp.data) if resp.data else None)

    def register(self, client: Client, dialect: Dialect = Dialect.PYTHON) -> dict[str, Any]:
        body = register_body(client.user_id, dialect)
        status, body = self.post("/register", body, rust=dialect is Dialect.RUST)
        assert status == 200, body
        return body

    def add(
        self, client: Client, appointment: Appointment, *, rust: bool = False, signature: str | None = None
    ) -> tuple[int, Any]:
        body = signed_appointment(client, appointment)
        if signature is not None:
            body["signature"] = signature
        return self.post("/add_appointment", body, rust=rust)

    def get(self, client: Client, locator: Locator, *, rust: bool = False) -> tuple[int, Any]:
        body = get_appointment_body(locator, client.sign(get_appointment_message(locator)))
        return self.post("/get_appointment", body, rust=rust)

    def subscription_info(self, client: Client, *, rust: bool = False) -> tuple[int, Any]:
        body = get_subscription_info_body(client.sign(GET_SUBSCRIPTION_INFO_MESSAGE))
        return self.post("/get_subscription_info", body, rust=rust)

    def signed_by_tower(self, message: bytes, signature: str) -> bool:
        return crypto.recover_public_key(message, signature) == self.tower_id


def appointment(
    locator: Locator | None = None, blob: bytes | None = None, to_self_delay: int = 20
) -> Appointment:
    return Appointment(
        locator or random_locator(), blob if blob is not None else os.urandom(100), to_self_delay
    )


def penalty_transaction(seed: int = 0) -> Transaction:
    """A well-formed transaction to encrypt (whether a chain accepts it is the engine's concern)."""
    return Transaction(
        version=2,
        inputs=(TxIn(prev_txid=Txid(bytes([seed + 1]) * 32), prev_vout=0, script_sig=b"\x51"),),
        outputs=(TxOut(value=90_000, script_pubkey=b"\x00\x14" + bytes(20)),),
    )
