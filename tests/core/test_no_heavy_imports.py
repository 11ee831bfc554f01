"""Core modules import without torch, aim, lightning, transformers or tensorboard (STYLE.md rule 10)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "aim", "lightning", "transformers", "tensorboard")

MODULES = [
    "tracelet_callbacks",
    "tracelet_callbacks.config",
    "tracelet_callbacks.errors",
    "tracelet_callbacks.testing",
    "tracelet_callbacks.core.routing",
    "tracelet_callbacks.core.values",
    "tracelet_callbacks.core.params",
    "tracelet_callbacks.core.records",
    "tracelet_callbacks.core.translator",
    "tracelet_callbacks.run.lifecycle",
    "tracelet_callbacks.run.checkpoints",
    "tracelet_callbacks.sink.contract",
    "tracelet_callbacks.sink.wire",
]

SCRIPT = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
heavy = {heavy!r}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


pytestmark = pytest.mark.slow


def _loaded_heavy(modules: list[str], heavy: tuple[str, ...] = HEAVY) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(modules=modules, heavy=heavy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_core_imports_no_heavy_modules() -> None:
    assert _loaded_heavy(MODULES) == []


@pytest.mark.parametrize("module", MODULES)
def test_each_module_alone(module: str) -> None:
    assert _loaded_heavy([module]) == []


def test_the_check_can_fail() -> None:
    # guards the test itself: a package that is imported is seen (numpy stands in for a heavy one)
    assert "numpy" in _loaded_heavy(["tracelet_callbacks.core.values"], heavy=("numpy",))
