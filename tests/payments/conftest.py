from tests.daemon.conftest import teosd_factory

__all__ = ["teosd_factory"]
