"""However a training script ends, what it logged is in the repo and the run says how it ended."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import open_repo, series

pytestmark = pytest.mark.slow

PRELUDE = """
import os, signal, sys
import tracelet_callbacks as tracelet
exp = tracelet.start_logging(exp_name="job", backend="aim")
for step in range(20):
    exp.log_metric("train/loss", 1.0 / (step + 1), step)
"""


def run_script(repo_dir: Path, ending: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(ending)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=repo_dir, capture_output=True, text=True, timeout=120
    )


def only_run(repo_dir: Path):
    (run,) = open_repo(repo_dir).iter_runs()
    return run


@pytest.mark.parametrize(
    ("ending", "status", "returncode"),
    [
        ("tracelet.stop_logging()\n", "finished", 0),
        ("# the script forgets stop_logging\n", "finished", 0),
        ("raise RuntimeError('diverged')\n", "failed", 1),
        ("sys.exit(3)\n", "failed", 3),  # SystemExit never reaches sys.excepthook
        ("sys.exit(0)\n", "finished", 0),
        ("raise KeyboardInterrupt\n", "interrupted", -signal.SIGINT),  # Python re-raises SIGINT at exit
        (
            "os.kill(os.getpid(), signal.SIGTERM)\nimport time; time.sleep(30)\n",
            "interrupted",
            -signal.SIGTERM,
        ),
    ],
    ids=["stop_logging", "no-stop", "exception", "sys.exit(3)", "sys.exit(0)", "ctrl-c", "sigterm"],
)
def test_every_ending_keeps_values_and_records_status(
    repo_dir: Path, ending: str, status: str, returncode: int
) -> None:
    done = run_script(repo_dir, ending)
    assert done.returncode == returncode, done.stderr
    run = only_run(repo_dir)
    assert run["status"] == status
    assert not run.active
    assert len(series(repo_dir, "loss", {"subset": "train"})) == 20


def test_a_sigterm_handler_of_the_user_still_runs(repo_dir: Path) -> None:
    code = textwrap.dedent(
        """
        import os, signal, sys
        seen = []
        signal.signal(signal.SIGTERM, lambda *a: seen.append("user handler"))
        import tracelet_callbacks as tracelet
        exp = tracelet.start_logging(exp_name="job2", backend="aim")
        exp.log_metric("loss", 1.0, 0)
        os.kill(os.getpid(), signal.SIGTERM)
        print(seen, exp.status)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_dir, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "['user handler'] interrupted" in out.stdout


def test_a_writer_dropped_without_close_is_closed_at_exit(repo_dir: Path) -> None:
    code = textwrap.dedent(
        """
        import tracelet_callbacks as tracelet

        def main():
            writer = tracelet.TraceletWriter(tensorboard=False)
            for step in range(5):
                writer.add_scalar("train/loss", 1.0 / (step + 1), step)

        main()
        import gc; gc.collect()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_dir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    run = only_run(repo_dir)
    assert run["status"] == "finished" and not run.active
    assert len(series(repo_dir, "loss", {"subset": "train"})) == 5


def test_an_exception_inside_a_writer_block_records_failed(repo_dir: Path) -> None:
    import tracelet_callbacks as tracelet

    with pytest.raises(RuntimeError), tracelet.TraceletWriter(tensorboard=False) as writer:
        writer.add_scalar("loss", 1.0, 0)
        raise RuntimeError("diverged")
    assert only_run(repo_dir)["status"] == "failed"


EXIT_HOOKS_LEFT_ALONE = """
import signal, sys
import tracelet_callbacks as tracelet
from tracelet_callbacks.testing import RecordingSink

def mine(kind, value, tb):
    print("my hook", kind.__name__)

def on_term(signum, frame):
    pass

sys.excepthook = mine
signal.signal(signal.SIGTERM, on_term)
exit_before = sys.exit
exp = tracelet.Experiment(exit_handlers={flag}, sink_factory=RecordingSink).open()
exp.log_metric("loss", 1.0)
print("excepthook kept:", sys.excepthook is mine)
print("exit kept:", sys.exit is exit_before)
print("sigterm kept:", signal.getsignal(signal.SIGTERM) is on_term)
"""


@pytest.mark.parametrize(("flag", "kept"), [(False, True), (True, False)])
def test_exit_handlers_false_leaves_excepthook_and_sigterm_alone(
    repo_dir: Path, flag: bool, kept: bool
) -> None:
    code = textwrap.dedent(EXIT_HOOKS_LEFT_ALONE).replace("{flag}", str(flag))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_dir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"excepthook kept: {kept}" in done.stdout
    assert f"sigterm kept: {kept}" in done.stdout
    assert f"exit kept: {kept}" in done.stdout
