"""A per-address token bucket for the payment requests that cost bitcoind a call (``/open_channel``).

Each address may make ``burst`` requests at once and then ``rate`` per minute. Loopback addresses are
not limited: a tower behind a reverse proxy or a Tor hidden service sees every caller as 127.0.0.1, and
limiting that one address would lock everyone out; such a tower relies on the global bounds instead
(``BoundedFundingChain``'s concurrent ``gettxout`` and ``max_unpaid_channels``). Memory is bounded: at
most ``max_addresses`` buckets are kept, the least recently used going first (a forgotten address starts
again with a full bucket, which only ever favours the caller by one burst).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class AddressLimiter:
    """Token buckets per address (see the module docstring). Thread-safe."""

    def __init__(
        self,
        rate_per_minute: float = 10.0,
        burst: int = 5,
        max_addresses: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("the rate and the burst must be positive")
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_addresses = max_addresses
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, when)
        self._lock = threading.Lock()

    def allow(self, address: str | None) -> bool:
        """Takes a token for ``address``; False when its bucket is empty (the request is refused)."""
        if not address or is_loopback(address):
            return True
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.pop(address, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[address] = (tokens, now)
            while len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
            return allowed
