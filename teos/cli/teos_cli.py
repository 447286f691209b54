"""teos-cli: the operator's command line for a running teosd, over the admin API.

Every command prints JSON on stdout and exits 0. Failures print ``{"error": ..., "code": ...}`` on stderr and
exit non-zero: 1 when teosd answered with an error, 3 when teosd cannot be reached (not running, wrong
port, no cookie file) - so ``teos-cli gettowerinfo`` works as a readiness probe, as packagers use it. 2 is
a usage error (argparse's).

Where teosd is: ``--rpcconnect``/``--rpcport`` (default 127.0.0.1:8814), else ``rpcbind``/``rpcport`` from
``<datadir>/teos.conf``. The cookie is ``<datadir>/<network>/.cookie`` (``--datadir``, default ~/.teos;
``--btcnetwork``, default the conf file's, else mainnet), written by teosd at start with mode 0600.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

from coincurve import PrivateKey

from common import bech32, payment_key, script
from common.cookie import CookieError, read_cookie
from common.http import JsonHttp
from teos.cli.errors import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, REPORTED, CommandError, report

DEFAULT_DATADIR = "~/.teos"
DEFAULT_RPC_HOST = "127.0.0.1"
DEFAULT_RPC_PORT = 8814
DEFAULT_NETWORK = "mainnet"
PAGE_LIMIT = 1000

# The network names teosd accepts and the directory each one uses (see teos.config).
_NETWORK_ALIASES = {"main": "mainnet", "bitcoin": "mainnet", "test": "testnet", "testnet3": "testnet"}
_NETWORKS = ("mainnet", "testnet", "testnet4", "signet", "regtest")


class AdminClient:
    """The admin API's operations as method calls (JSON in, JSON out)."""

    def __init__(self, host: str, port: int, cookie: tuple[str, str], timeout: float = 30.0) -> None:
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6 literal
        self.base = f"http://{netloc}:{port}"
        user, secret = cookie
        token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        headers = {"Authorization": f"Basic {token}", "User-Agent": "teos-cli"}
        self._http = JsonHttp(self.base, timeout, headers)
        self.timeout = timeout

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        query = ""
        if params:
            query = "?" + urlencode(params)
        return self._http.call(method, path + query)

    def get_tower_info(self) -> Any:
        return self._call("GET", "/gettowerinfo")

    def appointments_page(self, section: str, cursor: str | None, limit: int = PAGE_LIMIT) -> Any:
        params = {"section": section, "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/getallappointments", params)

    def users_page(self, cursor: str | None, limit: int = PAGE_LIMIT) -> Any:
        params = {"limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        return self._call("GET", "/getusers", params)

    def get_appointments(self, locator: str) -> Any:
        return self._call("GET", f"/getappointments/{quote(locator, safe='')}")

    def get_user(self, user_id: str) -> Any:
        return self._call("GET", f"/getuser/{quote(user_id, safe='')}")

    def stop(self) -> Any:
        return self._call("POST", "/stop")

    def list_channels(self) -> Any:
        return self._call("GET", "/listchannels")

    def claim(self, channel_id: str) -> Any:
        return self._call("POST", f"/claim/{quote(channel_id, safe=':')}")

    def claim_all(self) -> Any:
        return self._call("POST", "/claimall")

    def iter_pages(self, fetch: Callable[[str | None], Any]) -> Iterator[Any]:
        """Every item of a paged listing, one page in memory at a time."""
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise CommandError("teosd answered a listing page of an unexpected shape", details=page)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return


# -- output ----------------------------------------------------------------------------------------


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _stream_object_of_lists(sections: Sequence[tuple[str, Iterator[Any]]], out: TextIO) -> None:
    """Writes ``{"name": [items...], ...}`` item by item, so a long listing never sits in memory whole."""
    out.write("{")
    for i, (name, items) in enumerate(sections):
        out.write(("," if i else "") + "\n  " + json.dumps(name) + ": [")
        first = True
        for item in items:
            out.write(("," if not first else "") + "\n    " + json.dumps(item, sort_keys=True))
            first = False
        out.write("]" if first else "\n  ]")
    out.write("\n}\n")


# -- commands: one line each --------------------------------------------------------------------------


def cmd_gettowerinfo(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.get_tower_info(), out)


def cmd_getallappointments(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _stream_object_of_lists([
        ("watcher_appointments", client.iter_pages(lambda c: client.appointments_page("watcher", c))),
        ("responder_trackers", client.iter_pages(lambda c: client.appointments_page("responder", c))),
    ], out)


def cmd_getappointments(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.get_appointments(args.locator), out)


def cmd_getusers(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _stream_object_of_lists([("users", client.iter_pages(client.users_page))], out)


def cmd_getuser(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.get_user(args.user_id), out)


def cmd_stop(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.stop(), out)


def cmd_listchannels(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.list_channels(), out)


def cmd_claim(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.claim(args.channel_id), out)


def cmd_claimall(client: AdminClient, args: argparse.Namespace, out: TextIO) -> None:
    _print_json(client.claim_all(), out)


def cmd_paymentkey(args: argparse.Namespace, out: TextIO) -> None:
    """The key claims pay to, from the tower key file (teosd need not run): the address and, to spend
    what the tower earned, the key as WIF and as a descriptor for a wallet to import. Prints a secret."""
    datadir = Path(args.datadir or os.environ.get("TEOS_DATADIR") or DEFAULT_DATADIR).expanduser()
    network = normalise_network(args.btcnetwork or os.environ.get("TEOS_BTCNETWORK")
                                or _read_conf(datadir).get("btcnetwork") or DEFAULT_NETWORK)  # fmt: skip
    path = datadir / network / "teos_sk.der"
    try:
        tower_secret = bytes(PrivateKey.from_der(path.read_bytes()).secret)
    except OSError as e:
        raise CommandError(f"cannot read the tower key {path}: {e.strerror}", EXIT_USAGE) from None
    except ValueError as e:
        raise CommandError(f"{path} is not a tower key: {e}", EXIT_USAGE) from None
    secret = payment_key.derive_payment_secret(tower_secret)
    public = PrivateKey(secret).public_key.format(compressed=True)
    _print_json({
        "payment_key": public.hex(),
        "address": bech32.script_to_address(script.p2wpkh(public), network),
        "wif": payment_key.wif(secret, network),
        "descriptor": payment_key.descriptor(secret, network),
    }, out)  # fmt: skip


# -- arguments and configuration ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teos-cli", description="Administer a running teosd.")
    parser.add_argument("--datadir", default=None, help=f"teosd's data directory (default {DEFAULT_DATADIR})")
    parser.add_argument("--btcnetwork", default=None, help="network teosd runs on: " + ", ".join(_NETWORKS)
                        + " (default: teos.conf's, else mainnet); the cookie is in <datadir>/<network>/")
    parser.add_argument("--rpcconnect", default=None, help=f"admin API host (default {DEFAULT_RPC_HOST})")
    parser.add_argument("--rpcport", type=int, default=None,
                        help=f"admin API port (default {DEFAULT_RPC_PORT})")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    sub.add_parser("gettowerinfo", help="tower id, counts, heights, readiness").set_defaults(
        handler=cmd_gettowerinfo)
    sub.add_parser("getallappointments", help="every watched appointment and tracker").set_defaults(
        handler=cmd_getallappointments)
    p = sub.add_parser("getappointments", help="every user's appointment for a locator")
    p.add_argument("locator", help="32 hex characters")
    p.set_defaults(handler=cmd_getappointments)
    sub.add_parser("getusers", help="every registered user").set_defaults(handler=cmd_getusers)
    p = sub.add_parser("getuser", help="one user's subscription and appointments")
    p.add_argument("user_id", help="66 hex characters")
    p.set_defaults(handler=cmd_getuser)
    sub.add_parser("stop", help="stop teosd").set_defaults(handler=cmd_stop)
    sub.add_parser("listchannels", help="a paid tower's payment channels: status, paid, claimed, "
                   "unclaimed, blocks to expiry, at risk").set_defaults(handler=cmd_listchannels)
    p = sub.add_parser("claim", help="claim a channel's payments now (teosd claims by itself near expiry)")
    p.add_argument("channel_id", help="<funding txid>:<vout>")
    p.set_defaults(handler=cmd_claim)
    sub.add_parser("claimall", help="claim every open channel that has been paid").set_defaults(
        handler=cmd_claimall)
    sub.add_parser("paymentkey", help="the key claims pay to (from the tower key file): its address, and "
                   "its secret as WIF and descriptor, to sweep what the tower earned (prints a secret)"
                   ).set_defaults(offline=cmd_paymentkey)
    return parser


def _read_conf(datadir: Path) -> dict[str, str]:
    """The few keys teos-cli needs from ``teos.conf`` (top level or ``[teos]``); unreadable files are ignored:
    teosd validates its own file, teos-cli only looks for where to connect."""
    path = datadir / "teos.conf"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string("[__top__]\n" + text)
    except configparser.Error:
        return {}
    values: dict[str, str] = {}
    for section in ("__top__", "teos"):
        if parser.has_section(section):
            for key, value in parser.items(section):
                values[key.replace("_", "").lower()] = value.strip()
    return values


def normalise_network(name: str) -> str:
    network = _NETWORK_ALIASES.get(name.strip().lower(), name.strip().lower())
    if network not in _NETWORKS:
        expected = ", ".join(_NETWORKS)
        raise CommandError(f"unknown network {name!r} (expected one of {expected})", exit_code=EXIT_USAGE)
    return network


def make_client(args: argparse.Namespace) -> AdminClient:
    """Where teosd's admin API is: flags, else teosd's own ``TEOS_<KEY>`` environment variables, else
    ``teos.conf``, else the defaults (so a container's HEALTHCHECK finds what teosd was started with)."""
    env = os.environ
    datadir = Path(args.datadir or env.get("TEOS_DATADIR") or DEFAULT_DATADIR).expanduser()
    conf = _read_conf(datadir)
    network = normalise_network(
        args.btcnetwork or env.get("TEOS_BTCNETWORK") or conf.get("btcnetwork") or DEFAULT_NETWORK
    )
    host = args.rpcconnect or env.get("TEOS_RPCBIND") or conf.get("rpcbind") or DEFAULT_RPC_HOST
    if host in ("0.0.0.0", "::"):
        host = DEFAULT_RPC_HOST
    try:
        port = args.rpcport or int(env.get("TEOS_RPCPORT") or conf.get("rpcport") or DEFAULT_RPC_PORT)
    except ValueError:
        raise CommandError(f"bad rpcport in {datadir / 'teos.conf'}", exit_code=EXIT_USAGE) from None
    try:
        cookie = read_cookie(datadir / network)
    except CookieError as e:
        raise CommandError(str(e), exit_code=EXIT_UNREACHABLE) from None
    return AdminClient(host, port, cookie, timeout=args.timeout)


def run(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    try:
        offline = getattr(args, "offline", None)
        if offline is not None:  # works from the datadir alone, teosd running or not
            offline(args, out)
            return 0
        client = make_client(args)
        args.handler(client, args, out)
        return 0
    except REPORTED as e:
        out.flush()
        return report(e, err, peer="teosd", bad_answer=EXIT_REFUSED, http_details=False)


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
