"""The tree keeps the architecture it claims (docs/architecture.md): imports point down, never round.

Read from the source with ``ast`` (function-level imports count too), so a lazy import cannot hide an
arrow that points the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tracelet_callbacks"

#: layer -> the layers its modules may import (besides their own, and the leaf modules below)
ALLOWED = {
    "core": set(),
    "sink": {"core"},
    "run": {"core", "sink"},
    "integrations": {"core", "run"},
}
#: Modules every layer may use: exceptions and the settings object.
LEAVES = {"tracelet_callbacks.errors", "tracelet_callbacks.config"}
#: Adapter modules stay small: the event mapping only.
ADAPTER_LINES = 260


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (resolved, whether at the top or inside a function)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate.startswith("tracelet_callbacks") and _exists(candidate):
                found.add(candidate)
                break
    found.discard(name)
    return found


def _exists(module: str) -> bool:
    relative = Path(*module.split("."))
    base = PACKAGE.parent / relative
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


GRAPH = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def test_the_graph_is_read() -> None:
    assert "tracelet_callbacks.run.experiment" in GRAPH["tracelet_callbacks.integrations.hf.callback"]
    assert "tracelet_callbacks.sink.writer" in GRAPH["tracelet_callbacks.run.experiment"]  # a lazy one


def test_no_import_cycles() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(GRAPH.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m)))
def test_imports_point_down(module: str) -> None:
    layer = _layer(module)
    allowed = ALLOWED[layer] | {layer}
    wrong = sorted(
        target for target in GRAPH[module] if target not in LEAVES and _layer(target) not in allowed
    )
    assert not wrong, f"{module} ({layer}) imports {wrong}; {layer} may use {sorted(allowed)} only"


def test_adapters_never_import_each_other() -> None:
    for module, targets in GRAPH.items():
        if _layer(module) != "integrations":
            continue
        own = module.split(".")[:3]  # an adapter package's modules may use each other
        strangers = [t for t in targets if _layer(t) == "integrations" and t.split(".")[:3] != own]
        assert not strangers, f"{module} imports another adapter: {strangers}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "integrations").rglob("*.py")), ids=lambda p: p.name)
def test_adapter_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= ADAPTER_LINES, f"{path.name} has {lines} lines; an adapter keeps only its event mapping"


def test_only_the_sink_imports_aim() -> None:
    importers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name == "aim" or name.startswith("aim.") for name in names):
                importers.append(_module_name(path))
    assert importers, "the sink imports aim: the check must see it"
    assert all(_layer(module) == "sink" for module in importers), sorted(set(importers))
