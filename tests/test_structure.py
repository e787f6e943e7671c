"""Which way imports run, read with ``ast`` from every module of the product (imports inside
functions and under ``TYPE_CHECKING`` included): a cycle hidden in a function is still a cycle.

The allowed graph (also drawn in the README's module map)::

    formats     ─► (the standard library and pyproject.toml's dependencies only)
    registry    ─► formats
    client      ─► formats
    runtime     ─► client, formats
    cli         ─► registry, client, runtime, formats
    migrations  ─► registry

- ``formats`` holds the formats and units every part shares; it imports nothing of Hangar's but itself.
- ``registry`` and ``client`` never import each other; ``runtime`` uses the client (store, pull, push).
- ``cli`` assembles the ``hangar`` command and is the only place that starts a server (``registry.server``,
  uvicorn for ``runtime.app``); no part imports it.
- Outside Hangar, a product module imports only the standard library and what ``pyproject.toml``
  declares in ``dependencies``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# part -> the parts it may import (itself always).
ALLOWED: dict[str, set[str]] = {
    "formats": set(),
    "registry": {"formats"},
    "client": {"formats"},
    "runtime": {"formats", "client"},
    "cli": {"formats", "registry", "client", "runtime"},
    "migrations": {"registry"},
}
# Modules that only the command line may import: the parts' server start-up.
STARTUP = {"registry.server"}


def _modules() -> Iterator[tuple[str, Path]]:
    for part in ALLOWED:
        for path in sorted((ROOT / part).rglob("*.py")):
            yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            # `from formats import names` imports formats.names.
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _declared() -> set[str]:
    """The distributions ``pyproject.toml`` declares as dependencies, normalised."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_norm(re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_imports_run_one_way() -> None:
    parts = set(ALLOWED)
    wrong = []
    for module, path in _modules():
        part = module.split(".")[0]
        for line, imported in _imports(module, path):
            top = imported.split(".")[0]
            if top not in parts or top == part:
                continue
            if top not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {imported}")
            elif any(imported == s or imported.startswith(s + ".") for s in STARTUP) and part != "cli":
                wrong.append(f"{path.relative_to(ROOT)}:{line}: only cli starts servers, not {part} ({imported})")
    assert not wrong, "imports against the allowed direction:\n" + "\n".join(wrong)


def test_only_declared_libraries() -> None:
    declared = _declared()
    providers = importlib.metadata.packages_distributions()
    wrong = []
    for module, path in _modules():
        for line, imported in _imports(module, path):
            top = imported.split(".")[0]
            if not top or top in ALLOWED or top in sys.stdlib_module_names or top == "__future__":
                continue
            dists = {_norm(d) for d in providers.get(top, [])}
            if not dists & declared:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {top} (from {sorted(dists) or 'nowhere'})")
    assert not wrong, "imports of libraries pyproject.toml does not declare:\n" + "\n".join(sorted(set(wrong)))


def test_the_graph_is_found() -> None:
    """The checks above read real imports: a known edge of each kind is seen."""
    seen = {(m.split(".")[0], i.split(".")[0]) for m, p in _modules() for _, i in _imports(m, p)}
    assert {("registry", "formats"), ("client", "formats"), ("runtime", "client"), ("cli", "registry")} <= seen
