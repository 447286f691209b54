"""Per-address limits on what is free: registrations and top-ups (issue 13, F8).

Registration is free and unauthenticated, and anyone may top up anyone's key: one client registered
23,000 users in 30 s (768/s, each a synced write and, then, a log line). ``AddressRateLimiter`` is a
token bucket per client address (the IPv6 /64, see ``teos.api.serving.host_key``): ``burst``
registrations at once, then ``per_hour`` an hour. It lives in teosd's main process, so the limit is the
same however many API workers there are; the workers ask it through the worker channel
(``RemoteAdmission``) before they register anyone.

Behind Tor or a reverse proxy every client has the proxy's address, so teosd is then told so
(``--behindproxy``) and runs without it; the Gatekeeper's caps (users, appointments per user, the reserve
for established users) still hold.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from common.errors import ErrorKind, TeosError
from teos.api.serving import host_key
from teos.config import Config

MAX_TRACKED = 100_000  # addresses remembered at most; the least recently seen are forgotten first
MAX_BURST = 10


class Admission(Protocol):
    """What the public API asks before it registers (or tops up) a user."""

    def admit_registration(self, address: str) -> None:
        """Returns, or raises TeosError(RESOURCE_EXHAUSTED) when ``address`` must wait."""
        ...


class AddressRateLimiter:
    """A token bucket per address: ``burst`` at once, refilled at ``per_hour`` an hour (implements
    ``Admission``). Memory is bounded: at most ``max_tracked`` addresses, least recently seen dropped."""

    def __init__(
        self,
        per_hour: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        if per_hour <= 0:
            raise ValueError("per_hour must be positive")
        self.per_hour = per_hour
        self.burst = float(burst if burst is not None else min(per_hour, MAX_BURST))
        self.rate = per_hour / 3600.0
        self.clock = clock
        self.max_tracked = max_tracked
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def admit_registration(self, address: str) -> None:
        key = host_key(address)
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                                f"Too many registrations from this address; retry in {wait:.0f} s")
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)

    @property
    def tracked(self) -> int:
        return len(self._buckets)


def registration_limiter(config: Config) -> AddressRateLimiter | None:
    """The limiter ``config`` asks for: none behind a proxy, or with ``registrationsperhour = 0``."""
    if config.behind_proxy or config.registrations_per_hour <= 0:
        return None
    return AddressRateLimiter(config.registrations_per_hour)
