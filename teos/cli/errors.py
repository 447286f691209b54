"""How both command lines fail: one JSON object on stderr, ``{"error": ..., "code": ...}`` (with
``http_status`` and ``details`` when there are some), and an exit code a script can act on."""

from __future__ import annotations

import json
from typing import Any, TextIO

from common.client import ReceiptError
from common.http import BadResponse, HttpError, Unreachable

EXIT_REFUSED = 1  # the daemon or the tower answered with an error
EXIT_USAGE = 2  # also argparse's
EXIT_UNREACHABLE = 3  # nothing answered: not running, wrong port, no cookie file
EXIT_BAD_ANSWER = 4  # the answer cannot be trusted (teos-client: the tower misbehaved)


class CommandError(Exception):
    """A command that cannot go on; ``exit_code`` says how, ``details`` what was seen."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.details = details


def report(error: Exception, err: TextIO, *, peer: str, bad_answer: int, http_details: bool) -> int:
    """Writes ``error`` to ``err`` as the JSON of the module docstring and returns the exit code.

    ``peer`` names who did not answer ("teosd", "the tower"); ``bad_answer`` is the exit code of an
    answer that is not JSON or not HTTP; with ``http_details`` an error answer's body is shown too.
    Errors of other kinds are raised again.
    """
    out: dict[str, Any]
    if isinstance(error, CommandError | ReceiptError):
        code = error.exit_code if isinstance(error, CommandError) else EXIT_BAD_ANSWER
        out = {"error": error.message, "code": code}
        if error.details is not None:
            out["details"] = error.details
    elif isinstance(error, Unreachable):
        code = EXIT_UNREACHABLE
        out = {"error": f"{peer} is not reachable: {error}", "code": code}
    elif isinstance(error, HttpError):
        code = EXIT_REFUSED
        message = error.body.get("error") if isinstance(error.body, dict) else None
        out = {"error": message or str(error), "code": code, "http_status": error.status}
        if http_details:
            out["details"] = error.body
    elif isinstance(error, BadResponse):
        code = bad_answer
        out = {"error": str(error), "code": code}
    else:
        raise error
    err.write(json.dumps(out, sort_keys=True) + "\n")
    return code


# What ``report`` handles, for the command lines' ``except`` clauses.
REPORTED = (CommandError, ReceiptError, Unreachable, HttpError, BadResponse)
