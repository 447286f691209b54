"""What a user sends a tower: the texts it signs to read its data, and the JSON body of each request.

Both client families sign the same texts (python-teos and rust-teos agree): ``get appointment <locator
hex>`` to read one appointment and ``get subscription info`` to read the subscription; an appointment is
signed over ``Appointment.serialize()``. The bodies differ only in how a user registers:
``{"public_key": ...}`` (python-teos) or ``{"user_id": ...}`` (rust-teos). The tower checks requests
against these (``teos.service``); every client builds them here.
"""

from __future__ import annotations

from typing import Any

from common.appointment import Appointment
from common.types import Dialect, Locator, UserId

GET_SUBSCRIPTION_INFO_MESSAGE = b"get subscription info"

JsonObject = dict[str, Any]


def get_appointment_message(locator: Locator) -> bytes:
    """The text a user signs to ask for the appointment at ``locator``."""
    return f"get appointment {locator.hex()}".encode("ascii")


def register_body(user_id: UserId, dialect: Dialect) -> JsonObject:
    field = "public_key" if dialect is Dialect.PYTHON else "user_id"
    return {field: user_id.hex()}


def add_appointment_body(appointment: Appointment, signature: str) -> JsonObject:
    """``signature`` is the user's, over ``appointment.serialize()``."""
    return {"appointment": appointment.to_json(), "signature": signature}


def get_appointment_body(locator: Locator, signature: str) -> JsonObject:
    """``signature`` is the user's, over ``get_appointment_message(locator)``."""
    return {"locator": locator.hex(), "signature": signature}


def get_subscription_info_body(signature: str) -> JsonObject:
    """``signature`` is the user's, over ``GET_SUBSCRIPTION_INFO_MESSAGE``."""
    return {"signature": signature}
