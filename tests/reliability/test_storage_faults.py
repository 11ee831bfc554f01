"""Storage that fails or stops answering (issue 14, items 6 and 11).

A full disk is a real 4 MiB tmpfs mounted by the test (skipped where mounting is refused). A store
that blocks is a named pipe standing where an artifact is to be written: opening it for writing
waits until someone reads it, as a hung network mount would. A file still being written is appended
to by a thread while it is logged. Everything is read back through aim's API.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
import tracelet_callbacks.testing
from conftest import read_run, series
from tracelet_callbacks import TraceletWarning
from tracelet_callbacks.core import records as rec
from tracelet_callbacks.sink.buffered import Unavailable
from tracelet_callbacks.sink.process import writer_pids

pytestmark = pytest.mark.slow

# Logs 20 metrics a step into REPO until the disk is full, then MORE steps; prints what it saw.
TRAINER = textwrap.dedent(
    """
    import os, sys, time
    import tracelet_callbacks as tracelet
    from tracelet_callbacks.sink.process import writer_pids

    repo, more = sys.argv[1], int(sys.argv[2])
    exp = tracelet.start_logging(repo_path=repo, experiment_name="full-disk")
    print("WRITER", *writer_pids(), "RUN", exp.hash, flush=True)
    worst, step, full_at = 0.0, 0, None
    while full_at is None or step < full_at + more:
        began = time.monotonic()
        exp.log_metrics({f"m{j}": float(step * j) for j in range(20)}, step=step)
        worst = max(worst, time.monotonic() - began)
        if full_at is None and os.statvfs(repo).f_bavail == 0:
            full_at = step
            print("FULL", step, flush=True)
        step += 1
        if step > 200_000:
            raise SystemExit("the disk never filled")
    print("WORST", worst, flush=True)
    began = time.monotonic()
    tracelet.stop_logging()
    print("CLOSED", time.monotonic() - began, flush=True)
    """
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 4 MiB tmpfs: the disk that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _trainer(repo: Path, more: int, tmp_path: Path) -> subprocess.Popen:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {**os.environ, "TRACELET_SYSTEM_TRACKING_INTERVAL": "off", "PYTHONWARNINGS": "always"}
    return subprocess.Popen(
        [sys.executable, str(script), str(repo), str(more)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has let go of everything
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, limit: float) -> float:
    """Seconds until ``pid`` is gone (it is killed, and the test fails, past ``limit``)."""
    began = time.monotonic()
    while not _gone(pid):
        if time.monotonic() - began > limit:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the writer (pid {pid}) outlived its trainer by more than {limit:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - began


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "TraceletWarning" in line]


def test_a_full_disk_is_one_warning_and_training_finishes(small_disk: Path, tmp_path: Path) -> None:
    repo = small_disk / "repo"
    trainer = _trainer(repo, 3000, tmp_path)
    out, err = trainer.communicate(timeout=180)
    assert trainer.returncode == 0, err
    said = dict(line.split(" ", 1) for line in out.splitlines())
    writer, run_hash = said["WRITER"].split(" RUN ")
    # the loop never waited on the full disk, and closing took no time either
    assert float(said["WORST"]) < 3.0, out
    assert float(said["CLOSED"]) < 10.0, out
    (warning,) = _warnings(err)
    assert f"the disk holding {repo} is full" in warning and "training goes on" in warning
    assert "close-stale" in warning  # how to finish the run once there is room
    _wait_gone(int(writer), 10.0)
    # What was stored before the disk filled sits in RocksDB's write-ahead logs, which only a writer
    # reads. Given room (a copy: at most 4 MiB), close-stale opens it for writing and closes the run.
    room = tmp_path / "room"
    shutil.copytree(repo, room)
    closing = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracelet_callbacks",
            "runs",
            "close-stale",
            "--repo",
            str(room),
            "--older-than",
            "0s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert closing.returncode == 0 and run_hash in closing.stdout, closing.stdout + closing.stderr
    assert read_run(room, run_hash)["status"] == "killed"
    m3 = series(room, "m3", {}, run_hash)
    assert len(m3) > 100 and m3 == {step: float(step * 3) for step in range(len(m3))}


def test_the_writer_leaves_within_seconds_of_a_trainer_killed_on_a_full_disk(
    small_disk: Path, tmp_path: Path
) -> None:
    trainer = _trainer(small_disk / "repo", 10**9, tmp_path)  # logs until it is killed
    try:
        writer = int(trainer.stdout.readline().split()[1])
        assert trainer.stdout.readline().startswith("FULL")
    finally:
        trainer.kill()
        trainer.wait()
    assert _wait_gone(writer, 10.0) < 10.0


def _block(exp: tracelet.Experiment, name: str) -> Path:
    """Make ``name`` in the run's artifact store a named pipe: writing it waits for a reader."""
    where = Path(exp.artifacts_uri[len("file://") :])  # the store's folder for this run
    where.mkdir(parents=True, exist_ok=True)
    os.mkfifo(where / name)
    return where / name


def _drain(pipe: Path) -> threading.Thread:
    """Read ``pipe`` to its end from a thread (that lets the blocked writer go on)."""

    def read() -> None:
        with open(pipe, "rb") as reading:
            while reading.read(1 << 16):
                pass

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_store_that_stops_answering_is_told_and_nothing_waits_for_it(repo_dir: Path) -> None:
    model = repo_dir / "model.pth"
    model.write_bytes(b"weights" * 1000)
    exp = tracelet.Experiment(artifacts_uri=f"file://{repo_dir / 'store'}")
    exp.log_metric("loss", 1.0, 0)
    pipe = _block(exp, "model.pth")
    began = time.monotonic()
    with pytest.warns(TraceletWarning) as caught:
        assert exp.log_artifact(model) == []
    waited = time.monotonic() - began
    assert waited < 20.0, f"log_artifact waited {waited:.0f} s for a store that does not answer"
    told = " | ".join(str(w.message) for w in caught)
    assert f"AIM storage at {repo_dir}" in told and "has not answered" in told and "model.pth" in told
    # values logged while the store is stuck are held, not waited for
    began = time.monotonic()
    for step in range(1, 200):
        exp.log_metric("loss", 1.0 / (step + 1), step)
    assert time.monotonic() - began < 5.0
    # the store answers again: everything is written, the artifact too
    reader = _drain(pipe)
    exp.close()
    reader.join(10)
    assert exp.status == "finished"
    loss = series(repo_dir, "loss", {}, exp.hash)
    assert sorted(loss) == list(range(200))
    assert "model.pth" in read_run(repo_dir, exp.hash).artifacts


def test_a_run_whose_store_never_answers_closes_in_bounded_time(repo_dir: Path) -> None:
    model = repo_dir / "model.pth"
    model.write_bytes(b"weights")
    exp = tracelet.Experiment(artifacts_uri=f"file://{repo_dir / 'store'}")
    exp.log_metric("loss", 1.0, 0)
    pipe = _block(exp, "model.pth")
    exp.flush()
    (writer,) = set(writer_pids()) - {pid for pid in writer_pids() if _gone(pid)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.log_artifact(model)
        began = time.monotonic()
        exp.close()
        closing = time.monotonic() - began
    assert closing < 30.0  # the stall is seen within seconds, then the close gets 10 s of grace
    told = [str(w.message) for w in caught if issubclass(w.category, TraceletWarning)]
    assert any("was not closed" in text and "close-stale" in text for text in told), told
    assert _wait_gone(writer, 5.0) < 5.0
    # what was acknowledged before the store got stuck is kept: close-stale, as told, closes the run
    closing = subprocess.run(
        [sys.executable, "-m", "tracelet_callbacks", "runs", "close-stale", "--older-than", "0s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exp.hash in closing.stdout, closing.stdout + closing.stderr
    assert series(repo_dir, "loss", {}, exp.hash) == {0: 1.0}
    assert pipe.exists()  # nobody read it: the copy never started


def test_an_artifact_is_logged_with_the_size_it_has_at_the_call(repo_dir: Path) -> None:
    log = repo_dir / "train.log"
    log.write_bytes(b"epoch 1\n" * 1000)
    exp = tracelet.Experiment(sink_factory=tracelet.testing.RecordingSink)
    exp.log_artifact(log)
    (artifact,) = exp._sink.of(rec.Artifact)
    assert (artifact.name, artifact.size) == ("train.log", 8000)


@pytest.mark.parametrize("writer", ["process", "thread", "sync"])
def test_a_file_that_grew_since_it_was_logged_is_copied_as_it_was(repo_dir: Path, writer: str) -> None:
    """aim's own copy reads to the end of the file: one that keeps growing (a log being written)
    was copied until the disk was full. The writers copy the length the file had when logged."""
    log = repo_dir / "train.log"
    log.write_bytes(os.urandom(1 << 20))
    logged = rec.Artifact(str(log), "train.log", size=1 << 20)
    with open(log, "ab") as writing:  # what is written after the call: not copied
        writing.write(b"x" * (3 << 20))
    exp = tracelet.Experiment(writer=writer).open()
    exp._sink.submit([logged])
    exp.close()
    stored = Path(read_run(repo_dir, exp.hash).artifacts_uri[len("file://") :]) / "train.log"
    assert stored.read_bytes() == log.read_bytes()[: 1 << 20]
    assert "train.log" in read_run(repo_dir, exp.hash).artifacts


def test_a_pipe_is_not_read_as_an_artifact(repo_dir: Path) -> None:
    folder = repo_dir / "outputs"
    folder.mkdir()
    (folder / "metrics.csv").write_text("step,loss\n0,1.0\n")
    os.mkfifo(folder / "progress.pipe")
    exp = tracelet.Experiment()
    with pytest.warns(TraceletWarning, match=r"progress\.pipe.*not a regular file"):
        assert exp.log_artifact(folder) == ["outputs/metrics.csv"]
    exp.close()
    assert set(read_run(repo_dir, exp.hash).artifacts) == {"outputs/metrics.csv"}


def test_an_artifact_no_sink_could_take_is_not_reported_stored(repo_dir: Path) -> None:
    """When neither the writer nor the training process can write to AIM, ``log_artifact`` says so
    and returns no names (it used to return them as if stored)."""
    (repo_dir / "model.pth").write_bytes(b"weights")
    exp = tracelet.Experiment(sink_factory=lambda config: Unavailable("the repo cannot be opened"))
    with pytest.warns(TraceletWarning, match=r"model\.pth.*the repo cannot be opened"):
        assert exp.log_artifact(repo_dir / "model.pth") == []
    strict = tracelet.Experiment(
        sink_factory=lambda config: Unavailable("the repo cannot be opened"), strict=True
    )
    with pytest.raises(tracelet.TraceletError, match=r"model\.pth"):
        strict.log_artifact(repo_dir / "model.pth")
