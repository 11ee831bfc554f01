"""Issue 25's sweep of ``import-tensorboard`` and the command line: imported steps are the logged steps,
an events file that is not one makes no run, and every command answers bad input with a line, not a
traceback.

Each test failed before its fix: a second point at step 0 was moved to the next free step (steps
0,1,2,0,1,2 imported as 0-5, and a job restarted into its logdir kept its first attempt's step 0); a
file of random bytes made an empty run; a repo whose ``VERSION`` holds garbage, ``--repo`` naming a file,
``--remote`` naming a dead address and ``--interval -1`` or ``nan`` ended in a traceback (the last only
after a first pass had written the runs).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

import aim  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from conftest import series  # noqa: E402
from test_import_tensorboard import _import  # noqa: E402  (one import in this process, its warnings)
from tracelet_callbacks.config import resolve  # noqa: E402
from tracelet_callbacks.integrations.tensorboard.importer import (  # noqa: E402
    TensorBoardImporter,
)

CLI = [sys.executable, "-m", "tracelet_callbacks"]
VAL = {"subset": "val"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACELET_")}
    env["TRACELET_SYSTEM_TRACKING_INTERVAL"] = "off"
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=180)


def _approx(values: dict[int, float]) -> dict[int, Any]:
    return {step: pytest.approx(value) for step, value in values.items()}  # float32 in event files


# -- imported steps are the logged steps ----------------------------------------------------------------


def test_a_step_logged_twice_keeps_its_step_and_the_later_value(repo_dir: Path) -> None:
    with SummaryWriter(str(repo_dir / "tb" / "run")) as writer:
        for value, step in enumerate([0, 1, 2, 0, 1, 2]):  # an evaluation loop whose counter restarted
            writer.add_scalar("val/loss", float(value), step)
    report, caught = _import(repo_dir / "tb", repo_dir / "aim")
    assert caught == []
    (run_hash,) = report.runs.values()
    # live, Run.track of a step already stored replaces its value: steps 3-5 were never logged
    assert series(repo_dir / "aim", "loss", VAL, run_hash) == {0: 3.0, 1: 4.0, 2: 5.0}


def _attempt(folder: Path, steps: range, offset: float) -> None:
    """One attempt of a job writing into ``folder``: ``val/loss`` at ``steps``, ``offset + step``; and
    ``lr`` twice with no step (TensorBoard stores step 0 for each)."""
    with SummaryWriter(str(folder)) as writer:
        for step in steps:
            writer.add_scalar("val/loss", offset + step, step)
        for _ in range(2):
            writer.add_scalar("lr", offset)


@pytest.mark.parametrize("names", ["as written", "in the wrong order"])
def test_a_job_restarted_into_its_logdir_imports_the_second_attempts_values(
    names: str, repo_dir: Path
) -> None:
    folder = repo_dir / "tb" / "job"
    _attempt(folder, range(5), 100.0)  # killed after step 4
    (first,) = folder.glob("events.out.tfevents.*")
    _attempt(folder, range(10), 200.0)  # started again from scratch, into the same folder
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    if names != "as written":  # two hosts, or pids within one second: the first record's time decides
        first.rename(folder / "events.out.tfevents.9999999999.zzz")

    report, caught = _import(repo_dir / "tb", repo_dir / "aim")
    assert caught == []
    (run_hash,) = report.runs.values()
    assert series(repo_dir / "aim", "loss", VAL, run_hash) == _approx({s: 200.0 + s for s in range(10)})
    # a tag whose every point is at step 0 was logged without a step: live, those count 0, 1, 2 ...
    assert series(repo_dir / "aim", "lr", {}, run_hash) == {0: 100.0, 1: 100.0, 2: 200.0, 3: 200.0}


def test_an_import_between_two_attempts_ends_with_the_second_attempts_values(repo_dir: Path) -> None:
    """The same restart imported after each attempt: the second import knows from the run which tags
    count their own steps (``lr`` goes on at 2) and which were logged at step 0 (``val/loss``)."""
    folder = repo_dir / "tb" / "job"
    _attempt(folder, range(5), 100.0)
    first, caught = _import(repo_dir / "tb", repo_dir / "aim")
    assert caught == []
    _attempt(folder, range(10), 200.0)
    second, caught = _import(repo_dir / "tb", repo_dir / "aim")
    assert caught == []
    assert second.runs == first.runs
    (run_hash,) = second.runs.values()
    assert series(repo_dir / "aim", "loss", VAL, run_hash) == _approx({s: 200.0 + s for s in range(10)})
    assert series(repo_dir / "aim", "lr", {}, run_hash) == {0: 100.0, 1: 100.0, 2: 200.0, 3: 200.0}


def test_a_tag_seen_only_at_step_0_by_a_follow_pass_keeps_its_steps_after_a_restart(repo_dir: Path) -> None:
    """``--follow`` may look while a job has logged only its step 0: the tag counts its own steps once
    a later pass sees step 1, and the run forgets it was taken for a step-less one."""
    folder = repo_dir / "tb" / "job"
    _attempt(folder, range(5), 100.0)
    (path,) = folder.glob("events.out.tfevents.*")
    whole = path.read_bytes()
    path.write_bytes(whole[: _record_starts(whole)[2]])  # the file version and val/loss at step 0
    settings = resolve(kwargs={"repo_path": str(repo_dir / "aim"), "writer": "thread"})
    importer = TensorBoardImporter(str(repo_dir / "tb"), settings)
    try:
        assert importer.run_once(final=False).values == 1
        path.write_bytes(whole)  # the job went on
        importer.run_once(final=False)
    finally:
        importer.close()
    _attempt(folder, range(10), 200.0)  # and was restarted, then imported again
    report, caught = _import(repo_dir / "tb", repo_dir / "aim")
    assert caught == []
    (run_hash,) = report.runs.values()
    assert series(repo_dir / "aim", "loss", VAL, run_hash) == _approx({s: 200.0 + s for s in range(10)})
    assert series(repo_dir / "aim", "lr", {}, run_hash) == {0: 100.0, 1: 100.0, 2: 200.0, 3: 200.0}


def _record_starts(data: bytes) -> list[int]:
    """Byte offset of each record of an event file (TFRecord: u64 length, u32 crc, data, u32 crc)."""
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        offset += 16 + int.from_bytes(data[offset : offset + 8], "little")
    return starts


# -- an events file that is not one -----------------------------------------------------------------------


@pytest.mark.slow
def test_an_events_file_of_random_bytes_is_named_and_makes_no_run(repo_dir: Path) -> None:
    noise = random.Random(25).randbytes(4096)
    junk = repo_dir / "tb" / "junk" / "events.out.tfevents.123.host"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(noise)
    mixed = repo_dir / "tb" / "mixed"
    with SummaryWriter(str(mixed)) as writer:
        for step in range(3):
            writer.add_scalar("val/loss", step / 10, step)
    (mixed / "events.out.tfevents.124.host").write_bytes(noise)

    done = _cli("import-tensorboard", str(repo_dir / "tb"), "--repo", str(repo_dir / "aim"), cwd=repo_dir)
    assert done.returncode == 1, done.stderr  # it did part of what it was asked
    assert "Traceback" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 2, done.stderr
    for path in (junk, mixed / "events.out.tfevents.124.host"):
        assert [line for line in warned if str(path) in line], (path, warned)
    assert all("nothing of it was imported" in line for line in warned), warned

    (run,) = aim.Repo(str(repo_dir / "aim")).iter_runs()  # the good file's run, and no empty one
    assert run.name == "mixed"
    assert series(repo_dir / "aim", "loss", VAL, run.hash) == _approx({0: 0.0, 1: 0.1, 2: 0.2})


# -- the command line: a line for every bad input ------------------------------------------------------


def _garbage_version(repo: Path) -> None:
    aim.Repo.from_path(str(repo), init=True)
    (repo / ".aim" / "VERSION").write_text("garbage!!\n")


def _no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["runs", "ls", "--repo", "{repo}"],
        ["runs", "close-stale", "--repo", "{repo}"],
        ["import-tensorboard", "{logs}", "--repo", "{repo}"],
        ["sync", "{repo}", "--to", "aim://127.0.0.1:1"],
    ],
    ids=["runs ls", "runs close-stale", "import-tensorboard", "sync"],
)
def test_a_repo_whose_version_is_garbage_is_one_error_line(command: list[str], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _garbage_version(repo)
    (tmp_path / "logs" / "run").mkdir(parents=True)
    _scalar_file(tmp_path / "logs" / "run")
    done = _cli(*(part.format(repo=repo, logs=tmp_path / "logs") for part in command), cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and "data version unreadable" in line and str(repo) in line
    assert (repo / ".aim" / "VERSION").read_text() == "garbage!!\n"  # nothing was written over it


def _scalar_file(folder: Path) -> None:
    with SummaryWriter(str(folder)) as writer:
        writer.add_scalar("val/loss", 0.5, 1)


@pytest.mark.slow
def test_import_with_a_repo_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    _scalar_file(tmp_path / "logs" / "run")
    (tmp_path / "repo").write_text("not a folder")
    done = _cli("import-tensorboard", str(tmp_path / "logs"), "--repo", str(tmp_path / "repo"), cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 2, done.stderr
    assert "--repo" in done.stderr and "is a file" in done.stderr
    assert (tmp_path / "repo").read_text() == "not a folder"


@pytest.mark.slow
def test_import_to_a_dead_server_is_one_error_line(tmp_path: Path) -> None:
    _scalar_file(tmp_path / "logs" / "run")
    done = _cli("import-tensorboard", str(tmp_path / "logs"), "--remote", "aim://127.0.0.1:1", cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: cannot reach the AIM server at aim://127.0.0.1:1")
    assert not (tmp_path / ".aim-spool").exists()  # nothing was spooled for a server never reached


@pytest.mark.slow
@pytest.mark.parametrize("interval", ["-1", "nan", "0", "inf"])
def test_follow_takes_only_a_positive_finite_interval(interval: str, tmp_path: Path) -> None:
    _scalar_file(tmp_path / "logs" / "run")
    command = ["import-tensorboard", str(tmp_path / "logs"), "--repo", str(tmp_path / "aim")]
    done = _cli(*command, "--follow", "--interval", interval, cwd=tmp_path)
    _no_traceback(done)
    assert done.returncode == 2, done.stderr
    assert "--interval" in done.stderr and "positive, finite" in done.stderr
    assert not (tmp_path / "aim").exists()  # refused before anything was opened
