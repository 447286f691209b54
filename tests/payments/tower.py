"""A paid teosd for the end-to-end tests: its command line, its operator (the admin API, as teos-cli talks
to it), and a user who funds channels with real signed transactions and pays over HTTP.

Terms (small, so that a test mines a few dozen blocks, not thousands): 1000 sat per registration, funding
1 confirmation deep, payments until 20 blocks before expiry, claims 10 blocks before it, fee bumps from 4
blocks before it, a claim done at 3 confirmations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common import channel, crypto, script
from common.channel import ChannelId, ChannelParams
from common.channel_wire import PaymentTerms
from common.client import TowerClient
from common.cookie import read_cookie
from common.payment_client import PLACEHOLDER_ID, ChannelRecord, PaymentClient
from common.tx import TxOut
from common.types import Dialect, Txid, UserId
from teos.cli.teos_cli import AdminClient
from teos.devtools import free_port, wait_until
from teos.regtest.wallet import Coin
from tests.daemon.conftest import TeosdFactory
from tests.support.bitcoind import BitcoindHandle
from tests.support.processes import Teosd

PRICE = 1_000
SLOTS = 10_000  # teosd's default subscription
MIN_BLOCKS = 20
CLAIM_MARGIN = 10
CLAIM_CONFIRMATIONS = 3

PAID_ARGS = (
    "--paymentprice", str(PRICE), "--paymentminconf", "1", "--paymentminblocks", str(MIN_BLOCKS),
    "--paymentmaxchannelblocks", "2000", "--paymentclaimmargin", str(CLAIM_MARGIN),
    "--paymentbumpmargin", "4", "--paymentrebroadcast", "2",
    "--paymentclaimconfirmations", str(CLAIM_CONFIRMATIONS),
)  # fmt: skip


@dataclass
class PaidTower:
    daemon: Teosd
    admin_port: int
    tower_id: UserId

    def admin(self) -> AdminClient:
        return AdminClient("127.0.0.1", self.admin_port, read_cookie(self.daemon.datadir / "regtest"))

    def channels(self) -> dict[str, Any]:
        listing: dict[str, Any] = self.admin().list_channels()
        return listing

    def channel(self, channel_id: ChannelId) -> dict[str, Any]:
        for line in self.channels()["channels"]:
            if line["channel_id"] == str(channel_id):
                found: dict[str, Any] = line
                return found
        raise AssertionError(f"teosd does not list {channel_id}")

    def user(self, user_id: UserId) -> dict[str, Any] | None:
        from common.http import HttpError

        try:
            found: dict[str, Any] = self.admin().get_user(user_id.hex())
        except HttpError as e:
            if e.status == 404:
                return None
            raise
        return found


def start_paid_tower(
    bitcoind: BitcoindHandle,
    factory: TeosdFactory,
    datadir: Path | None = None,
    admin_port: int | None = None,
    extra: Sequence[str] = (),
) -> PaidTower:
    port = admin_port or free_port()
    daemon = factory(bitcoind, datadir=datadir, extra=[*PAID_ARGS, "--rpcport", str(port), *extra])
    return PaidTower(daemon, port, daemon.tower_id())


def height(node: BitcoindHandle) -> int:
    return int(node.rpc("getblockcount"))


def mine_to(node: BitcoindHandle, target: int) -> None:
    """Mines until the tip is at ``target``."""
    missing = target - height(node)
    if missing > 0:
        node.mine(missing)


class User:
    """A teos-client-like user of the paid tower: its user key, one channel key per channel."""

    def __init__(self, tower: PaidTower, dialect: Dialect, secret: bytes | None = None) -> None:
        self.tower = tower
        self.client = TowerClient("127.0.0.1", tower.daemon.api_port, dialect, secret)
        self.payments = PaymentClient(self.client, tower.tower_id)
        self.terms: PaymentTerms | None = None

    @property
    def user_id(self) -> UserId:
        return self.client.user_id

    def fetch_terms(self) -> PaymentTerms:
        self.terms, _ = self.payments.terms()
        return self.terms

    def fund(
        self, node: BitcoindHandle, coin: Coin, value: int, expiry: int, channel_secret: bytes | None = None
    ) -> ChannelRecord:
        """A real wallet transaction spending ``coin`` (from ``coins``) to pay ``value`` to a new channel's
        funding output (broadcast, not mined); the record the client keeps."""
        terms = self.terms or self.fetch_terms()
        secret = channel_secret or crypto.generate_secret_key()
        user_key = crypto.public_key(secret).raw
        params = ChannelParams(
            PLACEHOLDER_ID, value, user_key, terms.tower_key, expiry, script.p2wpkh(user_key), terms.fee_rate
        )
        funding = node.wallet().build([coin], [TxOut(value, params.script_pubkey)], change=True)
        node.rpc("sendrawtransaction", funding.hex)
        params = replace(params, channel_id=ChannelId(funding.txid, 0))
        return ChannelRecord(self.tower.tower_id, f"127.0.0.1:{self.tower.daemon.api_port}", terms, secret,
                             params, funded=True)  # fmt: skip


def coins(node: BitcoindHandle, n: int, value: int = 2_000_000) -> list[Coin]:
    """``n`` confirmed coins taken from the node's test wallet (which will not spend them itself), each
    spent once by ``User.fund``. Funding the wallet mines 102 blocks: get the coins before choosing
    expiries."""
    wallet = node.wallet()
    wallet.fund(count=n, value=value)
    return wallet.take(n)


def wait_in_mempool(node: BitcoindHandle, txid: Txid | str, timeout: float = 30.0) -> None:
    target = txid if isinstance(txid, str) else txid.hex()
    wait_until(lambda: target in node.rpc("getrawmempool"), timeout, f"{target} in the mempool")


def refund(record: ChannelRecord, destination: bytes, fee_rate: int = 2_000) -> Any:
    return channel.refund_tx(record.params, destination, fee_rate, record.user_secret)
