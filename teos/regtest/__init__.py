"""teos-regtest: a bitcoind regtest simulator (RPC, ZMQ, persistence, fault knobs) and wallet helpers.

``Simulator`` (teos/regtest/simulator.py) is the node; ``Wallet`` (teos/regtest/wallet.py) builds real,
signed transactions against any bitcoind's RPC. Scripts and signatures are not validated by the simulator.
"""

from teos.regtest.simulator import Simulator

__all__ = ["Simulator"]
