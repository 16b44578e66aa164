"""The packages of runvisor import downwards only: each module may import its own layer and the
layers below it, never one above (the actors never import the Supervisor, the stores never an
actor). Imports are read with ast, so an import inside a function or under TYPE_CHECKING counts
too. Also: no module of runvisor/ is over 400 lines, and procs/ (the operating-system side)
holds no actor."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import runvisor

PACKAGE_DIR = Path(runvisor.__file__).resolve().parent

# Lowest first. A module belongs to the entry with the longest matching dotted prefix.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        [
            "runvisor",  # the package itself: __version__
            "runvisor.errors",
            "runvisor.logs",
            "runvisor.models",
            "runvisor.env_names",
            "runvisor.policy",
            "runvisor.placement",
            "runvisor.protocol",
            "runvisor.metrics",
        ],
    ),
    ("operating-system side", ["runvisor.procs"]),
    ("settings", ["runvisor.config"]),
    # The command-line client talks HTTP to a node; of the server it may know the default data
    # dir (config) and nothing above (checked again below, from the other side).
    ("client", ["runvisor.client"]),
    ("stores", ["runvisor.store"]),
    ("actors", ["runvisor.actors"]),
    ("supervisor", ["runvisor.supervisor"]),
    ("http", ["runvisor.http"]),
    ("the node", ["runvisor.service", "runvisor.embedded", "runvisor.cli", "runvisor.__main__"]),
]

MAX_LINES = 400


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the entry with the longest prefix of `module`; None: in no layer."""
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a runvisor module in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base]
        else:
            continue
        for name in names:
            if name == "runvisor" or name.startswith("runvisor."):
                yield node.lineno, name


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of `source` (the text of `module`) that go to a higher layer."""
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    found = []
    for line, target in imported_modules(source, module, is_package):
        target_layer = layer_of(target)
        assert target_layer is not None, f"{target} is in no layer: add it to LAYERS"
        if target_layer > own:
            found.append(
                f"{module}:{line} imports {target} "
                f"({LAYERS[own][0]} -> {LAYERS[target_layer][0]}, which is above it)"
            )
    return found


def runvisor_modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_every_module_imports_only_its_layer_and_those_below() -> None:
    modules = runvisor_modules()
    assert len(modules) > 40  # the whole package was found
    violations = [
        found
        for path in modules
        for found in upward_imports(
            path.read_text(), module_name(path), is_package=path.name == "__init__.py"
        )
    ]
    assert violations == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("runvisor.actors.run_actor", "from runvisor.supervisor.closer import AttemptCloser"),
        ("runvisor.actors.run_actor", "def f():\n    import runvisor.http.app\n"),
        ("runvisor.store.journal", "from ..actors import messages"),
        ("runvisor.procs.spawn", "from runvisor.config import Settings"),
        ("runvisor.client.api", "from runvisor.http.responses import Run"),
        ("runvisor.client.connection", "from runvisor.service import ADMIN_TOKEN_FILE"),
        ("runvisor.policy", "from runvisor.store.journal import RunJournal"),
    ],
)
def test_an_upward_import_is_found(module: str, source: str) -> None:
    assert len(upward_imports(source, module)) == 1


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("runvisor.supervisor.actor", "from runvisor.actors.run_actor import RunActor"),
        ("runvisor.actors.run_actor", "from runvisor.policy import decide"),
        ("runvisor.actors.run_actor", "from runvisor import protocol as m"),
        ("runvisor.store.live", "from runvisor.protocol import StopRequest"),
        ("runvisor.config", "from runvisor.procs.limits import parse_run_limits"),
        ("runvisor.cli", "from runvisor import __version__"),
        ("runvisor.client.connection", "from runvisor.config import default_data_dir"),
    ],
)
def test_a_downward_or_sideways_import_is_allowed(module: str, source: str) -> None:
    assert upward_imports(source, module) == []


def test_only_the_runvisor_command_imports_the_client() -> None:
    """The server never needs the client: only cli.py, which joins both in one command."""
    importers = {
        module_name(path)
        for path in runvisor_modules()
        if not module_name(path).startswith("runvisor.client")
        for _, target in imported_modules(
            path.read_text(), module_name(path), path.name == "__init__.py"
        )
        if target == "runvisor.client" or target.startswith("runvisor.client.")
    }
    assert importers == {"runvisor.cli"}


def test_no_module_is_over_the_line_limit() -> None:
    too_long = {
        str(path.relative_to(PACKAGE_DIR)): lines
        for path in runvisor_modules()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, too_long


def test_procs_holds_no_actor() -> None:
    procs = sorted((PACKAGE_DIR / "procs").glob("*.py"))
    assert len(procs) > 5
    importing_pykka = [
        path.name
        for path in procs
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Import) and any(a.name == "pykka" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pykka")
    ]
    assert importing_pykka == []
