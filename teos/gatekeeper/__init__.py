"""The Gatekeeper: users' subscriptions, slot accounting, expiry and authentication."""

from teos.gatekeeper.gatekeeper import Gatekeeper, GatekeeperConfig

__all__ = ["Gatekeeper", "GatekeeperConfig"]
