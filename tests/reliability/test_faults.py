"""The fault catalogue: each fault is made for real (separate processes, real AIM repos, a repo deleted
under a running job) and what it leaves is read back through aim's public API.

Already proven elsewhere, not repeated here:

* SIGKILL of the trainer -> ``killed``, every value older than ``flush_secs`` kept:
  ``test_writer.test_sigkill_of_the_trainer_keeps_every_value_and_closes_the_run``.
* The writer process SIGKILLed mid-run -> one warning, nothing lost, the run still ``finished``:
  ``test_writer.test_a_killed_writer_is_reported_once_and_nothing_is_lost`` (and the two tests after it).
* ``stop_logging``, no stop, an uncaught exception, ``sys.exit(3)``, ``sys.exit(0)``,
  ``raise KeyboardInterrupt`` and SIGTERM:
  ``test_lifecycle.test_every_ending_keeps_values_and_records_status``; Ctrl-C and SIGTERM to the
  whole process group:
  ``test_writer.test_a_signal_to_the_process_group_records_interrupted``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import tracelet_callbacks as tracelet
from conftest import open_repo, read_run, series
from test_writer import wait_until
from tracelet_callbacks import TraceletWarning

pytestmark = pytest.mark.slow

#: How long a faulty repo may hold up the end of a script: a healthy close takes under a second; a store
#: that stops answering is found by the writer's watchdog in about 6 s and close() grants it 10 s more.
STOP_BOUND = 20.0

# These scripts use no SummaryWriter: hiding tensorboard spares each of them the torch import that
# start_logging does to patch it (1.4 s of CPU), as on a machine without tensorboard.
PRELUDE = """
import os, sys, time
sys.modules["tensorboard"] = None
import psutil
import tracelet_callbacks as tracelet
"""


#: No TRACELET_* setting of whoever runs the tests, and no system-metrics sampler adding records.
ENV = {
    **{key: value for key, value in os.environ.items() if not key.startswith("TRACELET_")},
    "TRACELET_SYSTEM_TRACKING_INTERVAL": "off",
}


def spawn(cwd: Path, code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(code), *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(family: list[psutil.Process]) -> None:
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def end(job: subprocess.Popen, *others: psutil.Process) -> None:
    """Kill what this test started and is still running: the script, its writer, ``others``."""
    family = list(others)
    if job.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            family += psutil.Process(job.pid).children(recursive=True)
        job.kill()
        job.wait(30)
    kill(family)


def processes(pids: list[str]) -> list[psutil.Process]:
    """Handles on the processes ``pids`` that still exist (a handle never kills a reused pid)."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(int(pid)))
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def tracelet_messages(stderr: str) -> set[str]:
    """What tracelet told the user, each message once (news is both a log line and a warning)."""
    return {line[line.index("tracelet: ") :] for line in stderr.splitlines() if "tracelet: " in line}


# -- 1. eight jobs logging into one repo at once ----------------------------------------------------

MEMBERS = 8
STEPS = 500
#: From "go" to the last member's exit (about 8 s on 2 quiet cores; the bound allows a busy machine).
FLEET_BOUND = 90.0

FLEET_MEMBER = """
member, repo, signals = int(sys.argv[1]), sys.argv[2], sys.argv[3]
open(os.path.join(signals, f"ready-{member}"), "w").close()
while not os.path.exists(os.path.join(signals, "go")):
    time.sleep(0.005)
exp = tracelet.start_logging(exp_name=f"member-{member}", project="fleet", repo_path=repo)
print(exp.hash, flush=True)  # for the sweep's launcher; it waits until the run is open
for step in range(int(sys.argv[4])):
    # binary fractions: stored exactly, so the read-back is compared with ==
    loss = member + step / 512
    exp.log_metrics({"train/loss": loss, "val/loss": -loss, "lr": member * 1000.0 + step}, step)
tracelet.stop_logging()
print(exp.status, flush=True)
"""


def expected_fleet() -> dict[tuple[str, str, tuple], dict[int, float]]:
    """``{(run name, metric, context items): {step: value}}`` of what ``FLEET_MEMBER`` logs."""
    found = {}
    for member in range(MEMBERS):
        name = f"member-{member}"
        found[(name, "loss", (("subset", "train"),))] = {s: member + s / 512 for s in range(STEPS)}
        found[(name, "loss", (("subset", "val"),))] = {s: -member - s / 512 for s in range(STEPS)}
        found[(name, "lr", ())] = {s: member * 1000.0 + s for s in range(STEPS)}
    return found


def run_fleet(repo: Path, signals: Path) -> list[tuple[int, str, str]]:
    """Start ``MEMBERS`` scripts, release them together, and return ``(exit code, stdout, stderr)`` each."""
    signals.mkdir()
    members = [
        spawn(signals, FLEET_MEMBER, str(m), str(repo), str(signals), str(STEPS)) for m in range(MEMBERS)
    ]
    try:
        wait_until(
            lambda: (
                all((signals / f"ready-{m}").exists() for m in range(MEMBERS))
                or any(p.poll() is not None for p in members)
            ),
            120,
            "every member to be ready",
        )
        (signals / "go").touch()
        deadline = time.monotonic() + FLEET_BOUND
        ended = []
        for member in members:
            try:
                out, err = member.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"member {members.index(member)} did not end within {FLEET_BOUND} s")
            ended.append((member.returncode, out, err))
        return ended
    finally:
        for member in members:
            end(member)


def read_fleet(repo: Path) -> tuple[dict, dict]:
    """The fleet's runs ``{name: run}`` and series ``{(run name, metric, context items): {step: value}}``."""
    aim_repo = open_repo(repo)
    runs = {run.name: run for run in aim_repo.iter_runs()}
    found = {}
    for metric in aim_repo.query_metrics("run.experiment == 'fleet'").iter():
        steps, (values, *_rest) = metric.data.items_list()
        key = (metric.run.name, metric.name, tuple(sorted(metric.context.to_dict().items())))
        found[key] = dict(zip(steps, values, strict=True))
    return runs, found


def test_eight_jobs_logging_into_one_repo_at_once_keep_every_value(repo_dir: Path) -> None:
    import aim

    repo = repo_dir / "shared"
    aim.Repo.from_path(str(repo), init=True)  # the sweep's repo exists; its runs start together
    results = run_fleet(repo, repo_dir / "signals")

    for code, out, err in results:
        assert code == 0, err
        assert not tracelet_messages(err), err
        assert out.split()[1] == "finished", out
    hashes = {out.split()[0] for _code, out, _err in results}
    runs, found = read_fleet(repo)
    assert sorted(runs) == [f"member-{m}" for m in range(MEMBERS)]
    assert {run.hash for run in runs.values()} == hashes
    for name, run in runs.items():
        assert run["status"] == "finished" and run.active is False, name
    assert found == expected_fleet()


def test_eight_jobs_starting_together_in_an_empty_folder_make_eight_runs(repo_dir: Path) -> None:
    # no repo yet: one member creates it while the others open it, and aim writes its VERSION last
    repo = repo_dir / "shared"
    repo.mkdir()
    results = run_fleet(repo, repo_dir / "signals")

    failed = [err.strip().splitlines()[-1] for code, _out, err in results if code != 0]
    assert not failed, f"{len(failed)} of {MEMBERS} members failed, e.g. {failed[0]}"
    runs, found = read_fleet(repo)
    assert sorted(runs) == [f"member-{m}" for m in range(MEMBERS)]
    assert all(run["status"] == "finished" for run in runs.values())
    assert found == expected_fleet()


# -- 2. the repo deleted under a running job ---------------------------------------------------------

DOOMED = """
exp = tracelet.start_logging(exp_name="doomed", repo_path=os.getcwd())
for step in range(100):
    exp.log_metric("train/loss", step / 8, step)
exp.flush()
print("flushed", exp.hash, *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
for step in range(100, 200):
    exp.log_metric("train/loss", step / 8, step)
tracelet.stop_logging()
print("closed", exp.status, flush=True)
"""


@pytest.fixture(scope="module")
def deleted_mid_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int, str, str]:
    """A job whose repo folder's ``.aim`` is deleted once 100 values are durable; it logs 100 more and
    closes. ``(folder, run hash, exit code, stdout, stderr)``."""
    folder = tmp_path_factory.mktemp("deleted")
    go = folder / "go"
    job = spawn(folder, DOOMED, str(go))
    writers: list[psutil.Process] = []
    try:
        line = job.stdout.readline()
        assert line.startswith("flushed"), job.stderr.read()
        _flushed, run_hash, *pids = line.split()
        writers = processes(pids)
        shutil.rmtree(folder / ".aim")
        go.touch()
        try:
            out, err = job.communicate(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script did not end within {STOP_BOUND} s of its repo being deleted")
        wait_until(lambda: all(gone(w) for w in writers), 30, "the writer to exit")
    finally:
        end(job, *writers)
    return folder, run_hash, job.returncode, out, err


def test_a_repo_deleted_mid_run_ends_the_script_normally(deleted_mid_run: tuple) -> None:
    folder, run_hash, code, out, err = deleted_mid_run
    assert code == 0, err
    assert out.strip() == "closed finished"  # the status the script asked for (there is no run to hold it)
    assert "Traceback" not in err, err
    told = tracelet_messages(err)
    assert 1 <= len(told) <= 2, err  # the values logged after the deletion are lost, and it says so
    assert any(run_hash in message and str(folder) in message for message in told), err


def test_a_repo_deleted_mid_run_is_not_reported_saved(deleted_mid_run: tuple) -> None:
    _folder, _run_hash, _code, _out, err = deleted_mid_run
    told = " ".join(tracelet_messages(err))
    assert "is saved" not in told and "aim up" not in told, told


NEXT = """
exp = tracelet.start_logging(exp_name="next")
exp.log_metric("train/loss", 0.5, 0)
"""


def test_the_folder_a_deleted_repo_leaves_takes_the_next_run(deleted_mid_run: tuple) -> None:
    # the deleted run's writer leaves a '.aim' without VERSION behind (aim's status reporter and its
    # index recreate folders in it), which aim alone would call an out-of-date repo
    folder, doomed_hash, *_rest = deleted_mid_run
    assert not (folder / ".aim" / "VERSION").exists()
    job = spawn(folder, NEXT)
    try:
        _out, err = job.communicate(timeout=60)
    finally:
        end(job)
    assert job.returncode == 0 and not tracelet_messages(err), err
    (run,) = open_repo(folder).iter_runs()  # the deleted run is gone for good: nothing of it is left
    assert run.name == "next" and run.hash != doomed_hash and run["status"] == "finished"
    assert series(folder, "loss", {"subset": "train"}, run.hash) == {0: 0.5}


UNOPENABLE = """
exp = tracelet.start_logging(exp_name="unopenable")
exp.log_metric("train/loss", 0.5, 0)
tracelet.stop_logging()  # at once: before the writer has said that it could not open the run
print("stopped", flush=True)
"""


def test_a_run_the_writer_cannot_open_is_told_and_stop_logging_does_not_wait_for_it(repo_dir: Path) -> None:
    import aim

    # a repo the trainer's own checks accept (VERSION is fine) whose run database aim cannot open
    aim.Repo.from_path(str(repo_dir), init=True)
    (repo_dir / ".aim" / "run_metadata.sqlite").unlink()
    (repo_dir / ".aim" / "run_metadata.sqlite").mkdir()
    job = spawn(repo_dir, UNOPENABLE)
    try:
        try:
            out, err = job.communicate(timeout=STOP_BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"start_logging .. stop_logging did not end within {STOP_BOUND} s")
    finally:
        end(job)
    assert job.returncode == 0 and out == "stopped\n", err
    (told,) = tracelet_messages(err)
    assert told == (
        f"tracelet: could not open a run in AIM repo {repo_dir}: "
        "(sqlite3.OperationalError) unable to open database file"
    ), err
    assert "values logged to this run are dropped" in err


# -- 3. endings test_lifecycle does not cover --------------------------------------------------------

LOGGED = """
exp = tracelet.start_logging(exp_name="job", repo_path=os.getcwd())
for step in range(20):
    exp.log_metric("train/loss", 1.0 / (step + 1), step)
print(exp.hash, *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
"""


#: name: (what the script ends with, status, exit code, its whole stderr)
ENDINGS = {
    # the builtin of the site module, as typed in a notebook or a quick script
    "builtin-exit(2)": ("exit(2)", "failed", 2, ""),
    "sys.exit(message)": ("sys.exit('loss diverged')", "failed", 1, "loss diverged\n"),
    # a sys.exit the script catches itself ends nothing: the run ends as the script does
    "caught-sys.exit": ("try:\n    sys.exit(5)\nexcept SystemExit:\n    pass", "finished", 0, ""),
    # not seen, as run/exits.py documents: atexit never learns the exit code, and only the SystemExit
    # of sys.exit / exit / quit tells it; pinned so that a change shows
    "raise-SystemExit(1)": ("raise SystemExit(1)", "finished", 1, ""),
    # os._exit skips atexit as a SIGKILL does: the writer sees the trainer vanish and closes the run.
    # Values logged within flush_secs of that may be lost (DESIGN), so the script flushes first.
    "os._exit": ("exp.flush()\nos._exit(4)", "killed", 4, ""),
}


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, str, str]]:
    """Every ending's script, run side by side, each in a folder of its own, until its writer is gone:
    ``{name: (folder, exit code, run hash, stderr)}``."""
    jobs = {}
    for index, (name, (ending, *_expected)) in enumerate(ENDINGS.items()):
        folder = tmp_path_factory.mktemp(f"ending{index}")
        jobs[name] = (folder, spawn(folder, LOGGED + ending + "\n"))
    results, writers = {}, []
    try:
        for name, (folder, job) in jobs.items():
            out, err = job.communicate(timeout=120)
            run_hash, *pids = out.split() or [""]
            writers += processes(pids)
            results[name] = (folder, job.returncode, run_hash, err)
        wait_until(lambda: all(gone(w) for w in writers), 60, "the writers to close their runs and exit")
    finally:
        for _folder, job in jobs.values():
            end(job)
        kill(writers)
    return results


@pytest.mark.parametrize("name", list(ENDINGS))
def test_every_ending_keeps_values_and_records_status(ended: dict, name: str) -> None:
    _ending, status, returncode, shown = ENDINGS[name]
    folder, code, run_hash, err = ended[name]
    assert code == returncode, err
    assert err == shown  # sys.exit's message is still shown; no warning, no traceback
    run = read_run(folder, run_hash)
    assert run["status"] == status
    assert run.active is False and run.end_time is not None
    assert series(folder, "loss", {"subset": "train"}, run_hash) == {s: 1.0 / (s + 1) for s in range(20)}


# -- 4. a second start_logging while one is active ---------------------------------------------------


def test_a_second_start_logging_finishes_the_first_run_and_both_keep_their_values(repo_dir: Path) -> None:
    # DESIGN: sequential start_logging calls make separate runs; session.py: the previous one is
    # finished first, with a warning at the caller's line
    first = tracelet.start_logging(exp_name="lr-0.1", repo_path=str(repo_dir))
    for step in range(50):
        first.log_metric("train/loss", step / 8, step)
    with pytest.warns(TraceletWarning, match="previous run is finished first") as caught:
        second = tracelet.start_logging(exp_name="lr-0.01", repo_path=str(repo_dir))
    assert [w.filename for w in caught] == [__file__]
    assert first.status == "finished" and not first.is_open
    assert second.is_open and tracelet.get_active_experiment() is second
    assert first.hash != second.hash
    with pytest.warns(TraceletWarning, match="after the run was closed"):
        first.log_metric("train/loss", 99.0, 999)  # a stale handle: dropped, never sent to the new run
    for step in range(50):
        second.log_metric("train/loss", -step / 8, step)
    tracelet.stop_logging()

    for exp in (first, second):
        run = read_run(repo_dir, exp.hash)
        assert run["status"] == "finished" and run.active is False
    assert series(repo_dir, "loss", {"subset": "train"}, first.hash) == {s: s / 8 for s in range(50)}
    assert series(repo_dir, "loss", {"subset": "train"}, second.hash) == {s: -s / 8 for s in range(50)}
    assert {run.name for run in open_repo(repo_dir).iter_runs()} == {"lr-0.1", "lr-0.01"}
