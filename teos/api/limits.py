"""Per-address limits on what a client may do for free: register (or top up) a user, open a payment channel.

Registration on a free tower is unauthenticated and anyone may top up anyone's key: one client registered
23,000 users in 30 s (768/s, each a synced write and, then, a log line). On a paid tower registration is
paid, but opening a channel (``/open_channel``) costs bitcoind a ``gettxout`` before anything is known of
its caller. ``AddressRateLimiter`` is the one token bucket per client address (``host_key``: an IPv4
address, an IPv6 /64) that bounds both: ``burst`` at once, then ``per_hour`` an hour. ``AddressLimits``
holds one for each action and lives in teosd's main process, so a limit is the same however many API
workers there are; the workers ask it through the worker channel (``teos.api.ipc.RemoteAdmission``)
before they register anyone or open a channel.

Behind Tor or a reverse proxy every client has the proxy's address, so teosd is then told so
(``--behindproxy``) and runs without them; the Gatekeeper's caps (users, appointments per user, the
reserve for established users) and, on a paid tower, the bounds on opening (two ``gettxout`` at a time,
``paymentmaxunpaidchannels``) still hold.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flask import current_app

from common.channel_wire import PaymentError, Refusal
from common.errors import ErrorKind, TeosError
from teos.config import Config

MAX_TRACKED = 100_000  # addresses remembered at most; the least recently seen are forgotten first
MAX_BURST = 10
# Channel openings per address: a user opens a channel for months, and a retry waits for the funding's
# confirmations; a burst of 5, then 10 a minute.
CHANNEL_OPENINGS_PER_HOUR = 600
CHANNEL_OPENINGS_BURST = 5

ADMISSION_KEY = "teos.admission"  # where create_app keeps the app's Admission (or None)


def host_key(host: str) -> str:
    """Whom a request from ``host`` counts against: its IPv4 address, or the /64 of its IPv6 address
    (anything unparsable counts as itself)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address) + "/64"
    return str(address)


class Admission(Protocol):
    """What the public API asks before it registers (or tops up) a user, or opens a payment channel."""

    def admit_registration(self, address: str) -> None:
        """Returns, or raises TeosError(RESOURCE_EXHAUSTED) when ``address`` must wait."""
        ...

    def admit_channel_opening(self, address: str) -> None:
        """Returns, or raises PaymentError(RATE_LIMITED) when ``address`` must wait."""
        ...


def admission() -> Admission | None:
    """The current app's Admission (None: no per-address limits)."""
    found: Admission | None = current_app.extensions.get(ADMISSION_KEY)
    return found


def too_many_registrations(wait: float) -> TeosError:
    return TeosError(ErrorKind.RESOURCE_EXHAUSTED,
                     f"Too many registrations from this address; retry in {wait:.0f} s")


def too_many_channel_openings(wait: float) -> TeosError:
    return PaymentError(Refusal.RATE_LIMITED,
                        f"Too many channels opened from this address; retry in {wait:.0f} s")


class AddressRateLimiter:
    """A token bucket per address: ``burst`` at once, refilled at ``per_hour`` an hour; an empty bucket
    raises ``refusal(seconds to wait)``. Memory is bounded: at most ``max_tracked`` addresses, the least
    recently seen dropped (a forgotten address starts again with a full bucket). Thread-safe."""

    def __init__(
        self,
        per_hour: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
        refusal: Callable[[float], TeosError] = too_many_registrations,
    ) -> None:
        if per_hour <= 0:
            raise ValueError("per_hour must be positive")
        self.per_hour = per_hour
        self.burst = float(burst if burst is not None else min(per_hour, MAX_BURST))
        self.rate = per_hour / 3600.0
        self.clock = clock
        self.max_tracked = max_tracked
        self.refusal = refusal
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def admit(self, address: str) -> None:
        """Takes a token from ``address``'s bucket, or raises ``refusal`` if it is empty."""
        key = host_key(address)
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise self.refusal((1.0 - tokens) / self.rate)
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)

    @property
    def tracked(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class AddressLimits:
    """The per-address limits of teosd's main process (implements ``Admission``); None: that action is
    not limited."""

    registrations: AddressRateLimiter | None = None
    channel_openings: AddressRateLimiter | None = None

    def admit_registration(self, address: str) -> None:
        if self.registrations is not None:
            self.registrations.admit(address)

    def admit_channel_opening(self, address: str) -> None:
        if self.channel_openings is not None:
            self.channel_openings.admit(address)


def registration_limiter(config: Config) -> AddressRateLimiter | None:
    """The limiter ``config`` asks for: none behind a proxy, or with ``registrationsperhour = 0``."""
    if config.behind_proxy or config.registrations_per_hour <= 0:
        return None
    return AddressRateLimiter(config.registrations_per_hour)


def channel_opening_limiter(config: Config) -> AddressRateLimiter | None:
    """A paid tower's limit on channel openings: none on a free tower, or behind a proxy."""
    if config.behind_proxy or not config.payment.paid:
        return None
    return AddressRateLimiter(
        CHANNEL_OPENINGS_PER_HOUR, CHANNEL_OPENINGS_BURST, refusal=too_many_channel_openings
    )


def address_limits(config: Config) -> AddressLimits | None:
    """Every per-address limit ``config`` asks for, or None when there is none."""
    limits = AddressLimits(registration_limiter(config), channel_opening_limiter(config))
    if limits.registrations is None and limits.channel_openings is None:
        return None
    return limits
