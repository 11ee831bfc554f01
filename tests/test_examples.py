"""Every script in examples/ (Python and shell) runs to the end on CPU and leaves finished runs behind.

The docs show code only by including these files (tests/test_docs_site.py checks it), so what a page
shows is what runs here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import open_repo
from tracelet_callbacks.aim_ui import free_port

FOLDER = Path(__file__).resolve().parents[1] / "examples"
#: install.sh makes a virtual environment: CI runs its test line itself (.ci/run, checked in test_docs_site)
EXAMPLES = sorted(path for path in [*FOLDER.glob("*.py"), *FOLDER.glob("*.sh")] if path.name != "install.sh")

pytestmark = pytest.mark.slow

#: What some examples must print besides the `aim up` hint: the outcomes their docs describe.
PRINTS = {
    "compare_runs.py": ("lr_sweep_0.1: lr=0.1", "/metrics?select=O-"),
    "import_tensorboard.sh": ("imported 100 values from 2 event files into 2 runs", "imported 0 values"),
    "resume_rewind.py": ("killed by SIGKILL after step 30", "loss at steps 0..40, 41 points, each step once"),
    "shared_server.sh": ("1 of 2 runs sent", "copied", "up to date"),
    "switch_from_aim.py": ("switched-lightning: run", "switched-hf: run", "status finished"),
}


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("script", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs(script: Path, repo_dir: Path) -> None:
    env = {**os.environ, "TRACELET_SYSTEM_TRACKING_INTERVAL": "off"}
    command = [sys.executable, str(script)]
    if script.suffix == ".sh":  # `python` and `aim` are this interpreter's, as in an activated venv
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", AIM_SERVER_PORT=str(free_port())
        )
        command = ["bash", str(script)]
    done = subprocess.run(command, cwd=repo_dir, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "aim up" in done.stdout
    for promised in PRINTS.get(script.name, ()):  # what the docs say the example shows
        assert promised in done.stdout, (promised, done.stdout[-2000:])
    repos = [path.parent for path in repo_dir.rglob(".aim") if path.is_dir()]
    assert repos, "no AIM repo was created"
    runs = [run for repo in repos for run in open_repo(repo).iter_runs()]
    assert runs and all(run["status"] == "finished" for run in runs)
