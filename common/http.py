"""A small JSON-over-HTTP client (stdlib only) shared by ``teos-cli`` and ``teos-client``.

It tells apart the three ways a call ends: a 2xx answer (its JSON), an error answer from the server
(``HttpError`` with the status and whatever JSON came with it), and no answer at all (``Unreachable``:
refused, timed out, DNS), which the command lines report as "the daemon/tower is down".
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any


class Unreachable(ConnectionError):
    """Nobody answered at the address (connection refused, timeout, unknown host)."""


class HttpError(Exception):
    """The server answered with an error status; ``body`` is its JSON (or ``{"error": text}``)."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")
        self.status = status
        self.body = body


class BadResponse(ValueError):
    """The server answered 2xx with something that is not JSON."""


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    return json.loads(raw.decode("utf-8"))


def request_json(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Any:
    """Sends ``body`` (as JSON, when given) and returns the decoded JSON answer (None for an empty one)."""
    data = json.dumps(body).encode("utf-8") if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            error_body = _decode(raw)
        except (ValueError, UnicodeDecodeError):
            error_body = {"error": raw.decode("utf-8", "replace")[:500] or e.reason}
        raise HttpError(e.code, error_body) from None
    except urllib.error.URLError as e:
        raise Unreachable(f"cannot connect to {url}: {e.reason}") from None
    except (TimeoutError, ConnectionError) as e:
        raise Unreachable(f"no answer from {url}: {e}") from None
    except http.client.HTTPException as e:
        raise BadResponse(f"{url} answered something that is not HTTP: {e!r}") from None
    try:
        return _decode(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadResponse(f"{url} did not answer JSON: {e}") from None
