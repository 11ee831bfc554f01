"""Issue 25's correctness sweep: bad settings fail where they are given, a bad checkpoint file never
stops training, and the command line refuses a duration that is not one.

Each test failed before its fix: ``run_hash=""`` started a run whose hash was None and dropped every
value; a negative step in ``tracelet-run.json`` rewound the whole run; ``close-stale --older-than -5m``
closed a live run; ``watch(object())`` raised ``AttributeError``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
from conftest import read_run, series

CLI = [sys.executable, "-m", "tracelet_callbacks"]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_run_hash_is_a_settings_error_at_construction(
    empty: str, repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for build in (
        lambda: tracelet.Experiment(run_hash=empty),
        lambda: tracelet.TraceletAimLogger(run_hash=empty),
        lambda: tracelet.start_logging(run_hash=empty),
    ):
        with pytest.raises(ValueError, match="run_hash"):
            build()
    monkeypatch.setenv("TRACELET_AIM_RUN_HASH", empty)
    with pytest.raises(ValueError, match="TRACELET_AIM_RUN_HASH"):
        tracelet.Experiment()
    assert not list(repo_dir.iterdir())  # nothing was made


@pytest.mark.slow
@pytest.mark.parametrize(("written", "why"), [({"run_hash": ""}, "names no run"), ({"step": -3}, "step -3")])
def test_a_bad_checkpoint_file_is_a_warning_and_training_goes_on(
    written: dict, why: str, repo_dir: Path, tmp_path: Path
) -> None:
    first = tracelet.Experiment()
    for step in range(5):
        first.log_metric("loss", float(step), iteration=step)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    first.mark_checkpoint(checkpoint, step=2)
    first.close()
    identity = checkpoint / "tracelet-run.json"
    identity.write_text(json.dumps({**json.loads(identity.read_text()), **written}))

    with pytest.warns(tracelet.TraceletWarning, match=why):
        second = tracelet.Experiment(resume_from=str(checkpoint))
        second.log_metric("loss", 9.0, iteration=5)
        second.close()
    if "run_hash" in written:  # a new run; the first is untouched
        assert second.hash != first.hash
        assert series(repo_dir, "loss", {}, first.hash) == {step: float(step) for step in range(5)}
    else:  # the run goes on, nothing of it removed
        assert second.hash == first.hash
        assert series(repo_dir, "loss", {}, first.hash) == {**{s: float(s) for s in range(5)}, 5: 9.0}
    assert read_run(repo_dir, second.hash)["status"] == "finished"


@pytest.mark.parametrize("older_than", ["-5m", "nan", "inf", "1e400", "soon", ""])
def test_close_stale_takes_only_a_finite_duration_of_0_or_more(older_than: str, repo_dir: Path) -> None:
    done = subprocess.run(
        [*CLI, "runs", "close-stale", "--repo", str(repo_dir), "--older-than", older_than],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "0 or more, finite" in done.stderr and "Traceback" not in done.stderr


def test_watch_of_something_that_is_not_a_model_names_what_it_needs(repo_dir: Path) -> None:
    exp = tracelet.Experiment(writer="thread")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module .* got object"):
        exp.watch(object())
    exp.close()
