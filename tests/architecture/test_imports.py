"""The import graph of ``teos/`` and ``common/``: imports run downward only, and the command lines a user
or an operator runs load no server package.

Every import is counted, including those inside functions (a lazy import hides a cycle from the
interpreter, not from a reader). ``common`` is the bottom layer: it imports nothing of ``teos``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.bitcoind import REPO_ROOT

PACKAGES = ("common", "teos")

# What teos-cli and teos-client may load: the shared client code and their own package. Everything else
# of teos/ is the server (and brings flask, plyvel, prometheus_client, granian, zmq with it).
CLIENT_SIDE = ("common", "teos.cli")
SERVER_LIBRARIES = ("flask", "werkzeug", "plyvel", "prometheus_client", "granian", "zmq")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules of ``known`` that ``name`` imports, anywhere in its body.

    ``from pkg import sub`` counts as importing ``pkg.sub`` when ``sub`` is a module, else as importing
    ``pkg`` (its ``__init__``). A package's ``__init__`` that runs before any of its modules is not
    counted: every module would otherwise depend on the package that re-exports it.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # outside teos/ and common/, or a name in a module
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: set(_imported(name, path, known)) for name, path in known.items()}


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "teos.daemon" in graph and "teos.engine.engine" in graph["teos.daemon"]
    assert "teos.api.worker" in graph["teos.daemon"]  # imported inside Daemon.start: counted too
    assert "common.crypto" in graph["common.client"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = {" -> ".join(c) for name in graph if (c := _cycle_through(graph, name)) is not None}
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_common_imports_nothing_of_teos() -> None:
    graph = import_graph()
    upward = {(m, t) for m, targets in graph.items() if m.startswith("common") for t in targets
              if t.startswith("teos")}  # fmt: skip
    assert not upward


def test_the_command_lines_import_only_client_side_modules() -> None:
    graph = import_graph()
    reached: set[str] = set()
    todo = ["teos.cli.teos_cli", "teos.cli.teos_client"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(graph[name])
    server = sorted(m for m in reached if not m.startswith(CLIENT_SIDE) and m != "teos")
    assert not server, f"the command lines import server modules: {server}"


@pytest.mark.parametrize(
    "module,needs", [("teos.cli.teos_cli", "common.cookie"), ("teos.cli.teos_client", "common.client")]
)
def test_a_command_line_loads_no_server_package(module: str, needs: str) -> None:
    """Run as the console scripts run them (``--help``), then look at what the interpreter loaded."""
    probe = (
        "import json, sys, runpy\n"
        f"sys.argv = [{module!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=60)  # fmt: skip
    loaded = json.loads(result.stderr)
    ours = [m for m in loaded if m.split(".")[0] in PACKAGES]
    assert needs in ours  # the command line did run
    server = [m for m in ours if not m.startswith(CLIENT_SIDE) and m != "teos"]
    libraries = [m for m in loaded if m.split(".")[0] in SERVER_LIBRARIES]
    assert (server, libraries) == ([], [])
