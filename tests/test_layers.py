"""The package's imports follow its layers (docs/architecture.md): a module imports only
modules of its own layer or below, and no two modules import each other, directly or
through others. Read from the source with ``ast``, function-level imports included, so
an import hidden in a function to dodge a circle counts like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "klime_mp"

# Lowest first. A folder stands for every module in it; a top-level module for itself.
LAYERS: list[set[str]] = [
    {"_version", "errors", "wire", "options", "timestamps", "message_ids", "responses", "events"}
    | {"values", "before_send"},
    {"spool", "lifecycle", "collector"},  # storage, the fork registry, the local server
    {"delivery"},  # the per-process sender
    {"metrics"},  # OpenTelemetry instruments read from the delivery layer's counts
    {"importer"},
    # host integrations the lifecycle never imports
    {"uwsgi", "celery", "gunicorn_conf", "asgi_servers"},
    {"host_hooks"},  # finds the running host and installs its integration
    {"client"},
    {"default"},
    {"wsgi", "asgi"},
    {"cli", "demo", "testing"},  # testing: the pytest plugin
    {"__main__", "__init__"},
    {"demo.example_app"},  # the demo's app: a user's app, shipped inside the package
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    assert "client" in found and "lifecycle.forksafe" in found  # the walk found the package
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of klime_mp that ``path`` imports (package ``__init__`` files are left
    out as targets: importing ``klime_mp.x`` runs them, but they only gather names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(resolve(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # a submodule if there is one, else the module's name
                submodule = resolve(f"{node.module}.{alias.name}", known)
                parent = resolve(node.module, known)
                found.add(submodule if submodule != parent else parent)
    found.discard("")  # not ours
    if path.name == "__init__.py":
        found.discard(module_name(path))
    return found


def resolve(name: str, known: set[str]) -> str:
    """The module of ours that ``name`` (dotted, absolute) lives in, or ""."""
    if name != "klime_mp" and not name.startswith("klime_mp."):
        return ""
    inner = name[len("klime_mp.") :] if name != "klime_mp" else ""
    while inner and inner not in known:
        inner = inner.rpartition(".")[0]
    return inner or "__init__"  # a name of the package itself: its __init__


def layer_of(module: str) -> int:
    """The layer of the longest name in LAYERS that ``module`` is or lives in."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        for rank, members in enumerate(LAYERS):
            if prefix in members:
                return rank
    raise AssertionError(f"klime_mp.{module} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, known) - {name} for name, path in found.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in graph():
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"klime_mp.{module} imports klime_mp.{target}"
        for module, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(module) and not target.startswith(module + ".")
    ]
    assert upward == []


def test_no_import_circle() -> None:
    edges = graph()
    visiting: list[str] = []
    done: set[str] = set()
    circles: list[str] = []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            circles.append(" -> ".join([*visiting[visiting.index(module) :], module]))
            return
        visiting.append(module)
        for target in sorted(edges[module]):
            if not target.startswith(module + "."):  # a package's own modules
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(edges):
        visit(module)
    assert circles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from klime_mp.lifecycle import forksafe\n", {"lifecycle.forksafe"}),
        ("def f():\n    from klime_mp import client\n", {"client"}),
        ("from klime_mp.delivery.worker import Worker\n", {"delivery.worker"}),
        ("import klime_mp.uwsgi as u\n", {"uwsgi"}),
        ("from klime_mp import KlimeClient\n", {"__init__"}),
        ("import json\nfrom urllib3 import PoolManager\n", set()),
    ],
)
def test_imports_are_read_from_the_source(tmp_path: Path, source: str, expected: set[str]) -> None:
    # The checks above are only as good as this reading of the imports.
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imports_of(path, set(modules())) == expected
