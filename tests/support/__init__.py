"""Test support shared by every part's tests: a handle on a running bitcoind (the teos-regtest simulator or
real Bitcoin Core; see ``tests/support/bitcoind.py`` for the API), a wait helper, a ZMQ subscriber, the
teosd subprocess harness (``processes.py``) and the fakes behind the parts' seams (``fakes.py`` for the
chain side, ``users.py`` for the user side)."""

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
