from tests.support.users import chain, config, gatekeeper

__all__ = ["chain", "config", "gatekeeper"]
