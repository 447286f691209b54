from tests.api.conftest import chain, config, gatekeeper  # noqa: F401
