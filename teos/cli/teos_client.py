"""teos-client: a user's command line for a watchtower, built on ``common/`` (either client dialect).

It keeps, in its own datadir (``--datadir``, default ``~/.teos_client``):

- ``user_sk.der``: the user's secp256k1 key (DER, the python-teos client's format), made on first use,
  mode 0600; the user id is its compressed public key;
- ``towers/<tower_id>/tower.json``: where the tower is, the dialect the user registered in, and the last
  registration receipt the tower signed;
- ``towers/<tower_id>/appointments/<locator>.json``: each appointment receipt.

Every receipt is checked before it is kept (``common.client``): the signature must recover the tower id
the user named (``tower_id@host:port``), over the receipt bytes of the dialect in use. A tower that signs
with another key, or answers a receipt that does not match the request, is refused: nothing is stored,
the command exits 4 and says why. A receipt is the user's proof that the tower took the job.

Dialect: ``--dialect rust`` (default: the rust-teos plugin is what most users run, and what current towers
expect) or ``--dialect python``. It fixes the locator derivation, the blob key, the registration field and
the receipt layouts. It is chosen at ``register`` and remembered per tower; later commands use it.

Exit codes: 0 success, 1 the tower refused the request, 2 usage, 3 tower unreachable, 4 the tower misbehaved
(bad signature or inconsistent answer). Output is JSON on stdout; errors are JSON on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from coincurve import PrivateKey

from common import bech32, channel, crypto, script
from common.channel import ChannelError, ChannelId, ChannelParams
from common.client import TowerClient, build_appointment
from common.fsutil import write_private_file
from common.http import HttpError
from common.payment_client import PLACEHOLDER_ID, ChannelBook, ChannelRecord, PaymentClient
from common.tx import TxOut, decode_transaction
from common.types import Dialect, Locator, Txid, UserId
from teos.cli.errors import EXIT_BAD_ANSWER, EXIT_USAGE, REPORTED, CommandError, report
from teos.cli.wallet_rpc import WalletError, WalletRPC, btc

DEFAULT_DATADIR = "~/.teos_client"
DEFAULT_TOWER_PORT = 9814
DEFAULT_TO_SELF_DELAY = 20
KEY_FILE = "user_sk.der"
DEFAULT_CHANNEL_BLOCKS = 4320  # about a month

JsonObject = dict[str, Any]


# -- where the tower is ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TowerAddress:
    tower_id: UserId
    netaddr: str  # "host:port" or a full http(s) URL

    @property
    def url(self) -> str:
        return self.netaddr.rstrip("/") if "://" in self.netaddr else f"http://{self.netaddr}"

    @classmethod
    def parse(cls, text: str) -> TowerAddress:
        """``<tower_id>@<host>[:<port>]`` (port 9814 when left out) or ``<tower_id>@http(s)://...``."""
        tower_hex, sep, netaddr = text.partition("@")
        if not sep or not netaddr:
            raise CommandError("a tower is given as <tower_id>@<host>[:<port>]", EXIT_USAGE)
        tower_id = parse_tower_id(tower_hex)
        if "://" not in netaddr:
            host, colon, port = netaddr.rpartition(":")
            if not colon or not port.isdigit() or (host.count(":") and not host.endswith("]")):
                netaddr = f"{netaddr}:{DEFAULT_TOWER_PORT}"
        return cls(tower_id, netaddr)


def parse_tower_id(text: str) -> UserId:
    try:
        return UserId.from_hex(text)
    except ValueError:
        raise CommandError(f"{text!r} is not a tower id (66 hex characters, a compressed public key)",
                          EXIT_USAGE) from None


# -- the user's datadir -------------------------------------------------------------------------------


class UserData:
    """The user's key, towers and receipts on disk (see the module docstring)."""

    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir

    def secret_key(self) -> bytes:
        path = self.datadir / KEY_FILE
        if path.exists():
            try:
                return bytes(PrivateKey.from_der(path.read_bytes()).secret)
            except Exception as e:
                raise CommandError(f"cannot read the user key {path}: {e}") from None
        secret = crypto.generate_secret_key()
        write_private_file(path, PrivateKey(secret).to_der())
        return secret

    def _tower_dir(self, tower_id: UserId) -> Path:
        return self.datadir / "towers" / tower_id.hex()

    def save_tower(self, tower: TowerAddress, dialect: Dialect, registration: JsonObject) -> None:
        info = {"tower_id": tower.tower_id.hex(), "netaddr": tower.netaddr, "dialect": dialect.value,
                "registration": registration}
        write_private_file(self._tower_dir(tower.tower_id) / "tower.json", _dumps(info).encode())

    def load_tower(self, tower_id: UserId) -> JsonObject:
        path = self._tower_dir(tower_id) / "tower.json"
        try:
            info: JsonObject = json.loads(path.read_text())
        except FileNotFoundError:
            raise CommandError(f"not registered with tower {tower_id.hex()}: run register first",
                              EXIT_USAGE) from None
        return info

    def towers(self) -> list[UserId]:
        root = self.datadir / "towers"
        if not root.is_dir():
            return []
        return [UserId.from_hex(p.name) for p in sorted(root.iterdir()) if (p / "tower.json").is_file()]

    def save_appointment_receipt(self, tower_id: UserId, locator: Locator, receipt: JsonObject) -> Path:
        path = self._tower_dir(tower_id) / "appointments" / f"{locator.hex()}.json"
        write_private_file(path, _dumps(receipt).encode())
        return path


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def _appointment_inputs(args: argparse.Namespace) -> tuple[Txid, bytes, int]:
    """(dispute txid, penalty tx, to_self_delay) from a JSON file or from the flags.

    The file is python-teos's format ``{"tx": penalty hex, "tx_id": dispute txid, "to_self_delay": n}``;
    ``penalty_rawtx`` and ``dispute_txid`` are accepted as the key names too.
    """
    if args.file:
        try:
            data = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as e:
            raise CommandError(f"cannot read the appointment file {args.file}: {e}", EXIT_USAGE) from None
        if not isinstance(data, dict):
            raise CommandError("the appointment file must hold a JSON object", EXIT_USAGE)
        txid_hex = data.get("tx_id", data.get("dispute_txid"))
        penalty_hex = data.get("tx", data.get("penalty_rawtx"))
        delay = data.get("to_self_delay", args.to_self_delay)
    else:
        txid_hex, penalty_hex, delay = args.dispute_txid, args.penalty_rawtx, args.to_self_delay
    if not txid_hex or not penalty_hex:
        raise CommandError("give an appointment file, or both --dispute-txid and --penalty-rawtx", EXIT_USAGE)
    try:
        txid = Txid.from_hex(txid_hex)
    except ValueError:
        raise CommandError("the dispute txid must be 64 hex characters", EXIT_USAGE) from None
    try:
        penalty = bytes.fromhex(penalty_hex) if isinstance(penalty_hex, str) else b""
    except ValueError:
        penalty = b""
    if not penalty:
        raise CommandError("the penalty transaction must be non-empty hex", EXIT_USAGE)
    if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay < 2**32:
        raise CommandError("to_self_delay must be an integer in [0, 2**32 - 1]", EXIT_USAGE)
    return txid, penalty, delay


# -- commands -----------------------------------------------------------------------------------------


@dataclass
class Context:
    data: UserData
    secret_key: bytes
    user_id: UserId
    timeout: float
    dialect_flag: Dialect | None

    @property
    def channels(self) -> ChannelBook:
        return ChannelBook(self.data.datadir)

    def known_dialect(self, tower_id: UserId) -> Dialect | None:
        """The dialect the user registered with ``tower_id`` in, if they did."""
        if tower_id not in self.data.towers():
            return None
        return Dialect(self.data.load_tower(tower_id)["dialect"])

    def client(self, address: TowerAddress, dialect: Dialect) -> TowerClient:
        """The user's client of the tower at ``address``, identifying itself as teos-client."""
        agent = f"teos-client ({dialect.value} dialect)"
        return TowerClient.at(address.url, dialect, self.secret_key, timeout=self.timeout, user_agent=agent)

    def tower(self, spec: str | None) -> tuple[TowerAddress, TowerClient]:
        """The tower a command talks to: ``--tower`` (id, or id@host:port), else the only one registered."""
        if spec and "@" in spec:
            address = TowerAddress.parse(spec)
            stored = self.data.load_tower(address.tower_id)
        else:
            if spec:
                tower_id = parse_tower_id(spec)
            else:
                known = self.data.towers()
                if not known:
                    raise CommandError("not registered with any tower: run register first", EXIT_USAGE)
                if len(known) > 1:
                    message = f"registered with {len(known)} towers: choose one with --tower"
                    raise CommandError(message, EXIT_USAGE)
                tower_id = known[0]
            stored = self.data.load_tower(tower_id)
            address = TowerAddress(tower_id, stored["netaddr"])
        dialect = Dialect(stored["dialect"])
        if self.dialect_flag is not None and self.dialect_flag is not dialect:
            message = f"registered with this tower in the {dialect.value} dialect; register again to switch"
            raise CommandError(message, EXIT_USAGE)
        return address, self.client(address, dialect)


def cmd_register(ctx: Context, args: argparse.Namespace) -> Any:
    address = TowerAddress.parse(args.tower)
    dialect = ctx.dialect_flag or ctx.known_dialect(address.tower_id) or Dialect.RUST
    tower = ctx.client(address, dialect)
    try:
        answer = tower.register()
    except HttpError as e:
        if e.status != 402:
            raise
        terms = PaymentClient(tower, address.tower_id).check_terms(e.body)
        raise CommandError(
            f"this tower charges {terms.price} sat per registration ({terms.subscription_slots} slots for "
            f"{terms.subscription_duration} blocks): fund a channel and pay (teos-client terms, fundchannel, "
            "openchannel, pay)",
            details={"terms": terms.to_json()},
        ) from None
    receipt = tower.check_registration(answer, address.tower_id)
    ctx.data.save_tower(address, dialect, receipt)
    return {"tower_id": address.tower_id.hex(), "dialect": dialect.value, **receipt}


def cmd_add_appointment(ctx: Context, args: argparse.Namespace) -> Any:
    inputs = _appointment_inputs(args)
    address, tower = ctx.tower(args.tower)
    sent = tower.send_appointment(build_appointment(*inputs, tower.dialect))
    receipt = tower.check_appointment(sent, address.tower_id)
    path = ctx.data.save_appointment_receipt(address.tower_id, sent.locator, receipt)
    return {**receipt, "receipt_file": str(path)}


def cmd_get_appointment(ctx: Context, args: argparse.Namespace) -> Any:
    _, tower = ctx.tower(args.tower)
    try:
        locator = Locator.from_hex(args.locator)
    except ValueError:
        raise CommandError("a locator is 32 hex characters", EXIT_USAGE) from None
    status, answer = tower.get_appointment(locator)
    if status != 200:
        raise HttpError(status, answer)
    return answer


def cmd_get_subscription_info(ctx: Context, args: argparse.Namespace) -> Any:
    _, tower = ctx.tower(args.tower)
    return tower.get_subscription_info()


# -- paid subscriptions (docs/PAYMENTS.md) -----------------------------------------------------------


def _channel_summary(record: ChannelRecord, path: Path | None = None) -> JsonObject:
    """What the user is shown of a channel (never its secret key)."""
    p = record.params
    out: JsonObject = {
        "channel_id": str(p.channel_id) if record.funded else None,
        "tower_id": record.tower_id.hex(),
        "status": record.status,
        "funding_address": p.address(record.terms.network),
        "funding_value": p.funding_value,
        "expiry": p.expiry,
        "nonce": record.nonce,
        "amount": record.amount,
        "max_amount": p.max_amount,
        "registrations": record.registrations,
        "price": record.terms.price,
    }
    if path is not None:
        out["channel_file"] = str(path)
    return out


def _parse_channel_id(text: str) -> ChannelId:
    try:
        return ChannelId.parse(text)
    except ChannelError as e:
        raise CommandError(f"a channel id is <funding txid>:<vout> ({e})", EXIT_USAGE) from None


def _script_for(address_text: str | None, network: str, default: bytes) -> bytes:
    if not address_text:
        return default
    try:
        return bech32.address_to_script(address_text, network)
    except ValueError as e:
        message = f"{address_text!r} is not a segwit address on {network}: {e}"
        raise CommandError(message, EXIT_USAGE) from None


def _record(ctx: Context, channel: str | None) -> ChannelRecord:
    """The channel a command is about: the one named, else the only funded channel kept."""
    if channel:
        record = ctx.channels.get(_parse_channel_id(channel))
        if record is None:
            raise CommandError(f"no channel {channel} in {ctx.channels.root}", EXIT_USAGE)
        return record
    funded = [r for r in ctx.channels.records() if r.funded]
    if len(funded) != 1:
        raise CommandError(f"{len(funded)} channels are kept: name one with --channel", EXIT_USAGE)
    return funded[0]


def _payments(ctx: Context, record: ChannelRecord) -> PaymentClient:
    address = TowerAddress(record.tower_id, record.netaddr)
    dialect = ctx.dialect_flag or ctx.known_dialect(record.tower_id) or Dialect.RUST
    return PaymentClient(ctx.client(address, dialect), record.tower_id)


def cmd_terms(ctx: Context, args: argparse.Namespace) -> Any:
    address = TowerAddress.parse(args.tower)
    terms, tip = PaymentClient(ctx.client(address, Dialect.RUST), address.tower_id).terms()
    return {"tower_id": address.tower_id.hex(), "terms": terms.to_json(), "tip_height": tip}


def cmd_fundchannel(ctx: Context, args: argparse.Namespace) -> Any:
    address = TowerAddress.parse(args.tower)
    payments = PaymentClient(ctx.client(address, Dialect.RUST), address.tower_id)
    terms, tower_tip = payments.terms()
    wallet = WalletRPC(args.bitcoind) if args.bitcoind else None
    expiry = args.expiry
    if expiry is None:
        tip = int(wallet.call("getblockcount")) if wallet is not None else tower_tip
        if tip is None:
            raise CommandError("the tower did not say its height: give --expiry", EXIT_USAGE)
        expiry = tip + min(args.blocks, terms.max_channel_blocks)
    secret = crypto.generate_secret_key()
    user_key = crypto.public_key(secret).raw
    change = _script_for(args.change_address, terms.network, script.p2wpkh(user_key))
    params = ChannelParams(
        PLACEHOLDER_ID, args.amount, user_key, terms.tower_key, expiry, change, terms.fee_rate
    )
    try:
        params.validate()
    except ChannelError as e:
        raise CommandError(f"cannot make this channel: {e}", EXIT_USAGE) from None
    if params.max_amount < terms.price:
        raise CommandError(f"{args.amount} sat cannot pay one registration ({terms.price} sat and the fee)",
                           EXIT_USAGE)
    record = ChannelRecord(address.tower_id, address.netaddr, terms, secret, params)
    out = {"funding_address": params.address(terms.network), "funding_value": args.amount, "expiry": expiry,
           "witness_script": params.witness_script.hex(), "registrations": params.max_amount // terms.price}
    if wallet is not None:
        txid = Txid.from_hex(wallet.call("sendtoaddress", out["funding_address"], btc(args.amount)))
        raw = bytes.fromhex(wallet.call("gettransaction", txid.hex())["hex"])
        outputs = decode_transaction(raw).outputs
        vouts = [i for i, o in enumerate(outputs) if o.script_pubkey == params.script_pubkey]
        if not vouts:
            raise CommandError(f"the wallet's transaction {txid.hex()} does not pay the channel", details=out)
        record = replace(record, params=replace(params, channel_id=ChannelId(txid, vouts[0])), funded=True)
        out["channel_id"] = str(record.channel_id)
    elif args.input:
        spends = [_parse_input(text) for text in args.input]
        change_out = None
        if args.input_change_address:
            rest = sum(utxo.value for _, _, utxo in spends) - args.amount - args.fee
            change_out = TxOut(rest, _script_for(args.input_change_address, terms.network, b""))
        out["psbt"] = channel.funding_psbt(user_key, terms.tower_key, expiry, args.amount, spends,
                                           change_out).to_base64()
    out["channel_file"] = str(ctx.channels.save(record))
    return out


def _parse_input(text: str) -> tuple[Txid, int, TxOut]:
    """``<txid>:<vout>:<sats>:<scriptPubKey hex>``: a coin of the user's wallet, for the PSBT."""
    try:
        txid_hex, vout, sats, spk = text.split(":")
        return Txid.from_hex(txid_hex), int(vout), TxOut(int(sats), bytes.fromhex(spk))
    except ValueError:
        raise CommandError(f"an input is <txid>:<vout>:<sats>:<scriptPubKey hex>, not {text!r}",
                           EXIT_USAGE) from None


def cmd_openchannel(ctx: Context, args: argparse.Namespace) -> Any:
    cid = _parse_channel_id(args.channel_id)
    record = ctx.channels.get(cid)
    if record is None:
        pending = [r for r in ctx.channels.pending()
                   if not args.address or r.params.address(r.terms.network) == args.address]
        if len(pending) != 1:
            raise CommandError(f"{len(pending)} channels wait for their funding: choose one with --address",
                               EXIT_USAGE)
        record = replace(pending[0], params=replace(pending[0].params, channel_id=cid), funded=True)
    record = _payments(ctx, record).open_channel(record)
    return _channel_summary(record, ctx.channels.save(record))


def cmd_pay(ctx: Context, args: argparse.Namespace) -> Any:
    record = _record(ctx, args.channel)
    payments = _payments(ctx, record)
    try:
        paid = payments.pay_retrying(record, args.registrations)
    except ValueError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    path = ctx.channels.save(paid.record)
    address = TowerAddress(record.tower_id, record.netaddr)
    ctx.data.save_tower(address, payments.tower.dialect, paid.receipt)
    return {"tower_id": record.tower_id.hex(), "dialect": payments.tower.dialect.value, **paid.receipt,
            "registrations": paid.registrations, "channel": _channel_summary(paid.record, path)}


def cmd_getchannel(ctx: Context, args: argparse.Namespace) -> Any:
    kept = _record(ctx, args.channel)
    record = _payments(ctx, kept).get_channel(kept)
    return _channel_summary(record, ctx.channels.save(record))


def cmd_refund(ctx: Context, args: argparse.Namespace) -> Any:
    record = _record(ctx, args.channel)
    destination = _script_for(args.to, record.terms.network, script.p2wpkh(record.user_key))
    try:
        tx = channel.refund_tx(record.params, destination, args.feerate * 1000, record.user_secret)
    except ChannelError as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    out = {"channel_id": str(record.channel_id), "refund_txid": tx.txid.hex(), "refund_tx": tx.raw.hex(),
           "valid_in_blocks_above": record.params.expiry}
    if args.bitcoind:
        WalletRPC(args.bitcoind).call("sendrawtransaction", tx.raw.hex())
        ctx.channels.save(replace(record, status="refunded"))
        out["broadcast"] = True
    return out


def cmd_listchannels(ctx: Context, args: argparse.Namespace) -> Any:
    return {"channels": [_channel_summary(r) for r in ctx.channels.records()]}


def _add_payment_commands(sub: Any) -> None:
    p = sub.add_parser("terms", help="a paid tower's terms (checked against its tower id)")
    p.add_argument("tower", help="<tower_id>@<host>[:<port>]")
    p.set_defaults(handler=cmd_terms)
    p = sub.add_parser("fundchannel", help="make a channel key and fund a channel to the tower: prints its "
                       "address, a PSBT for your wallet (with --input), or funds it from a bitcoind wallet")
    p.add_argument("tower", help="<tower_id>@<host>[:<port>]")
    p.add_argument("--amount", type=int, required=True, help="satoshis to lock in the channel")
    p.add_argument("--expiry", type=int, help="the channel's expiry height (default: tip + --blocks)")
    p.add_argument("--blocks", type=int, default=DEFAULT_CHANNEL_BLOCKS,
                   help=f"blocks until expiry (default {DEFAULT_CHANNEL_BLOCKS}; at most the tower's "
                   "maximum)")
    p.add_argument("--change-address", help="where each payment's change goes (default: your channel key)")
    p.add_argument("--bitcoind", help="fund from this bitcoind wallet: http://user:password@host:port"
                   "[/wallet/<name>]")
    p.add_argument("--input", action="append", help="a coin to spend in the PSBT: "
                   "<txid>:<vout>:<sats>:<scriptPubKey hex> (repeat for more)")
    p.add_argument("--input-change-address", help="the PSBT's change address (default: no change output)")
    p.add_argument("--fee", type=int, default=1000, help="the PSBT's fee in satoshis (with a change output)")
    p.set_defaults(handler=cmd_fundchannel)
    p = sub.add_parser("openchannel", help="open a funded channel with the tower")
    p.add_argument("channel_id", help="<funding txid>:<vout>")
    p.add_argument("--address", help="the funding address, when several channels wait for their funding")
    p.set_defaults(handler=cmd_openchannel)
    p = sub.add_parser("pay", help="register (or top up) with a paid tower through a channel")
    p.add_argument("--channel", help="<funding txid>:<vout> (default: the only channel kept)")
    p.add_argument("--registrations", type=int, default=1, help="how many registrations to pay for")
    p.set_defaults(handler=cmd_pay)
    p = sub.add_parser("getchannel", help="the channel's state as the tower has it (checked); resumes a "
                       "client that lost track")
    p.add_argument("--channel", help="<funding txid>:<vout> (default: the only channel kept)")
    p.set_defaults(handler=cmd_getchannel)
    p = sub.add_parser("refund", help="after expiry, take back a channel the tower never claimed")
    p.add_argument("--channel", help="<funding txid>:<vout> (default: the only channel kept)")
    p.add_argument("--to", help="address to refund to (default: your channel key)")
    p.add_argument("--feerate", type=int, default=2, help="sat/vB (default 2)")
    p.add_argument("--bitcoind", help="broadcast through this bitcoind: http://user:password@host:port")
    p.set_defaults(handler=cmd_refund)
    sub.add_parser("listchannels", help="the channels kept in the datadir").set_defaults(
        handler=cmd_listchannels)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teos-client", description="Use a watchtower as a Lightning user.")
    parser.add_argument("--datadir", default=DEFAULT_DATADIR, help="the user's key and receipts "
                        f"(default {DEFAULT_DATADIR})")
    parser.add_argument("--dialect", choices=[d.value for d in Dialect], default=None,
                        help="client dialect (default rust; remembered per tower at register)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the tower")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    p = sub.add_parser("register", help="register (or top up) with a tower")
    p.add_argument("tower", help="<tower_id>@<host>[:<port>]")
    p.set_defaults(handler=cmd_register)
    p = sub.add_parser("add_appointment", help="send an encrypted penalty for a dispute txid")
    p.add_argument("file", nargs="?",
                   help='JSON file {"tx": penalty hex, "tx_id": dispute txid, "to_self_delay": n}')
    p.add_argument("--dispute-txid", help="txid of the commitment transaction that would be a breach")
    p.add_argument("--penalty-rawtx", help="the penalty transaction (hex)")
    p.add_argument("--to-self-delay", type=int, default=DEFAULT_TO_SELF_DELAY)
    p.set_defaults(handler=cmd_add_appointment)
    p = sub.add_parser("get_appointment", help="ask the tower about a locator")
    p.add_argument("locator")
    p.set_defaults(handler=cmd_get_appointment)
    p = sub.add_parser("get_subscription_info", help="slots, expiry and locators the tower holds for you")
    p.set_defaults(handler=cmd_get_subscription_info)
    _add_payment_commands(sub)
    for name in ("add_appointment", "get_appointment", "get_subscription_info"):
        sub.choices[name].add_argument("--tower", help="tower id or <tower_id>@<host>:<port> (default: the "
                                       "only one registered)")
    return parser


def run(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    try:
        data = UserData(Path(args.datadir).expanduser())
        secret = data.secret_key()
        ctx = Context(data, secret, crypto.public_key(secret), args.timeout,
                      Dialect(args.dialect) if args.dialect else None)
        out.write(_dumps(args.handler(ctx, args)))
        return 0
    except WalletError as e:  # the user's own bitcoind refused (teos-client fundchannel/refund --bitcoind)
        return report(CommandError(f"bitcoind refused: {e.message} ({e.code})"), err, peer="bitcoind",
                      bad_answer=EXIT_BAD_ANSWER, http_details=True)  # fmt: skip
    except REPORTED as e:
        return report(e, err, peer="the tower", bad_answer=EXIT_BAD_ANSWER, http_details=True)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
