"""Issue 13, F10: the bitcoind RPC password need not be on the command line, where ``ps`` shows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from teos.config import ConfigError, build_parser, load_config


def test_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "rpc.secret"
    secret.write_text("s3cret with spaces\nignored\n")
    argv = ["--datadir", str(tmp_path), "--btcrpcuser", "u", "--btcrpcpasswordfile", str(secret)]
    c = load_config(argv, {})
    assert c.btc_rpc_password == "s3cret with spaces"
    assert c.btc_rpc_password_file == secret
    assert c.notes == ()


def test_password_file_relative_to_the_datadir_and_from_the_conf_file(tmp_path: Path) -> None:
    (tmp_path / "rpc.secret").write_text("from-file")
    (tmp_path / "teos.conf").write_text("btcrpcuser = u\nbtcrpcpasswordfile = rpc.secret\n")
    assert load_config(["--datadir", str(tmp_path)], {}).btc_rpc_password == "from-file"


def test_password_from_the_environment_is_not_a_note(tmp_path: Path) -> None:
    c = load_config(["--datadir", str(tmp_path), "--btcrpcuser", "u"], {"TEOS_BTCRPCPASSWORD": "env"})
    assert (c.btc_rpc_password, c.notes) == ("env", ())


def test_password_as_a_flag_is_noted_for_the_log(tmp_path: Path) -> None:
    c = load_config(["--datadir", str(tmp_path), "--btcrpcuser", "u", "--btcrpcpassword", "p"], {})
    assert c.btc_rpc_password == "p"
    assert len(c.notes) == 1 and "ps" in c.notes[0] and "btcrpcpasswordfile" in c.notes[0]
    assert "p" not in c.notes[0].split()  # the note never repeats the password


@pytest.mark.parametrize(
    ("setup", "argv", "expected"),
    [
        (lambda d: None, ["--btcrpcpasswordfile", "missing"], "cannot read"),
        (lambda d: (d / "empty").write_text("\n"), ["--btcrpcpasswordfile", "empty"], "empty"),
        (lambda d: (d / "f").write_text("x"), ["--btcrpcpasswordfile", "f", "--btcrpcpassword", "y"], "both"),
    ],
)
def test_password_file_errors(
    tmp_path: Path, setup: Callable[[Path], None], argv: list[str], expected: str
) -> None:
    setup(tmp_path)
    with pytest.raises(ConfigError, match=expected):
        load_config(["--datadir", str(tmp_path), "--btcrpcuser", "u", *argv], {})


def test_help_warns_against_the_flag() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "--btcrpcpasswordfile" in text
    assert "every local user can read the command line" in text
