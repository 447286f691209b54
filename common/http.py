"""JSON over one keep-alive HTTP connection (stdlib only): the transport of every client in this repository
that talks to a tower (``teos-client``, ``teos-cli``, the demo, the tests and the benchmarks).

It tells apart the three ways a call ends: an answer (its status and JSON), an answer that is not HTTP or
not JSON (``BadResponse``), and no answer at all (``Unreachable``: refused, timed out, unknown host), which
the command lines report as "the daemon/tower is down". ``call`` also turns an error status into
``HttpError`` with whatever JSON came with it.

A kept-alive connection the server has closed meanwhile is opened again once, transparently; a request
that fails on a fresh connection is not repeated. One ``JsonHttp`` is one connection: not thread-safe.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

# How a server drops an idle kept-alive connection: seen on the next request, before any answer.
_STALE = (
    http.client.RemoteDisconnected, http.client.CannotSendRequest, BrokenPipeError, ConnectionResetError
)


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
    """The server answered something that is not HTTP, or a success that is not JSON."""


class JsonHttp:
    """Requests to ``base_url`` (``http://host:port`` or ``https://...``) with JSON bodies."""

    def __init__(
        self, base_url: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None
    ) -> None:
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection, and whether it served a request before."""
        if self._conn is not None:
            return self._conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=self.timeout)
        return self._conn, False

    def _exchange(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        url = self._prefix + path
        while True:
            conn, reused = self._connection()
            try:
                conn.request(method, url, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except _STALE as e:
                self.close()
                if not reused:
                    raise Unreachable(f"no answer from {self.base_url}{path}: {e!r}") from None
            except http.client.HTTPException as e:
                self.close()
                message = f"{self.base_url}{path} answered something that is not HTTP: {e!r}"
                raise BadResponse(message) from None
            except OSError as e:  # refused, timed out, unknown host
                self.close()
                raise Unreachable(f"cannot connect to {self.base_url}{path}: {e}") from None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Sends ``body`` (as JSON, when given); returns the status and the decoded JSON answer (None for
        an empty one; ``{"error": text}`` for an error status whose body is not JSON)."""
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        status, raw = self._exchange(method, path, data, headers)
        try:
            return status, (json.loads(raw.decode("utf-8")) if raw else None)
        except (ValueError, UnicodeDecodeError) as e:
            if 200 <= status < 300:
                raise BadResponse(f"{self.base_url}{path} did not answer JSON: {e}") from None
            return status, {"error": raw.decode("utf-8", "replace")[:500]}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """``request``, for a call that must succeed: the JSON of a 2xx answer, else ``HttpError``."""
        status, answer = self.request(method, path, body)
        if not 200 <= status < 300:
            raise HttpError(status, answer)
        return answer
