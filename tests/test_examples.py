"""Every script in examples/ runs to the end on CPU and leaves a finished run behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import open_repo

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))

pytestmark = pytest.mark.slow


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_runs(script: Path, repo_dir: Path) -> None:
    env = {**os.environ, "TRACELET_SYSTEM_TRACKING_INTERVAL": "off"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=repo_dir, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "aim up" in done.stdout
    repos = [path.parent for path in repo_dir.rglob(".aim") if path.is_dir()]
    assert repos, "no AIM repo was created"
    runs = [run for repo in repos for run in open_repo(repo).iter_runs()]
    assert runs and all(run["status"] == "finished" for run in runs)
