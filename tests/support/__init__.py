"""Test support shared by every part's tests: a handle on a running bitcoind (the teos-regtest simulator
or real Bitcoin Core) and a wait helper. See ``tests/support/bitcoind.py`` for the API."""

from tests.support.bitcoind import BitcoinCoreHandle, BitcoindHandle, RPCError, SimulatorHandle, free_port
from tests.support.wait import WaitTimeout, wait_until
from tests.support.zmqsub import ZmqMessage, ZmqSubscriber

__all__ = [
    "BitcoinCoreHandle",
    "BitcoindHandle",
    "RPCError",
    "SimulatorHandle",
    "WaitTimeout",
    "ZmqMessage",
    "ZmqSubscriber",
    "free_port",
    "wait_until",
]
