"""teosd's configuration: one frozen dataclass, loaded and validated once at start-up.

Sources, lowest to highest precedence: built-in defaults, the file ``<datadir>/teos.conf``, environment
variables ``TEOS_<KEY>`` and command-line flags ``--<key>``. Every option has one name (``apiport``,
``btcrpcuser`` ...) used as the flag, the file key and, upper-cased, the environment variable. Names are
case-insensitive and underscores are ignored, so ``btc_rpc_user`` (the spelling of the older towers'
files) means ``btcrpcuser`` too.

The file is INI: keys either at the top of the file without a section, or under one ``[teos]`` section
(``teos.conf.example`` documents both and every option). Anything else (an unknown key or section, a line
that is not ``key = value``, a bad value) raises ``ConfigError`` naming the key, its source and the value;
teosd then exits non-zero. ``datadir`` (where the file lives) and ``overwritekey`` (a one-off action) are
not accepted in the file.
"""

from __future__ import annotations

import argparse
import configparser
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from teos.payments.config import CONSTRAINTS, PaymentConfig, PaymentConfigError

CONF_FILE_NAME = "teos.conf"
ENV_PREFIX = "TEOS_"

# Networks as named on the command line -> (the chain name ``getblockchaininfo`` reports,
# the default RPC port, the subdirectory of Bitcoin Core's datadir that holds its cookie).
NETWORKS: dict[str, tuple[str, int, str]] = {
    "mainnet": ("main", 8332, ""),
    "testnet": ("test", 18332, "testnet3"),
    "testnet4": ("testnet4", 48332, "testnet4"),
    "signet": ("signet", 38332, "signet"),
    "regtest": ("regtest", 18443, "regtest"),
}
_NETWORK_ALIASES = {"main": "mainnet", "bitcoin": "mainnet", "test": "testnet", "testnet3": "testnet"}


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key, where it came from and the value."""


@dataclass(frozen=True)
class Config:
    """Every setting teosd runs with. Built only by ``load_config``."""

    datadir: Path
    api_bind: str
    api_port: int
    api_threads: int
    api_workers: int
    rpc_bind: str
    rpc_port: int
    btc_network: str
    btc_rpc_connect: str
    btc_rpc_port: int
    btc_rpc_user: str
    btc_rpc_password: str
    btc_rpc_cookie: Path | None
    zmq_hashblock: str
    poll_interval: float
    subscription_slots: int
    subscription_duration: int
    expiry_delta: int
    max_appointments: int
    min_to_self_delay: int
    locator_cache_size: int
    rebroadcast_after: int
    log_file: Path | None
    debug: bool
    overwrite_key: bool
    btc_rpc_timeout: float = 30.0
    btc_startup_timeout: float = 120.0
    watchdog_timeout: float = 300.0
    # Bounds on what one client can take (issue 13); see teos.api.serving and teos.gatekeeper.
    client_timeout: float = 10.0
    api_max_connections: int = 16384
    behind_proxy: bool = False
    max_appointments_per_user: int = 100_000
    new_user_reserve: int = 20
    new_user_blocks: int = 144
    max_users: int = 1_000_000
    registrations_per_hour: int = 30
    api_requests_per_second: int = 50
    btc_rpc_password_file: Path | None = None
    payment: PaymentConfig = field(default_factory=PaymentConfig)  # price 0: a free tower
    notes: tuple[str, ...] = ()  # warnings about the configuration, logged at start

    @property
    def api_workers_count(self) -> int:
        """API worker processes to run: ``api_workers``, or one per CPU core when it is 0."""
        return self.api_workers or max(1, min(os.cpu_count() or 1, 16))

    @property
    def chain_name(self) -> str:
        """The chain name bitcoind reports for ``btc_network`` (``main``, ``test``, ``regtest`` ...)."""
        return NETWORKS[self.btc_network][0]

    @property
    def network_dir(self) -> Path:
        """Everything that belongs to one network: ``<datadir>/<network>/``."""
        return self.datadir / self.btc_network

    @property
    def db_path(self) -> Path:
        return self.network_dir / "db"

    @property
    def key_path(self) -> Path:
        return self.network_dir / "teos_sk.der"


# -- value parsers (each raises ValueError with a short reason) -------------------------------------


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError("not an integer") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}" if high is not None else f"must be >= {low}")
        return value

    return parse


def _port(text: str) -> int:
    return _int_in(1, 65535)(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _seconds_or_off(text: str) -> float:
    """A number of seconds, 0 meaning off."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("not a number") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number of seconds, 0 to turn it off")
    return value


def _network(text: str) -> str:
    name = text.strip().lower()
    name = _NETWORK_ALIASES.get(name, name)
    if name not in NETWORKS:
        raise ValueError(f"unknown network (expected one of {', '.join(NETWORKS)})")
    return name


def _host(text: str) -> str:
    host = text.strip()
    if not host or any(c.isspace() for c in host):
        raise ValueError("must be a host name or IP address")
    return host


def _text(text: str) -> str:
    return text.strip()


def _zmq_url(text: str) -> str:
    url = text.strip()
    if url and not (url.startswith("tcp://") or url.startswith("ipc://")):
        raise ValueError("must be empty (no ZMQ) or a tcp:// or ipc:// endpoint")
    return url


def _optional_path(text: str) -> Path | None:
    return Path(text.strip()).expanduser() if text.strip() else None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


@dataclass(frozen=True)
class _Option:
    name: str  # flag, file key and (upper-cased, after TEOS_) environment variable
    field: str  # Config attribute
    parse: Callable[[str], Any]
    default: str | None  # as text; None: computed (datadir, btcrpcport)
    help: str
    in_file: bool = True
    is_flag: bool = False  # a switch on the command line (no value)


# Bounds on what one client can take (issue 13): connections, time, per-address and per-user shares.
HARDENING_OPTIONS: tuple[_Option, ...] = (
    _Option("clienttimeout", "client_timeout", _positive_float, "10",
            "seconds a client has to send a request's header and body (also how long an idle "
            "keep-alive connection stays open)"),
    _Option("apimaxconnections", "api_max_connections", _int_in(64, 1 << 20), "16384",
            "connections each API worker holds at most (bounded by the open-file limit)"),
    _Option("behindproxy", "behind_proxy", _bool, "false",
            "clients reach the API through Tor or a reverse proxy, so their address means nothing: "
            "per-address limits (apirequestspersecond, requests in progress, registrationsperhour, a paid "
            "tower's channel openings) are off", is_flag=True),
    _Option("maxappointmentsperuser", "max_appointments_per_user", _int_in(1), "100000",
            "appointments one user may hold at most"),
    _Option("newuserreserve", "new_user_reserve", _int_in(0, 90), "20",
            "percent of maxappointments kept for established users: once the tower is that close "
            "to full, new users may neither register nor add appointments"),
    _Option("newuserblocks", "new_user_blocks", _int_in(0, 2**31), "144",
            "blocks after its first registration during which a user counts as new"),
    _Option("maxusers", "max_users", _int_in(1), "1000000",
            "registered users at most (top-ups of existing users are always accepted)"),
    _Option("apirequestspersecond", "api_requests_per_second", _int_in(0, 1 << 20), "50",
            "requests per second one client address may make to each API worker, a burst of twice that "
            "(0: no limit; off with behindproxy)"),
    _Option("registrationsperhour", "registrations_per_hour", _int_in(0, 1 << 20), "30",
            "registrations and top-ups accepted per client address per hour (0: no limit; off with "
            "behindproxy)"),
    _Option("btcrpcpasswordfile", "btc_rpc_password_file", _optional_path, "",
            "file holding the bitcoind RPC password (first line), so it is not on the command line"),
)

OPTIONS: tuple[_Option, ...] = (
    _Option("datadir", "datadir", lambda t: Path(t.strip()).expanduser(), None,
            "data directory: teos.conf, and per network <network>/db and <network>/teos_sk.der "
            "(default: ~/.teos)", in_file=False),
    _Option("apibind", "api_bind", _host, "127.0.0.1", "address the public HTTP API listens on"),
    _Option("apiport", "api_port", _port, "9814", "port of the public HTTP API"),
    _Option("apiworkers", "api_workers", _int_in(0, 64), "0",
            "processes serving the public API (0: one per CPU core); the database stays in teosd's "
            "main process"),
    _Option("apithreads", "api_threads", _int_in(1, 256), "8",
            "threads per API worker (requests wait on disk writes, which are grouped)"),
    _Option("rpcbind", "rpc_bind", _host, "127.0.0.1",
            "address of the admin API (teos-cli, /metrics, /ready); keep it on localhost"),
    _Option("rpcport", "rpc_port", _port, "8814", "port of the admin API"),
    _Option("btcnetwork", "btc_network", _network, "mainnet",
            f"bitcoin network: {', '.join(NETWORKS)}"),
    _Option("btcrpcconnect", "btc_rpc_connect", _host, "127.0.0.1", "bitcoind RPC host"),
    _Option("btcrpcport", "btc_rpc_port", _port, None,
            "bitcoind RPC port (default: the network's, 8332 mainnet, 18332 testnet, 48332 testnet4, "
            "38332 signet, 18443 regtest)"),
    _Option("btcrpcuser", "btc_rpc_user", _text, "", "bitcoind RPC user (empty: use the cookie file)"),
    _Option("btcrpcpassword", "btc_rpc_password", _text, "",
            "bitcoind RPC password. Not as a flag: every local user can read the command line (ps); "
            "use btcrpcpasswordfile, TEOS_BTCRPCPASSWORD or teos.conf"),
    _Option("btcrpccookie", "btc_rpc_cookie", _optional_path, "",
            "bitcoind cookie file, used when btcrpcuser is empty "
            "(default: ~/.bitcoin/[<network dir>/].cookie)"),
    _Option("zmqhashblock", "zmq_hashblock", _zmq_url, "",
            "bitcoind's zmqpubhashblock endpoint, e.g. tcp://127.0.0.1:28332 (empty: poll only)"),
    _Option("pollinterval", "poll_interval", _positive_float, "60",
            "seconds between polls of bitcoind for a new tip (also the fallback when ZMQ is silent)"),
    _Option("btcrpctimeout", "btc_rpc_timeout", _positive_float, "30",
            "seconds to wait for bitcoind's answer to one call before counting it unanswered"),
    _Option("btcstartuptimeout", "btc_startup_timeout", _positive_float, "120",
            "seconds teosd keeps asking bitcoind at start (down, warming up or answering garbage) "
            "before it gives up and exits 1"),
    _Option("watchdogtimeout", "watchdog_timeout", _seconds_or_off, "300",
            "seconds without a block processed while bitcoind answers and its tip is ahead, after "
            "which teosd exits with status 3 to be restarted (a dead engine or monitor thread: at "
            "once); 0 turns the watchdog off"),
    _Option("subscriptionslots", "subscription_slots", _int_in(1, 2**32 - 1), "10000",
            "slots a registration adds (a slot holds up to 2048 bytes of encrypted blob)"),
    _Option("subscriptionduration", "subscription_duration", _int_in(1, 2**31), "4320",
            "blocks a registration lasts"),
    _Option("expirydelta", "expiry_delta", _int_in(0, 2**31), "6",
            "blocks after a subscription expires before the user's data is deleted"),
    _Option("maxappointments", "max_appointments", _int_in(1), "1000000",
            "appointments the tower watches at most (across all users)"),
    _Option("mintoselfdelay", "min_to_self_delay", _int_in(0, 2**32 - 1), "20",
            "smallest to_self_delay an appointment may have"),
    _Option("locatorcachesize", "locator_cache_size", _int_in(1, 1000), "6",
            "recent blocks whose txids are checked against new appointments"),
    _Option("rebroadcastafter", "rebroadcast_after", _int_in(1, 2**31), "6",
            "blocks without a confirmation after which a penalty is broadcast again"),
    _Option("paymentprice", "payment_price", _int_in(0, 21_000_000 * 100_000_000), "0",
            "satoshis per registration, paid through a payment channel (0: a free tower; both client "
            "dialects register as always)"),
    _Option("paymentminconf", "payment_min_confirmations", _int_in(0), "3",
            "confirmations a channel's funding output needs to open it and to take payments"),
    _Option("paymentminblocks", "payment_min_blocks", _int_in(0), "288",
            "blocks a channel must have left before its expiry to open or take a payment"),
    _Option("paymentmaxchannelblocks", "payment_max_channel_blocks", _int_in(0), "52560",
            "blocks above the tip a channel's expiry may be at most when it opens"),
    _Option("paymentfeerate", "payment_fee_rate", _int_in(0), "2000",
            "fee rate of every payment transaction (hence of the claim), sat per 1000 vbytes"),
    _Option("paymentclaimmargin", "payment_claim_margin", _int_in(0), "144",
            "the tower claims a channel this many blocks before its expiry (below paymentminblocks)"),
    _Option("paymentrebroadcast", "payment_rebroadcast", _int_in(0), "3",
            "blocks without a confirmation after which a claim is broadcast again"),
    _Option("paymentbumpmargin", "payment_bump_margin", _int_in(0), "36",
            "from this many blocks before expiry an unconfirmed claim's fee is raised at every block "
            "(CPFP)"),
    _Option("paymentmaxbumpfeerate", "payment_max_bump_fee_rate", _int_in(0), "100000",
            "highest fee rate a claim's fee bumps go to, sat per 1000 vbytes"),
    _Option("paymentclaimconfirmations", "payment_claim_confirmations", _int_in(0), "100",
            "confirmations after which a claim is irrevocable"),
    _Option("paymentmaxunpaidchannels", "payment_max_unpaid_channels", _int_in(0), "10000",
            "open channels without a payment the tower accepts at most"),
    _Option("logfile", "log_file", _optional_path, "",
            "also write the log to this file (relative to the datadir; empty: stderr only)"),
    _Option("debug", "debug", _bool, "false", "log debug messages", is_flag=True),
    _Option("overwritekey", "overwrite_key", _bool, "false",
            "replace the tower's key with a new one (its users must register again)", in_file=False,
            is_flag=True),
    *HARDENING_OPTIONS,
)
_BY_KEY = {o.name: o for o in OPTIONS}


def _normalise(key: str) -> str:
    return key.strip().lower().replace("_", "").replace("-", "")


def build_parser() -> argparse.ArgumentParser:
    """The command line of teosd; every value is kept as text and validated by ``load_config``."""
    parser = argparse.ArgumentParser(
        prog="teosd",
        description="The Eye of Satoshi: a Lightning Network watchtower. Each option can also be set in "
        "<datadir>/teos.conf (key = value) or as the environment variable TEOS_<OPTION>; "
        "flags override the environment, which overrides the file.",
        argument_default=argparse.SUPPRESS,
    )
    for o in OPTIONS:
        if o.is_flag:
            parser.add_argument(f"--{o.name}", action="store_const", const="true", help=o.help)
        else:
            shown = f" (default: {o.default or 'empty'})" if o.default is not None else ""
            parser.add_argument(f"--{o.name}", metavar=o.name.upper(), help=o.help + shown)
    return parser


def _read_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    parser = configparser.ConfigParser(interpolation=None, strict=True, allow_no_value=False,
                                       delimiters=("=",), comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=None, default_section="\x00none")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        try:
            parser.read_string(text, source=str(path))
        except configparser.MissingSectionHeaderError:
            parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",),
                                               default_section="\x00none")
            parser.optionxform = str  # type: ignore[assignment,method-assign]
            parser.read_string("[teos]\n" + text, source=str(path))
    except configparser.Error as e:
        raise ConfigError(f"{path}: malformed configuration file: {_one_line(str(e))}") from None
    sections = parser.sections()
    extra = [s for s in sections if s != "teos"]
    if extra:
        raise ConfigError(f"{path}: unknown section [{extra[0]}] (keys go at the top or under [teos])")
    values: dict[str, str] = {}
    if "teos" in sections:
        for raw_key, value in parser.items("teos"):
            key = _normalise(raw_key)
            option = _BY_KEY.get(key)
            if option is None:
                raise ConfigError(f"unknown key '{raw_key}' in {path}")
            if not option.in_file:
                raise ConfigError(f"key '{raw_key}' in {path} is not allowed in the file "
                                  f"(use --{option.name} or {ENV_PREFIX}{option.name.upper()})")
            if key in values:
                raise ConfigError(f"key '{raw_key}' appears twice in {path}")
            values[key] = value
    return values


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _read_env(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = _normalise(name[len(ENV_PREFIX):])
        if key not in _BY_KEY:
            raise ConfigError(f"unknown key in environment variable {name}")
        values[key] = value
    return values


def _password_from_file(parsed: dict[str, Any], datadir: Path) -> dict[str, Any]:
    """``btc_rpc_password`` read from ``btcrpcpasswordfile`` (its first line; relative to the datadir)."""
    path: Path | None = parsed.get("btc_rpc_password_file")
    if path is None:
        return {}
    if not path.is_absolute():
        path = datadir / path
    if parsed["btc_rpc_password"]:
        raise ConfigError("btcrpcpassword and btcrpcpasswordfile are both set; keep one")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"btcrpcpasswordfile {path}: cannot read ({e})") from None
    if not lines or not lines[0]:
        raise ConfigError(f"btcrpcpasswordfile {path}: the first line (the password) is empty")
    return {"btc_rpc_password": lines[0], "btc_rpc_password_file": path}


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Builds the Config from defaults, ``<datadir>/teos.conf``, ``environ`` and ``argv``.

    ``argv`` excludes the program name (None: ``sys.argv[1:]``); ``environ`` defaults to ``os.environ``.
    Raises ConfigError; argparse itself exits with status 2 on an unknown flag or a missing value.
    """
    env = os.environ if environ is None else environ
    flags: dict[str, str] = vars(build_parser().parse_args(argv))
    env_values = _read_env(env)

    # Where the file lives is decided before the file is read.
    datadir_text, datadir_source = "~/.teos", "default"
    if "datadir" in env_values:
        datadir_text, datadir_source = env_values["datadir"], f"environment {ENV_PREFIX}DATADIR"
    if "datadir" in flags:
        datadir_text, datadir_source = flags["datadir"], "command line --datadir"
    if not datadir_text.strip():
        raise ConfigError(f"datadir ({datadir_source}) is empty")
    datadir = Path(datadir_text.strip()).expanduser().absolute()
    conf_path = datadir / CONF_FILE_NAME
    file_values = _read_file(conf_path) if conf_path.exists() else {}

    # key -> (text, source description)
    chosen: dict[str, tuple[str, str]] = {}
    for o in OPTIONS:
        if o.default is not None:
            chosen[o.name] = (o.default, "default")
    for key, text in file_values.items():
        chosen[key] = (text, f"{conf_path}")
    for key, text in env_values.items():
        chosen[key] = (text, f"environment {ENV_PREFIX}{key.upper()}")
    for key, text in flags.items():
        chosen[key] = (text, f"command line --{key}")

    parsed: dict[str, Any] = {"datadir": datadir}
    for o in OPTIONS:
        if o.name == "datadir" or o.name not in chosen:
            continue
        text, source = chosen[o.name]
        try:
            parsed[o.field] = o.parse(text)
        except ValueError as e:
            raise ConfigError(f"invalid value for {o.name} ({source}): {text!r}: {e}") from None
    if "btc_rpc_port" not in parsed:
        parsed["btc_rpc_port"] = NETWORKS[parsed["btc_network"]][1]
    parsed.update(_password_from_file(parsed, datadir))
    if "btcrpcpassword" in flags and parsed["btc_rpc_password"]:
        parsed["notes"] = ("the bitcoind RPC password was given as --btcrpcpassword: every local user can "
                           "read it with ps; use btcrpcpasswordfile, TEOS_BTCRPCPASSWORD or teos.conf",)
    if parsed["btc_rpc_user"] and not parsed["btc_rpc_password"]:
        raise ConfigError("btcrpcuser is set but btcrpcpassword is empty")
    if not parsed["btc_rpc_user"] and parsed["btc_rpc_cookie"] is None:
        subdir = NETWORKS[parsed["btc_network"]][2]
        parsed["btc_rpc_cookie"] = Path("~/.bitcoin").expanduser() / subdir / ".cookie"
    if parsed["log_file"] is not None and not parsed["log_file"].is_absolute():
        parsed["log_file"] = datadir / parsed["log_file"]
    parsed["payment"] = _payment_config(parsed, chosen)
    return Config(**parsed)


# PaymentConfig's fields -> the options that set them.
PAYMENT_OPTIONS = {
    "price": "paymentprice",
    "min_funding_confirmations": "paymentminconf",
    "min_blocks_before_expiry": "paymentminblocks",
    "max_channel_blocks": "paymentmaxchannelblocks",
    "fee_rate": "paymentfeerate",
    "claim_margin": "paymentclaimmargin",
    "rebroadcast_blocks": "paymentrebroadcast",
    "bump_margin": "paymentbumpmargin",
    "max_bump_fee_rate": "paymentmaxbumpfeerate",
    "claim_confirmations": "paymentclaimconfirmations",
    "max_unpaid_channels": "paymentmaxunpaidchannels",
}


def _payment_config(parsed: dict[str, Any], chosen: Mapping[str, tuple[str, str]]) -> PaymentConfig:
    """The payment options as one validated ``PaymentConfig``; a ConfigError names each option that does
    not fit (with its value and where it came from)."""
    values = {name: parsed.pop(_BY_KEY[key].field) for name, key in PAYMENT_OPTIONS.items()}
    try:
        return PaymentConfig(**values)
    except PaymentConfigError as e:
        parts = []
        for name in e.fields:
            key = PAYMENT_OPTIONS[name]
            text, source = chosen[key]
            parts.append(f"{key} ({source}) is {text.strip()!r} but must be {CONSTRAINTS[name]}")
        raise ConfigError("invalid payment settings: " + "; ".join(parts)) from None
