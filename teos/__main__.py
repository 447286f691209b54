"""``teosd``: runs the watchtower (``python -m teos`` does the same). ``teosd --help`` lists every option."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from teos.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = load_config(argv)
    except ConfigError as e:
        print(f"teosd: configuration error: {e}", file=sys.stderr)
        sys.exit(1)
    from teos.daemon import run

    sys.exit(run(config))


if __name__ == "__main__":
    main()
