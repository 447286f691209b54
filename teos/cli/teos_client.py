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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from coincurve import PrivateKey

from common import crypto
from common.client import TowerClient, build_appointment
from common.fsutil import write_private_file
from common.http import HttpError
from common.types import Dialect, Locator, Txid, UserId
from teos.cli.errors import EXIT_BAD_ANSWER, EXIT_USAGE, REPORTED, CommandError, report

DEFAULT_DATADIR = "~/.teos_client"
DEFAULT_TOWER_PORT = 9814
DEFAULT_TO_SELF_DELAY = 20
KEY_FILE = "user_sk.der"

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
    receipt = tower.check_registration(tower.register(), address.tower_id)
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
    except REPORTED as e:
        return report(e, err, peer="the tower", bad_answer=EXIT_BAD_ANSWER, http_details=True)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
