"""contrib/teosd.service gives teosd the open files its connection bounds need (issue 13, F1): under the
unit's system call filter teosd cannot raise the limit itself."""

from __future__ import annotations

import re
from pathlib import Path

from teos.api.serving import FD_RESERVE
from teos.config import load_config

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "teosd.service"


def test_the_unit_allows_an_api_worker_its_default_connections(tmp_path: Path) -> None:
    text = UNIT.read_text()
    match = re.search(r"^LimitNOFILE=(\d+)$", text, re.M)
    assert match is not None
    default = load_config(["--datadir", str(tmp_path)], {}).api_max_connections
    assert int(match.group(1)) >= default + FD_RESERVE
    assert re.search(r"^SystemCallFilter=~@privileged @resources$", text, re.M)  # why the unit must set it
    assert "--btcrpcpassword " not in text and "btcrpcpasswordfile" in text
