"""Issue 25, defect 1 and part of 8: a forked child leaves its parent's run alone, and a notice is told
once, as a warning at the user's line.

Each test failed before its fix: a child's ``stop_logging()`` closed the parent's run through the
inherited pipe (the parent's next values were lost and its own ``stop_logging()`` returned at once);
with the ``thread`` and ``sync`` writers the child closed the run itself, or hung at its exit, and the
parent waiting for it hung too; what a child logged went into the parent's run. Every notice was a log
line and a ``TraceletWarning`` located in ``sink/writer.py`` (or ``sink/run.py``).

The forking happens in a script of its own, so that pytest's process is never forked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
from conftest import open_repo, read_run, series

#: Logs 50 values, then three times: forks a child that logs (and must be told once, at its line),
#: ends in its own way, and is waited for; the parent logs 50 more each time and then stops.
SESSION_FORKS = r"""
import json, os, sys, time, warnings
import tracelet_callbacks as tracelet

writer, report = sys.argv[1], sys.argv[2]
exp = tracelet.start_logging(exp_name="parent", config={"repo_path": ".", "writer": writer})
step = 0


def log_50():
    global step
    for _ in range(50):
        exp.log_metric("train/loss", step / 100, step)
        step += 1


def child(ending):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            tracelet.get_active_experiment().log_metric("train/loss", -1.0, 10_000)  # CHILD LINE
        if ending != "end of script":
            tracelet.stop_logging()
    told = [[w.filename, w.lineno, str(w.message)] for w in caught]
    with open(f"{report}.{os.getpid()}", "w") as out:
        json.dump({"ending": ending, "told": told}, out)


log_50()
codes, in_child = [], False
for ending in ("stop_logging, os._exit", "stop_logging, sys.exit", "end of script"):
    pid = os.fork()
    if pid == 0:
        child(ending)
        if ending.endswith("os._exit"):
            os._exit(0)
        if ending.endswith("sys.exit"):
            sys.exit(0)
        in_child = True
        break  # the child runs to the end of the script: a normal exit, atexit handlers and all
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    log_50()

if not in_child:
    started = time.monotonic()
    tracelet.stop_logging()
    print(json.dumps({"hash": exp.hash, "codes": codes, "stop_s": time.monotonic() - started}))
"""


def _child_line() -> int:
    return next(n for n, line in enumerate(SESSION_FORKS.splitlines(), 1) if "CHILD LINE" in line)


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["process", "thread", "sync"])
def test_a_forked_child_never_ends_or_writes_the_parents_run(writer: str, repo_dir: Path) -> None:
    script = repo_dir / "forks.py"
    script.write_text(SESSION_FORKS)
    report = repo_dir / "child"
    done = subprocess.run(
        [sys.executable, str(script), writer, str(report)],
        cwd=repo_dir,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["codes"] == [0, 0, 0], done.stderr  # no child hung or crashed on its way out
    assert "tracelet" not in done.stderr  # the parent was told of nothing: nothing happened to it

    children = [json.loads(path.read_text()) for path in repo_dir.glob("child.*")]
    assert sorted(c["ending"] for c in children) == [
        "end of script",
        "stop_logging, os._exit",
        "stop_logging, sys.exit",
    ]
    for report_of_child in children:
        # three values logged, one warning, at the child's line; its stop_logging says nothing
        ((filename, lineno, message),) = report_of_child["told"]
        assert (filename, lineno) == (str(script), _child_line()), report_of_child
        assert "forked" in message and "dropped" in message

    (run,) = list(open_repo(repo_dir).iter_runs())  # the children made no run
    assert run.hash == result["hash"]
    assert read_run(repo_dir, run.hash)["status"] == "finished" and run.active is False
    # every value the parent logged after each child ended is there; none of the children's is
    assert series(repo_dir, "loss", {"subset": "train"}, run.hash) == {s: s / 100 for s in range(200)}


#: The other entry points, all open in the parent: an Experiment, a TraceletWriter and the Lightning
#: logger (the run lifecycle every adapter shares). The child logs to each, closes each, logs again,
#: then opens a run of its own on purpose, and ends normally.
ENTRY_POINTS_FORK = r"""
import json, os, sys, warnings
import tracelet_callbacks as tracelet
from tracelet_callbacks import TraceletAimLogger, TraceletWriter

report = sys.argv[1]
exp = tracelet.Experiment(repo_path=".", run_name="experiment")
writer = TraceletWriter(repo_path=".", run_name="writer", tensorboard=False)
logger = TraceletAimLogger(repo_path=".", run_name="logger")


def log(start):
    for step in range(start, start + 50):
        exp.log_metric("train/loss", step / 100, step)
        writer.add_scalar("train/loss", step / 100, step)
        logger.log_metrics({"train/loss": step / 100}, step)


log(0)
pid = os.fork()
if pid == 0:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            exp.log_metric("train/loss", -1.0, 10_000)
            writer.add_scalar("train/loss", -1.0, 10_000)
            logger.log_metrics({"train/loss": -1.0}, 10_000)
        exp.close()
        writer.close()
        logger.finalize("success")
        logger.log_metrics({"train/loss": -2.0}, 10_001)  # must not continue the parent's run
        own = tracelet.start_logging(exp_name="child", config={"repo_path": "."})
        for step in range(5):
            own.log_metric("train/loss", -step, step)
        tracelet.stop_logging()
    with open(report, "w") as out:
        json.dump([[w.filename, str(w.message)] for w in caught], out)
    sys.exit(0)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
log(50)
exp.close()
writer.close()
logger.finalize("success")
print(json.dumps({"code": code, "hashes": [exp.hash, writer.experiment.hash, logger.version]}))
"""


@pytest.mark.slow
def test_every_entry_point_leaves_the_parents_run_to_the_parent(repo_dir: Path) -> None:
    script = repo_dir / "entry_points.py"
    script.write_text(ENTRY_POINTS_FORK)
    report = repo_dir / "child.json"
    done = subprocess.run(
        [sys.executable, str(script), str(report)], cwd=repo_dir, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0, done.stderr
    told = json.loads(report.read_text())
    # one warning per object the child logged to, each at the child's own line; nothing else
    assert len(told) == 3 and all(filename == str(script) and "forked" in m for filename, m in told), told

    runs = {run.name: run.hash for run in open_repo(repo_dir).iter_runs()}
    assert sorted(runs) == ["child", "experiment", "logger", "writer"]
    assert sorted(result["hashes"]) == sorted(runs[name] for name in ("experiment", "logger", "writer"))
    for name in ("experiment", "writer", "logger"):
        assert read_run(repo_dir, runs[name])["status"] == "finished"
        assert series(repo_dir, "loss", {"subset": "train"}, runs[name]) == {s: s / 100 for s in range(100)}
    assert series(repo_dir, "loss", {"subset": "train"}, runs["child"]) == {s: -s for s in range(5)}


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["process", "thread", "sync"])
def test_a_notice_is_one_warning_at_the_users_line_and_no_log_line(
    writer: str, repo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the rewind notice: told by the writer process, the writer thread, or this thread (sync)
    first = tracelet.Experiment(writer=writer)
    for step in range(10):
        first.log_metric("loss", float(step), iteration=step)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    first.mark_checkpoint(checkpoint, step=4)
    first.close()

    second = tracelet.Experiment(writer=writer, resume_from=str(checkpoint))
    with (
        caplog.at_level(logging.DEBUG, logger="tracelet_callbacks"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        second.log_metric("loss", 50.0, iteration=5)
        second.flush()
        second.close()
    told = [w for w in caught if issubclass(w.category, tracelet.TraceletWarning)]
    assert [str(w.message) for w in told] == [
        f"tracelet: continuing run {first.hash} from its checkpoint at step 4: removed 5 points the "
        "interrupted attempt logged after it (resume='append' keeps them)"
    ]
    assert told[0].filename == __file__
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert second.hash == first.hash
    assert series(repo_dir, "loss", {}, first.hash) == {**{s: float(s) for s in range(5)}, 5: 50.0}


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["process", "thread", "sync"])
def test_a_failed_write_is_one_warning_at_the_users_line_and_no_log_line(
    writer: str, repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a log line ("writing to AIM failed: ...") and a warning pointing into sink/run.py or
    # sink/buffered.py. A record aim refuses (an int beyond int64), handed to the sink as it sees one.
    from tracelet_callbacks.core import records as rec

    exp = tracelet.Experiment(writer=writer, system_tracking_interval=None)
    with (
        caplog.at_level(logging.DEBUG, logger="tracelet_callbacks"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        exp.translator.sink.submit([rec.Params("raw", {"big": 2**70})])
        exp.flush()
        exp.log_metric("loss", 1.0, iteration=0)
        exp.close()
    told = [w for w in caught if issubclass(w.category, tracelet.TraceletWarning)]
    assert len(told) == 1 and "writing to AIM failed" in str(told[0].message), [str(w.message) for w in told]
    assert told[0].filename == __file__
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert series(repo_dir, "loss", {}, exp.hash) == {0: 1.0}  # the run goes on after it


@pytest.mark.slow
def test_a_killed_writer_is_one_warning_at_the_users_line_and_no_log_line(
    repo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exp = tracelet.Experiment(writer="process", system_tracking_interval=None, flush_secs=600)
    exp.log_metric("loss", 1.0, iteration=0)
    exp.flush()
    with (
        caplog.at_level(logging.DEBUG, logger="tracelet_callbacks"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        os.kill(exp._sink._proc.pid, signal.SIGKILL)
        exp._sink._proc.wait()
        exp.log_metric("loss", 2.0, iteration=1)
        exp.flush()
        exp.close()
    told = [w for w in caught if issubclass(w.category, tracelet.TraceletWarning)]
    assert len(told) == 1 and "the AIM writer stopped" in str(told[0].message), [str(w.message) for w in told]
    assert told[0].filename == __file__
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert series(repo_dir, "loss", {}, exp.hash) == {0: 1.0, 1: 2.0}


#: A child forked while the parent's run is open opens a run of its own and leaves it open: its exit
#: must close it as any script's exit does.
CHILD_LEAVES_ITS_RUN_OPEN = r"""
import json, os, sys
import tracelet_callbacks as tracelet

parent = tracelet.Experiment(repo_path=".", run_name="parent", system_tracking_interval=None)
parent.log_metric("loss", 1.0, iteration=0)
pid = os.fork()
if pid == 0:
    own = tracelet.Experiment(repo_path=".", run_name="child", system_tracking_interval=None)
    own.log_metric("loss", -1.0, iteration=0)
    sys.exit(0)  # no close(): the exit handler closes the child's own run
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
parent.log_metric("loss", 2.0, iteration=1)
parent.close()
print(json.dumps({"code": code}))
"""


@pytest.mark.slow
def test_a_forked_childs_own_run_left_open_is_closed_finished_at_its_exit(repo_dir: Path) -> None:
    # Before: the exit handler kept its first owner's pid, so it closed nothing in the child and the
    # child's run ended "killed" (its writer saw the child vanish).
    script = repo_dir / "child_run.py"
    script.write_text(CHILD_LEAVES_ITS_RUN_OPEN)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=repo_dir, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["code"] == 0, done.stderr
    runs = {run.name: run.hash for run in open_repo(repo_dir).iter_runs()}
    assert sorted(runs) == ["child", "parent"]
    assert read_run(repo_dir, runs["child"])["status"] == "finished"
    assert read_run(repo_dir, runs["parent"])["status"] == "finished"
    assert series(repo_dir, "loss", {}, runs["child"]) == {0: -1.0}
    assert series(repo_dir, "loss", {}, runs["parent"]) == {0: 1.0, 1: 2.0}
