"""load_config: defaults, the file in both layouts, precedence, and the errors that stop teosd."""

from pathlib import Path

import pytest

from teos.config import ConfigError, build_parser, load_config


def _write(datadir: Path, text: str) -> None:
    (datadir / "teos.conf").write_text(text)


def test_defaults_follow_the_existing_towers(tmp_path: Path) -> None:
    c = load_config(["--datadir", str(tmp_path)], {})
    assert (c.api_port, c.rpc_port, c.btc_network, c.btc_rpc_port) == (9814, 8814, "mainnet", 8332)
    assert (c.subscription_slots, c.subscription_duration, c.expiry_delta) == (10000, 4320, 6)
    assert (c.min_to_self_delay, c.locator_cache_size, c.rebroadcast_after) == (20, 6, 6)
    assert c.poll_interval == 60.0
    assert c.db_path == tmp_path / "mainnet" / "db"
    assert c.btc_rpc_cookie is not None and c.btc_rpc_cookie.name == ".cookie"


@pytest.mark.parametrize(
    ("network", "port"),
    [("mainnet", 8332), ("testnet", 18332), ("testnet4", 48332), ("signet", 38332), ("regtest", 18443)],
)
def test_rpc_port_defaults_to_the_networks(tmp_path: Path, network: str, port: int) -> None:
    assert load_config(["--datadir", str(tmp_path), "--btcnetwork", network], {}).btc_rpc_port == port


@pytest.mark.parametrize("text", ["apiport = 1234\n", "[teos]\napiport = 1234\n", "# c\nAPI_PORT=1234\n"])
def test_file_with_or_without_section(tmp_path: Path, text: str) -> None:
    _write(tmp_path, text)
    assert load_config(["--datadir", str(tmp_path)], {}).api_port == 1234


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    _write(tmp_path, "apiport = 1001\nrpcport = 1001\nsubscriptionslots = 1001\n")
    env = {"TEOS_APIPORT": "1002", "TEOS_RPCPORT": "1002"}
    c = load_config(["--datadir", str(tmp_path), "--apiport", "1003"], env)
    assert (c.api_port, c.rpc_port, c.subscription_slots) == (1003, 1002, 1001)


def test_datadir_from_env(tmp_path: Path) -> None:
    _write(tmp_path, "btcnetwork = regtest\n")
    assert load_config([], {"TEOS_DATADIR": str(tmp_path)}).btc_network == "regtest"


@pytest.mark.parametrize(
    ("text", "env", "argv", "expected"),
    [
        ("foo = 1\n", {}, [], "unknown key 'foo'"),
        ("[bitcoind]\nbtcrpcuser = u\n", {}, [], "unknown section [bitcoind]"),
        ("apiport\n", {}, [], "malformed"),
        ("apiport = 1\napiport = 2\n", {}, [], "malformed"),
        ("apiport = 70000\n", {}, [], "apiport"),
        ("", {"TEOS_APIPORT": "x"}, [], "TEOS_APIPORT"),
        ("", {"TEOS_NOPE": "1"}, [], "TEOS_NOPE"),
        ("", {}, ["--btcnetwork", "moon"], "unknown network"),
        ("", {}, ["--expirydelta", "-1"], "expirydelta"),
        ("", {}, ["--pollinterval", "0"], "pollinterval"),
        ("", {}, ["--zmqhashblock", "http://x"], "zmqhashblock"),
        ("overwritekey = true\n", {}, [], "not allowed in the file"),
        ("btcrpcuser = u\n", {}, [], "btcrpcpassword"),
    ],
)
def test_errors_name_the_problem(tmp_path: Path, text: str, env: dict, argv: list, expected: str) -> None:
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(["--datadir", str(tmp_path), *argv], env)
    assert expected in str(info.value)


def test_bad_value_names_key_source_and_value(tmp_path: Path) -> None:
    _write(tmp_path, "[teos]\nmintoselfdelay = soon\n")
    with pytest.raises(ConfigError) as info:
        load_config(["--datadir", str(tmp_path)], {})
    message = str(info.value)
    assert "mintoselfdelay" in message and "teos.conf" in message and "'soon'" in message


def test_help_lists_every_option() -> None:
    text = build_parser().format_help()
    for flag in ["--apibind", "--apiport", "--rpcbind", "--rpcport", "--btcnetwork", "--btcrpcconnect",
                 "--btcrpcport", "--btcrpcuser", "--btcrpcpassword", "--btcrpccookie", "--datadir",
                 "--overwritekey", "--debug", "--zmqhashblock", "--pollinterval", "--subscriptionslots",
                 "--subscriptionduration", "--expirydelta", "--maxappointments", "--mintoselfdelay",
                 "--locatorcachesize", "--rebroadcastafter", "--apithreads", "--logfile"]:
        assert flag in text


def test_example_file_documents_every_file_option_and_loads(tmp_path: Path) -> None:
    from teos.config import OPTIONS

    example = (Path(__file__).resolve().parents[2] / "teos.conf.example").read_text()
    for option in OPTIONS:
        if option.in_file:
            assert f"# {option.name} =" in example
            if option.default is not None:  # the value shown is the default teosd uses
                assert f"\n# {option.name} = {option.default}\n" in example, option.name
    _write(tmp_path, example)
    load_config(["--datadir", str(tmp_path)], {})


def test_payment_options_make_one_payment_config(tmp_path: Path) -> None:
    flags = ["--datadir", str(tmp_path), "--paymentprice", "2500", "--paymentclaimmargin", "100"]
    config = load_config(flags, {"TEOS_PAYMENTFEERATE": "3000"})
    assert (config.payment.price, config.payment.claim_margin, config.payment.fee_rate) == (2500, 100, 3000)
    assert config.payment.paid
    free = load_config(["--datadir", str(tmp_path)], {})
    assert not free.payment.paid and free.payment.min_blocks_before_expiry == 288


def test_payment_options_that_do_not_fit_are_named(tmp_path: Path) -> None:
    _write(tmp_path, "paymentminblocks = 100\n")
    with pytest.raises(ConfigError) as info:
        load_config(["--datadir", str(tmp_path), "--paymentclaimmargin", "150"], {})
    message = str(info.value)
    assert "paymentclaimmargin (command line --paymentclaimmargin) is '150'" in message
    assert "below the minimum blocks before expiry" in message
    with pytest.raises(ConfigError, match=r"paymentfeerate .* is '5' but must be 100 to"):
        load_config(["--datadir", str(tmp_path), "--paymentfeerate", "5"], {})
