"""A user's own bitcoind, for ``teos-client fundchannel --bitcoind`` and ``refund --bitcoind``: a few JSON-RPC
calls over ``common.http`` (teos-client loads nothing of the tower's server code).

The URL carries everything: ``http://user:password@host:port`` (or ``/wallet/<name>`` appended for a
named wallet of a node that has several). Errors: the node's JSON-RPC error as ``WalletError`` (code and
message as sent), and ``common.http.Unreachable`` when nothing answers.
"""

from __future__ import annotations

import base64
import itertools
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

from common.http import HttpError, JsonHttp

COIN = 100_000_000


class WalletError(Exception):
    """The node refused a call; ``code`` and ``message`` are its JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"bitcoind error {code}: {message}")
        self.code = code
        self.message = message


class WalletRPC:
    """JSON-RPC 1.0 calls to the bitcoind (wallet) at ``url``."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a bitcoind URL (http://user:password@host:port[/wallet/<name>]): {url!r}")
        headers = {}
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
        netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        port = f":{parts.port}" if parts.port else ""
        self.path = parts.path or "/"
        self.http = JsonHttp(f"{parts.scheme}://{netloc}{port}", timeout, headers)
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        status, answer = self.http.request("POST", self.path, body)
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            error = answer["error"]
            raise WalletError(int(error.get("code", 0)), str(error.get("message", "")))
        if status != 200 or not isinstance(answer, dict) or "result" not in answer:
            raise HttpError(status, answer)
        return answer["result"]

    def close(self) -> None:
        self.http.close()


def btc(sats: int) -> str:
    """Satoshis as the exact decimal BTC amount RPC calls take (a string: JSON numbers are floats)."""
    return str(Decimal(sats) / COIN)
