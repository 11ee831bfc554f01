"""The non-blocking writer against real AIM repos: exact batched ingestion, durability, crash safety.

Every value is read back through aim itself. A closed run is indexed, so ``Repo.query_metrics`` sees it;
a run that is still open (or whose writer was killed) is not indexed yet, and aim 3.29's read-only
``Run`` reads its meta from the index only, so those are read from the run's own storage chunks with
``Repo.request_tree`` in a separate process (``READ_CHUNKS``), the way a second reader would see them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import tracelet_callbacks as tracelet
from conftest import open_repo, read_run
from tracelet_callbacks import TraceletError, TraceletWarning
from tracelet_callbacks.sink import process
from tracelet_callbacks.sink.run import AimSink
from tracelet_callbacks.sink.series import ScalarBatcher
from tracelet_callbacks.sink.writer import ProcessSink, ThreadSink

SUBSETS = ("train", "val")
STEPS = 2500
MODES = ("process", "thread", "sync")

# -- reading back -----------------------------------------------------------------------------------

#: Prints what a separate process finds on disk for one (possibly unindexed, still open) run.
READ_CHUNKS = textwrap.dedent(
    """
    import json, sys
    import aim

    path, run_hash = sys.argv[1], sys.argv[2]
    repo = aim.Repo(path)
    meta = repo.request_tree("meta", run_hash, read_only=True).subtree(("meta", "chunks", run_hash))
    seqs = repo.request_tree("seqs", run_hash, read_only=True).subtree(("seqs", "v2", "chunks", run_hash))
    found = {"status": meta.get(("attrs", "status")), "end_time": meta.get("end_time"), "series": {}}
    contexts = meta.get("contexts", {})
    for ctx_idx, traces in meta.get("traces", {}).items():
        for name, info in traces.items():
            if info.get("version") != 2:  # scalars only
                continue
            tree = seqs.subtree((ctx_idx, name))
            steps = dict(tree.array("step", dtype="int64").items())
            values = dict(tree.array("val").items())
            key = json.dumps([name, contexts[ctx_idx]], sort_keys=True)
            found["series"][key] = sorted([steps[k], values[k]] for k in steps)
    print(json.dumps(found))
    """
)


def read_from_another_process(repo_dir: Path, run_hash: str) -> dict:
    """What another process finds: ``{"status", "end_time", "series": {(name, context): {step: value}}}``."""
    done = subprocess.run(
        [sys.executable, "-c", READ_CHUNKS, str(repo_dir), run_hash],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    series = {}
    for key, pairs in found["series"].items():
        name, context = json.loads(key)
        series[_key(name, context)] = dict(map(tuple, pairs))
    found["series"] = series
    return found


def _key(name: str, context: dict) -> tuple[str, str]:
    return name, json.dumps(context, sort_keys=True)


def indexed_series(repo_dir: Path, run_hash: str) -> dict[tuple[str, str], tuple[list, list, list]]:
    """``{(name, context json): (steps, values, epochs)}`` of one closed run, through ``query_metrics``."""
    found = {}
    for metric in open_repo(repo_dir).query_metrics(f"run.hash == {run_hash!r}").iter():
        steps, (values, epochs, _times) = metric.data.items_list()
        found[_key(metric.name, metric.context.to_dict())] = (steps, values, epochs)
    return found


def trace_meta(repo_dir: Path, run_hash: str) -> dict[tuple[str, str], dict]:
    """aim's per-series summary (first, last, last_step, min, max ...) as ``Run`` exposes it."""
    run = read_run(repo_dir, run_hash)
    return {
        _key(info["name"], info["context"]): dict(info["values"])
        for info in run.collect_sequence_info("metric")["metric"]
    }


def same(a: Any, b: Any) -> bool:
    """Equality in which NaN equals NaN and a missing epoch (None) equals NaN (how aim reads it back)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    a = math.nan if a is None else a
    b = math.nan if b is None else b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_script(repo_dir: Path, code: str, *args: str, **popen: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=repo_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


# -- 1. batched ingestion is exact ------------------------------------------------------------------


def _value(i: int, k: int, name: str) -> float:
    if i % 97 == 13:
        return math.nan
    if name == "acc" and i % 389 == 7:
        return math.inf if k == 0 else -math.inf
    return round(math.sin(0.01 * i + k) * (k + 1), 9)


def workload(steps: int = STEPS) -> list[tuple[str, str, dict, float, int | None, int | None]]:
    """``(tag, name, context, value, step, epoch)`` in logging order: 3 metrics x 2 contexts.

    ``loss`` has explicit steps, one step logged twice in a row and, at the end, an earlier step
    rewritten (later value wins; aim's ``last`` / ``last_step`` do not move back); ``acc`` uses
    automatic steps and holds inf and -inf; ``lr`` has every other step and an epoch. All hold NaN.
    """
    events = []
    for i in range(steps):
        for k, subset in enumerate(SUBSETS):
            context = {"subset": subset}
            events.append((f"{subset}/loss", "loss", context, _value(i, k, "loss"), i, None))
            if i == steps // 2:
                events.append((f"{subset}/loss", "loss", context, -1000.0 - k, i, None))
            events.append((f"{subset}/acc", "acc", context, _value(i, k + 2, "acc"), None, None))
            events.append((f"{subset}/lr", "lr", context, _value(i, k + 4, "lr"), 2 * i, i // 100))
    for k, subset in enumerate(SUBSETS):
        events.append((f"{subset}/loss", "loss", {"subset": subset}, 42.0 + k, 10, None))
    return events


def expected_series(events: list) -> dict[tuple[str, str], dict[int, tuple[float, int | None]]]:
    """What aim's rules make of ``events``: ``{series: {step: (value, epoch)}}``, later value wins."""
    result: dict[tuple[str, str], dict[int, tuple[float, int | None]]] = {}
    counts: dict[tuple[str, str], int] = {}
    for _tag, name, context, value, step, epoch in events:
        key = _key(name, context)
        count = counts.get(key, 0)
        step = count if step is None else step
        counts[key] = max(count, step + 1)
        result.setdefault(key, {})[step] = (value, epoch)
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The workload written value by value with ``aim.Run.track``: aim's own storage layout."""
    import aim
    from aim.sdk.index_manager import RepoIndexManager

    path = tmp_path_factory.mktemp("reference")
    run = aim.Run(
        repo=str(path), system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )
    for _tag, name, context, value, step, epoch in workload():
        run.track(value, name=name, step=step, epoch=epoch, context=context)
    run_hash = run.hash
    run.close()
    RepoIndexManager.get_index_manager(aim.Repo.from_path(str(path))).index(run_hash)
    return indexed_series(path, run_hash), trace_meta(path, run_hash)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_batched_ingestion_equals_value_by_value_tracking(
    repo_dir: Path, mode: str, reference: tuple[dict, dict]
) -> None:
    ref_series, ref_meta = reference
    events = workload()
    exp = tracelet.Experiment(writer=mode, buffer_size=500)
    translator = exp.translator
    for tag, _name, _context, value, step, epoch in events:
        if tag.endswith("lr"):
            translator.scalar(tag, value, step, epoch)
        else:
            exp.log_metric(tag, value, step, epoch=epoch)
    exp.close()
    expected_type = {"process": ProcessSink, "thread": ThreadSink, "sync": AimSink}[mode]
    assert type(exp._sink) is expected_type
    if mode != "process":  # pins that the batched path, not Run.track, wrote these
        aim_sink = exp._sink if mode == "sync" else exp._sink._sink
        assert isinstance(aim_sink._batcher, ScalarBatcher)

    ours = indexed_series(repo_dir, exp.hash)
    assert ours.keys() == ref_series.keys() == expected_series(events).keys()
    for key, points in expected_series(events).items():
        steps, values, epochs = ours[key]
        assert steps == sorted(points), key
        assert same(values, [points[s][0] for s in steps]), key
        assert same(epochs, [points[s][1] for s in steps]), key
        assert same(ours[key], ref_series[key]), key
    # spot checks of the rules, independent of the comparison with aim
    loss = dict(zip(*ours[_key("loss", {"subset": "train"})][:2], strict=True))
    assert loss[STEPS // 2] == -1000.0 and loss[10] == 42.0 and math.isnan(loss[13])
    assert ours[_key("acc", {"subset": "val"})][0] == list(range(STEPS))
    assert -math.inf in ours[_key("acc", {"subset": "val"})][1]

    meta = trace_meta(repo_dir, exp.hash)
    assert meta.keys() == ref_meta.keys()
    for key in ref_meta:
        assert same(meta[key], ref_meta[key]), (key, meta[key], ref_meta[key])
    train_loss = meta[_key("loss", {"subset": "train"})]
    assert train_loss["last_step"] == STEPS - 1 and train_loss["min"] == -1000.0
    assert meta[_key("lr", {"subset": "val"})]["last_step"] == 2 * (STEPS - 1)
    assert read_run(repo_dir, exp.hash)["status"] == "finished"


def test_a_batch_of_nan_leaves_the_same_summary_as_run_track(repo_dir: Path) -> None:
    import aim
    from aim.sdk.index_manager import RepoIndexManager

    exp = tracelet.Experiment(writer="thread")
    run = aim.Run(
        repo=".", system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )
    for step in range(5):
        exp.log_metric("diverged", math.nan, step)
        run.track(math.nan, name="diverged", step=step)
    exp.close()
    ref_hash = run.hash
    run.close()
    RepoIndexManager.get_index_manager(aim.Repo.from_path(str(repo_dir))).index(ref_hash)
    ours, theirs = trace_meta(repo_dir, exp.hash), trace_meta(repo_dir, ref_hash)
    assert same(ours[_key("diverged", {})], theirs[_key("diverged", {})]), (ours, theirs)


# -- 2, 3. flush() and flush_secs make values durable while the run is open -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["process", "thread"])
def test_flush_makes_everything_logged_durable_for_another_process(repo_dir: Path, mode: str) -> None:
    # nothing would be handed on without flush(): the buffer holds all of it and the timer is far off
    exp = tracelet.Experiment(writer=mode, buffer_size=100_000, flush_secs=600)
    for step in range(3000):
        exp.log_metric("train/loss", step * 0.5, step)
    exp.log_metric("val/loss", math.nan, 7)
    exp.flush()
    seen = read_from_another_process(repo_dir, exp.hash)
    assert exp.is_open and seen["status"] == "running" and seen["end_time"] is None
    assert seen["series"][_key("loss", {"subset": "train"})] == {s: s * 0.5 for s in range(3000)}
    assert list(seen["series"][_key("loss", {"subset": "val"})]) == [7]
    exp.close()


@pytest.mark.slow
def test_values_are_durable_after_flush_secs_without_a_flush(repo_dir: Path) -> None:
    exp = tracelet.Experiment(writer="process", buffer_size=100_000, flush_secs=0.5)
    for step in range(3000):
        exp.log_metric("train/loss", float(step), step)
    time.sleep(2.0)  # flush_secs and then some: no flush() call anywhere
    seen = read_from_another_process(repo_dir, exp.hash)
    assert seen["series"][_key("loss", {"subset": "train"})] == {s: float(s) for s in range(3000)}
    exp.close()


# -- 4. SIGKILL of the trainer ----------------------------------------------------------------------

KILLED_TRAINER = """
import sys, time
import tracelet_callbacks as tracelet

exp = tracelet.Experiment(flush_secs=1.0, buffer_size=1_000_000)  # only the timer hands values on
for step in range(int(sys.argv[1])):
    exp.log_metric("train/loss", step / 4, step)
print(exp.hash, exp._sink._proc.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_sigkill_of_the_trainer_keeps_every_value_and_closes_the_run(repo_dir: Path) -> None:
    n = 5000
    trainer = run_script(repo_dir, KILLED_TRAINER, str(n))
    writer_pid = None
    try:
        line = trainer.stdout.readline()
        assert line, trainer.stderr.read()
        run_hash, writer_pid = line.split()[0], int(line.split()[1])
        time.sleep(2.5)  # more than flush_secs since the last value
        trainer.kill()
        assert trainer.wait(30) == -signal.SIGKILL
        wait_until(lambda: process_gone(writer_pid), 60, "the writer to close the run and exit")
    finally:
        if trainer.poll() is None:
            trainer.kill()
        if writer_pid is not None and not process_gone(writer_pid):
            os.kill(writer_pid, signal.SIGKILL)
    run = read_run(repo_dir, run_hash)
    assert run["status"] == "killed"
    assert run.active is False and run.end_time is not None
    steps, values, _ = indexed_series(repo_dir, run_hash)[_key("loss", {"subset": "train"})]
    assert steps == list(range(n))
    assert values == [step / 4 for step in range(n)]


# -- 5. a dead writer ------------------------------------------------------------------------------


def _writer_stopped(record: Any) -> list:
    return [w for w in record if "writer stopped" in str(w.message)]


@pytest.mark.slow
def test_a_killed_writer_is_reported_once_and_nothing_is_lost(repo_dir: Path) -> None:
    exp = tracelet.Experiment(writer="process", buffer_size=100, flush_secs=600)
    for step in range(500):
        exp.log_metric("train/loss", float(step), step)
    exp.flush()
    for step in range(500, 800):  # handed on, perhaps not yet acknowledged
        exp.log_metric("train/loss", float(step), step)
    exp.log_metric("train/acc", 0.5, 0)  # pending in this process
    sink = exp._sink
    assert isinstance(sink, ProcessSink)
    with pytest.warns(TraceletWarning) as record:
        os.kill(sink._proc.pid, signal.SIGKILL)
        for step in range(800, 1500):
            exp.log_metric("train/loss", float(step), step)
        exp.flush()
        exp.log_metric("train/acc", 0.75, 1)
        exp.close()
    assert len(_writer_stopped(record)) == 1, [str(w.message) for w in record]
    assert "nothing acknowledged or pending is lost" in str(_writer_stopped(record)[0].message)
    ours = indexed_series(repo_dir, exp.hash)
    steps, values, _ = ours[_key("loss", {"subset": "train"})]
    assert steps == list(range(1500)) and values == [float(s) for s in range(1500)]
    assert ours[_key("acc", {"subset": "train"})][:2] == ([0, 1], [0.5, 0.75])
    assert read_run(repo_dir, exp.hash)["status"] == "finished"


@pytest.mark.slow
def test_a_takeover_is_not_recorded_as_a_resume(repo_dir: Path) -> None:
    exp = tracelet.Experiment(writer="process", flush_secs=600)
    exp.log_metric("loss", 1.0, 0)
    exp.flush()
    os.kill(exp._sink._proc.pid, signal.SIGKILL)
    with pytest.warns(TraceletWarning, match="writer stopped"):
        exp.log_metric("loss", 2.0, 1)
        exp.close()
    run = read_run(repo_dir, exp.hash)
    assert run["status"] == "finished"
    assert run.get(("__system_params", "tracelet", "resumed_from_status")) is None


@pytest.mark.slow
def test_a_writer_dying_during_a_large_batch_loses_nothing(repo_dir: Path) -> None:
    # buffer_size=10 and 1000 metrics in one log_metrics call: one submit of 100 writer batches.
    exp = tracelet.Experiment(writer="process", buffer_size=10, flush_secs=600)
    exp.log_metric("first", 1.0, 0)
    exp.flush()
    sink = exp._sink
    pid = sink._proc.pid
    os.kill(pid, signal.SIGSTOP)  # the writer takes nothing more: the caller waits on back-pressure
    try:
        logger = threading.Thread(target=exp.log_metrics, args=({f"m{k}": float(k) for k in range(1000)}, 0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceletWarning)
            logger.start()
            wait_until(lambda: len(sink._in_flight) >= 32, 30, "32 batches in flight")
            os.kill(pid, signal.SIGKILL)
            logger.join(60)
            assert not logger.is_alive()
            exp.close()
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)
    names = {key[0] for key in indexed_series(repo_dir, exp.hash)}
    missing = {f"m{k}" for k in range(1000)} - names
    assert not missing, f"{len(missing)} of 1000 metrics lost, e.g. {sorted(missing)[:3]}"


# -- 6. back-pressure bounds memory -----------------------------------------------------------------


@pytest.mark.slow
def test_a_stalled_writer_makes_the_caller_wait_instead_of_buffering(repo_dir: Path) -> None:
    limit = 100
    exp = tracelet.Experiment(writer="process", buffer_size=limit, flush_secs=600)
    exp.log_metric("train/loss", 0.0, 0)
    exp.flush()
    pid = exp._sink._proc.pid
    accepted = [0]
    total = 20_000

    def log_all() -> None:
        for step in range(1, total):
            exp.log_metric("train/loss", float(step), step)
            accepted[0] = step

    os.kill(pid, signal.SIGSTOP)
    try:
        logger = threading.Thread(target=log_all, daemon=True)
        logger.start()
        wait_until(lambda: accepted[0] >= limit, 30, "the first batches")
        for _ in range(40):  # until the caller stops advancing (or has logged everything)
            held = accepted[0]
            time.sleep(0.5)
            if accepted[0] == held:
                break
        assert logger.is_alive() and accepted[0] == held  # the caller waits ...
        # ... once the batches in flight (32) and the caller's buffer are full, not before
        assert limit <= held <= 34 * limit
    finally:
        os.kill(pid, signal.SIGCONT)
    logger.join(120)
    assert not logger.is_alive()
    exp.close()
    steps, values, _ = indexed_series(repo_dir, exp.hash)[_key("loss", {"subset": "train"})]
    assert steps == list(range(total)) and values == [float(s) for s in range(total)]


MEMORY_SCRIPT = """
import json, sys, threading
import psutil
import tracelet_callbacks as tracelet

n = int(sys.argv[1])
exp = tracelet.Experiment(writer="process")
scalar = exp.translator.scalar
for step in range(10_000):  # warm up: imports, the writer, first batches
    scalar("train/loss", float(step), step)
exp.flush()
# sampled, not ru_maxrss: a child's ru_maxrss starts from its parent's (pytest's) peak on Linux
processes = [psutil.Process(), psutil.Process(exp._sink._proc.pid)]
base = [p.memory_info().rss for p in processes]
peak = list(base)
stop = threading.Event()

def sample():
    while not stop.wait(0.01):
        for i, p in enumerate(processes):
            peak[i] = max(peak[i], p.memory_info().rss)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
for step in range(10_000, n):
    scalar("train/loss", float(step), step)
exp.flush()
stop.set()
sampler.join()
exp.close()
print(json.dumps({"hash": exp.hash, "growth": peak[0] - base[0], "writer_growth": peak[1] - base[1]}))
"""


@pytest.mark.slow
def test_logging_as_fast_as_possible_keeps_memory_bounded(repo_dir: Path) -> None:
    # 200,000 values (the writer ingests ~20,000/s on 2 cores; the 5,000,000 is a benchmark).
    # Holding them all in the trainer would cost ~40 MB (~200 bytes per record); with back-pressure
    # at most 32 batches of buffer_size (1000) records plus one buffer wait, ~7 MB.
    n = 200_000
    trainer = run_script(repo_dir, MEMORY_SCRIPT, str(n))
    out, err = trainer.communicate(timeout=240)
    assert trainer.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["growth"] < 20 * 2**20, report
    assert report["writer_growth"] < 200 * 2**20, report
    steps, values, _ = indexed_series(repo_dir, report["hash"])[_key("loss", {"subset": "train"})]
    assert len(steps) == n and steps[-1] == n - 1 and values[-1] == float(n - 1)
    assert values == [float(s) for s in steps]


# -- 7. Ctrl-C and SIGTERM to the whole process group ----------------------------------------------

GROUP_SIGNALLED = """
import time
import tracelet_callbacks as tracelet

exp = tracelet.Experiment(flush_secs=600, buffer_size=1_000_000)  # values still in the trainer
for step in range(300):
    exp.log_metric("train/loss", float(step), step)
print(exp.hash, flush=True)
time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_records_interrupted(repo_dir: Path, signum: int) -> None:
    # a terminal's Ctrl-C (or a job scheduler's SIGTERM) reaches every process in the group; the writer
    # must not be one of them, or it dies before the trainer records "interrupted"
    trainer = run_script(repo_dir, GROUP_SIGNALLED, start_new_session=True)
    try:
        run_hash = trainer.stdout.readline().strip()
        assert run_hash, trainer.stderr.read()
        os.killpg(trainer.pid, signum)
        _, err = trainer.communicate(timeout=120)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == -signum, err
    assert "tracelet" not in err, err  # no warning: no writer stopped, nothing failed to close
    if signum == signal.SIGINT:
        assert err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt"), err
    run = read_run(repo_dir, run_hash)
    assert run["status"] == "interrupted" and run.active is False
    steps, values, _ = indexed_series(repo_dir, run_hash)[_key("loss", {"subset": "train"})]
    assert steps == list(range(300)) and values == [float(s) for s in range(300)]


# -- 8. writer modes and configuration -------------------------------------------------------------


def test_writer_mode_from_the_environment(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_WRITER", "thread")
    with tracelet.Experiment() as exp:
        assert type(exp._sink) is ThreadSink
        exp.log_metric("loss", 2.0, 3)
    assert indexed_series(repo_dir, exp.hash)[_key("loss", {})][:2] == ([3], [2.0])
    assert tracelet.Experiment(writer="sync").config.writer == "sync"  # a keyword beats the env


@pytest.mark.parametrize("source", ["keyword", "env"])
def test_an_invalid_writer_names_the_valid_ones(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    if source == "env":
        monkeypatch.setenv("TRACELET_WRITER", "proces")
        settings: dict = {}
    else:
        settings = {"writer": "proces"}
    with pytest.raises(ValueError, match=r"writer must be one of process, thread, sync, got 'proces'"):
        tracelet.Experiment(**settings)
    assert not (repo_dir / ".aim").exists()


def test_terminal_capture_keeps_the_process_writer(repo_dir: Path) -> None:
    with tracelet.Experiment(writer="process", capture_terminal_logs=True) as exp:
        assert type(exp._sink) is ProcessSink  # the lines are captured in the trainer and sent over
        exp.log_metric("loss", 1.5, 0)
    assert indexed_series(repo_dir, exp.hash)[_key("loss", {})][:2] == ([0], [1.5])


# -- 9. artifacts through the writer process --------------------------------------------------------


def test_a_failing_artifact_copy_is_a_warning_on_the_callers_call(repo_dir: Path) -> None:
    """The store cannot take the file: the caller hears it at once (with ``strict``, as an error)
    and training goes on; the writer is not harmed."""
    blocker = repo_dir / "not-a-folder"
    blocker.write_text("a file where the artifact store should be")
    model = repo_dir / "model.pth"
    model.write_bytes(b"weights")
    strict = tracelet.Experiment(writer="process", artifacts_uri=f"file://{blocker}", strict=True)
    with pytest.raises(TraceletError, match=r"model\.pth"):
        strict.log_artifact(model)
    strict.close()
    exp = tracelet.Experiment(writer="process", artifacts_uri=f"file://{blocker}")
    exp.log_metric("train/loss", 1.0, 0)
    with pytest.warns(TraceletWarning, match=r"model\.pth.*training goes on"):
        assert exp.log_artifact(model) == []
    for step in range(1, 5):
        exp.log_metric("train/loss", 1.0 / (step + 1), step)
    exp.close()
    assert type(exp._sink) is ProcessSink
    steps, values, _ = indexed_series(repo_dir, exp.hash)[_key("loss", {"subset": "train"})]
    assert steps == [0, 1, 2, 3, 4] and values == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert read_run(repo_dir, exp.hash)["status"] == "finished"


# -- 10. after close -------------------------------------------------------------------------------


def test_logging_after_close_warns_once_and_drops(repo_dir: Path) -> None:
    exp = tracelet.Experiment(writer="process")
    exp.log_metric("train/loss", 1.0, 0)
    exp.close()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        exp.log_metric("train/loss", 2.0, 1)
        exp.log_metrics({"train/loss": 3.0}, step=2)
        exp.run.track(4.0, name="loss", step=3, context={"subset": "train"})
        exp.flush()  # a no-op
        exp.close()  # so is a second close
        exp.close("failed")
    assert [type(w.message) for w in record] == [TraceletWarning], [str(w.message) for w in record]
    assert "after the run was closed" in str(record[0].message)
    assert exp.status == "finished"
    steps, values, _ = indexed_series(repo_dir, exp.hash)[_key("loss", {"subset": "train"})]
    assert (steps, values) == ([0], [1.0])
    assert read_run(repo_dir, exp.hash)["status"] == "finished"


# -- 11. one writer process, run after run ----------------------------------------------------------


@pytest.mark.slow
def test_the_next_run_reuses_the_writer_in_the_trainers_current_folder(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tracelet.Experiment(writer="process", repo_path="aim")  # relative: resolved where we are
    first.log_metric("train/loss", 1.0, 0)
    pid = first._sink._proc.pid
    first.close()
    elsewhere = repo_dir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    second = tracelet.Experiment(writer="process", repo_path="aim")
    second.log_metric("train/loss", 2.0, 0)
    assert second._sink._proc.pid == pid  # no second start, no second aim import
    second.close()
    assert indexed_series(repo_dir / "aim", first.hash)[_key("loss", {"subset": "train"})][:2] == ([0], [1.0])
    assert indexed_series(elsewhere / "aim", second.hash)[_key("loss", {"subset": "train"})][:2] == (
        [0],
        [2.0],
    )
    assert read_run(elsewhere / "aim", second.hash)["status"] == "finished"


@pytest.mark.slow
def test_a_run_that_cannot_be_resumed_leaves_the_writer_usable(repo_dir: Path) -> None:
    with pytest.raises(TraceletError, match="resume run"):
        tracelet.Experiment(writer="process", run_hash="0" * 24).open()
    wait_until(lambda: process._spare is not None, 30, "the writer to be handed back")
    pid = process._spare.proc.pid
    exp = tracelet.Experiment(writer="process")
    exp.log_metric("train/loss", 1.0, 0)
    assert exp._sink._proc.pid == pid
    exp.close()
    assert indexed_series(repo_dir, exp.hash)[_key("loss", {"subset": "train"})][:2] == ([0], [1.0])


SPARE_AT_EXIT = """
import tracelet_callbacks as tracelet
from tracelet_callbacks.sink import process

exp = tracelet.Experiment(writer="process")
exp.log_metric("loss", 1.0, 0)
exp.close()
print(process._spare.proc.pid, flush=True)
"""


@pytest.mark.slow
def test_the_spare_writer_ends_with_the_trainer(repo_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", SPARE_AT_EXIT],
        cwd=repo_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    wait_until(lambda: process_gone(int(done.stdout.split()[-1])), 10, "the spare writer to exit")


@pytest.mark.slow
def test_a_forked_child_leaves_the_parents_spare_writer_alone(repo_dir: Path) -> None:
    from tracelet_callbacks.sink import process

    first = tracelet.Experiment(writer="process")
    first.log_metric("loss", 1.0, 0)
    first.close()
    spare = process._spare.proc.pid
    child = os.fork()
    if child == 0:  # a DataLoader-style fork that logs a run of its own
        code = 1
        try:
            own = tracelet.Experiment(writer="process")
            own.log_metric("loss", 2.0, 0)
            code = 0 if own._sink._proc.pid != spare else 3
            own.close()
        finally:
            os._exit(code)
    assert os.waitpid(child, 0)[1] == 0
    assert process._spare is not None and process._spare.proc.pid == spare and process._spare.usable()
    again = tracelet.Experiment(writer="process")
    again.log_metric("loss", 3.0, 0)
    assert again._sink._proc.pid == spare
    again.close()
    runs = {run.hash for run in open_repo(repo_dir).iter_runs()}
    assert {first.hash, again.hash} <= runs and len(runs) == 3


@pytest.mark.slow
def test_a_writer_that_dies_before_opening_the_run_is_replaced_by_this_process(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracelet_callbacks.sink import process

    doomed = process.Worker()
    os.kill(doomed.proc.pid, signal.SIGSTOP)  # it will take the run's "open" and never answer
    monkeypatch.setattr(process, "_spare", doomed)
    exp = tracelet.Experiment(writer="process", run_name="rescued", tags={"team": "a"})
    exp.open()
    assert exp._sink._proc.pid == doomed.proc.pid
    with pytest.warns(TraceletWarning, match="stopped before opening the run"):
        os.kill(doomed.proc.pid, signal.SIGKILL)
        # the new run's hash is known without the writer, so nothing here waits for it: wait for the
        # trainer to have noticed (its reply pipe ends) before logging
        wait_until(lambda: exp._sink._fallback is not None, 30, "the trainer to take over")
        exp.log_metric("train/loss", 1.0, 0)
        assert exp.hash is not None  # the run this process opened in its place
        exp.close()
    run = read_run(repo_dir, exp.hash)
    assert (run.name, run["tags"], run["status"]) == ("rescued", {"team": "a"}, "finished")
    assert indexed_series(repo_dir, exp.hash)[_key("loss", {"subset": "train"})][:2] == ([0], [1.0])


# -- 12. a pipelined writer acknowledges a batch only once it is committed -------------------------


class CommitGate:
    """Stands between ``ScalarBatcher`` and the RocksDB container it commits to: notes each commit
    (the thread it ran on; the batches committed so far), holds commit ``hold`` until ``release`` is
    set, and makes commit ``fail`` raise ``error`` instead of writing."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        hold: int | None = None,
        fail: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        from tracelet_callbacks.sink import series as batching

        self.hold, self.fail, self.error = hold, fail, error
        self.waiting, self.release = threading.Event(), threading.Event()
        self.threads: list[str] = []
        self.committed: list[int] = []
        flatten = batching._flatten

        def gated(container: Any) -> tuple[Any, bytes]:
            owner, prefix = flatten(container)
            return _GatedContainer(owner, self), prefix

        monkeypatch.setattr(batching, "_flatten", gated)

    def commit(self, owner: Any, batch: Any) -> None:
        number = len(self.threads) + 1
        self.threads.append(threading.current_thread().name)
        if number == self.hold:
            self.waiting.set()
            assert self.release.wait(120), "the test never released the commit"
        if number == self.fail:
            raise self.error  # type: ignore[misc]
        owner.commit(batch)
        self.committed.append(number)


class _GatedContainer:
    def __init__(self, owner: Any, gate: CommitGate) -> None:
        self._owner, self._gate = owner, gate

    def batch(self) -> Any:
        return self._owner.batch()

    def commit(self, batch: Any) -> None:
        self._gate.commit(self._owner, batch)


def steps_of(batch: int, per_batch: int = 50) -> range:
    return range(batch * per_batch, (batch + 1) * per_batch)


def metric_batch(batch: int) -> list:
    """Batch ``batch`` (from 0) of a run: 8 metrics x 50 steps, as the trainer would send it."""
    from tracelet_callbacks.core import records as rec

    context = {"subset": "train"}
    return [
        rec.Scalar(f"m{k}", float(step * 10 + k), step, None, context, 1.0e9 + step)
        for step in steps_of(batch)
        for k in range(8)
    ]


def serve_in_a_thread(sink: AimSink, messages: list, gate: CommitGate) -> tuple[Any, Any, Any]:
    """The writer process's loop (``worker._serve``) on ``sink`` in a thread of this process, its inbox
    already holding ``messages``. Each reply is kept with the commits that had returned when it was
    sent."""
    import queue

    from tracelet_callbacks.sink import worker
    from tracelet_callbacks.sink.watchdog import Watchdog

    inbox: queue.Queue = queue.Queue()
    for message in messages:
        inbox.put(message)
    replies: queue.Queue = queue.Queue()
    watchdog = Watchdog(sink.config.repo_path, on_stall=lambda reason: None).start()
    serving = threading.Thread(
        target=lambda: replies.put(
            ("served", worker._serve(sink, inbox, lambda m: replies.put((m, list(gate.committed))), watchdog))
        ),
        daemon=True,
    )
    serving.start()
    return serving, inbox, replies


def pipelined_sink() -> AimSink:
    from tracelet_callbacks.config import resolve

    sink = AimSink(resolve({"repo_path": os.getcwd()}))
    sink.pipelined = True  # as the writer process sets it
    sink.open()
    return sink


def test_the_writer_acknowledges_a_batch_only_once_its_commit_has_returned(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import series
    from tracelet_callbacks.sink import wire

    gate = CommitGate(monkeypatch, hold=2)
    sink = pipelined_sink()
    entered: list[int] = []
    third = threading.Event()
    submit = sink.submit

    def noting(records: list) -> None:
        entered.append(len(entered) + 1)
        if len(entered) == 3:
            third.set()
        submit(records)

    sink.submit = noting  # type: ignore[method-assign]
    batches = [wire.Batch(seq, wire.pack(metric_batch(seq - 1))) for seq in (1, 2, 3)]
    serving, inbox, replies = serve_in_a_thread(sink, batches, gate)

    try:
        # batch 2's commit runs, and waits, while the writer has gone on to batch 3: a writer that
        # acknowledged a batch once handed to its committer would have told the trainer by now
        assert gate.waiting.wait(60) and third.wait(60)
        sent = []
        while not replies.empty():
            sent.append(replies.get())
        assert [message.seq for message, _ in sent] in ([], [1])  # batch 1 is durable; 2 and 3 are not
        assert gate.committed == [1]
    finally:
        gate.release.set()
    while len(sent) < 3:
        sent.append(replies.get(timeout=60))
    assert [type(message) for message, _ in sent] == [wire.Ack] * 3
    for message, committed in sent:
        assert message.seq in committed, f"batch {message.seq} acknowledged before its commit returned"
        assert (message.failures, message.error) == (0, None)
    # the commits ran beside the writer's main thread, one at a time, in order
    assert gate.committed == [1, 2, 3]
    assert {name.split("_")[0] for name in gate.threads} == {"tracelet-commit"}

    inbox.put(wire.Close(4, "finished"))
    closed, _ = replies.get(timeout=60)
    assert closed == wire.Closed(4, None)
    assert replies.get(timeout=60) == ("served", True)
    serving.join(60)
    for k in range(8):
        assert series(repo_dir, f"m{k}", {"subset": "train"}, sink.hash) == {
            step: float(step * 10 + k) for step in range(150)
        }
    meta = trace_meta(repo_dir, sink.hash)[_key("m7", {"subset": "train"})]
    assert (meta["last_step"], meta["last"], meta["min"], meta["max"]) == (149, 1497.0, 7.0, 1497.0)
    committers = [thread for thread in threading.enumerate() if thread.name.startswith("tracelet-commit")]
    assert not committers  # the committer thread ended with the run


def test_anything_but_numbers_waits_for_the_commit_before_it(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracelet_callbacks.core import records as rec
    from tracelet_callbacks.sink import wire

    gate = CommitGate(monkeypatch, hold=1)
    sink = pipelined_sink()
    reached = threading.Event()  # the writer is about to write the params, or to wait before it
    written: list[tuple[str, list[int]]] = []
    from tracelet_callbacks.sink import run as run_module

    settle, write = sink._settle, run_module.write_record

    def settling() -> None:
        reached.set()
        settle()

    def writing(run: Any, record: Any) -> None:
        written.append((type(record).__name__, list(gate.committed)))
        reached.set()
        write(run, record)

    monkeypatch.setattr(sink, "_settle", settling)
    monkeypatch.setattr(run_module, "write_record", writing)
    messages = [
        wire.Batch(1, wire.pack(metric_batch(0))),
        wire.Batch(2, wire.pack([rec.Params("hparams", {"lr": 0.1})])),
        wire.Get(3, "hparams"),
    ]
    serving, inbox, replies = serve_in_a_thread(sink, messages, gate)
    try:
        assert gate.waiting.wait(60) and reached.wait(60)
    finally:
        gate.release.set()
    answers = [replies.get(timeout=60) for _ in messages]
    assert [(type(m).__name__, m.seq) for m, _ in answers] == [("Ack", 1), ("Ack", 2), ("Reply", 3)]
    assert answers[0][1] == [1] and answers[2][0].value == {"lr": 0.1}
    assert written == [("Params", [1])]  # written once the numbers before it were committed
    inbox.put(wire.Close(4, "finished"))
    assert replies.get(timeout=60)[0] == wire.Closed(4, None)
    serving.join(60)
    assert read_run(repo_dir, sink.hash)["hparams"] == {"lr": 0.1}


def test_a_commit_that_fails_on_a_full_disk_is_reported_with_its_own_batch(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from tracelet_callbacks.sink import wire

    full = OSError(errno.ENOSPC, "No space left on device")
    gate = CommitGate(monkeypatch, fail=2, error=full)
    sink = pipelined_sink()
    batches = [wire.Batch(seq, wire.pack(metric_batch(seq - 1))) for seq in (1, 2, 3, 4)]
    with pytest.warns(TraceletWarning, match="is full.*training goes on"):
        serving, inbox, replies = serve_in_a_thread(sink, batches, gate)
        acks = [replies.get(timeout=60)[0] for _ in batches]
    assert [ack.seq for ack in acks] == [1, 2, 3, 4]
    # the failure rides on batch 2's acknowledgement, once: the batches after it are written
    assert [(ack.failures, ack.error is None) for ack in acks] == [
        (0, True),
        (400, False),
        (400, True),
        (400, True),
    ]
    assert "is full" in str(acks[1].error) and "is full" in sink.last_error
    assert gate.committed == [1, 3, 4]

    inbox.put(wire.Close(5, "finished"))
    closed, _ = replies.get(timeout=60)
    assert closed.seq == 5  # a full disk leaves the run unclosed, as the warning said
    assert replies.get(timeout=60) == ("served", True)
    serving.join(60)
    seen = read_from_another_process(repo_dir, sink.hash)["series"][_key("m0", {"subset": "train"})]
    assert sorted(seen) == [*steps_of(0), *steps_of(2), *steps_of(3)]


def test_a_runs_series_are_written_through_an_appending_memtable_and_read_back_whole(repo_dir: Path) -> None:
    """The series database of a run this process writes takes a vector memtable (a put appends; the
    flush sorts); its meta database, read while the run is written, keeps RocksDB's skip list."""
    from conftest import series

    exp = tracelet.Experiment(writer="sync", buffer_size=1000)
    for step in range(3000):
        exp.log_metric("train/loss", 1.0 / (step + 1), step)
    exp.close()

    def memtable(kind: str) -> str:
        folder = repo_dir / ".aim" / kind / "chunks" / exp.hash
        latest = max(folder.glob("OPTIONS-*"), key=lambda path: int(path.name.split("-")[1]))
        (line,) = [line for line in latest.read_text().splitlines() if "memtable_factory=" in line]
        return line.strip()

    assert "VectorRepFactory" in memtable("seqs") and "SkipListFactory" in memtable("meta")
    assert series(repo_dir, "loss", {"subset": "train"}, exp.hash) == {s: 1.0 / (s + 1) for s in range(3000)}


def test_a_caught_up_writer_puts_a_large_series_memtable_on_disk_before_the_run_closes(
    repo_dir: Path,
) -> None:
    """A flush once the writer has caught up hands a series memtable of IDLE_FLUSH_BYTES or more to
    RocksDB's flush on a thread (the run's close, which the trainer waits for, then has little left to
    sort and write); a smaller one stays in memory. Every value reads back either way."""
    from conftest import series
    from tracelet_callbacks.sink.rocks import IDLE_FLUSH_BYTES

    exp = tracelet.Experiment(writer="sync", buffer_size=1000)
    folder = repo_dir / ".aim" / "seqs" / "chunks" / exp.hash

    def logged(first: int, last: int) -> tuple[list, int]:
        """The series database's files and its memtable's size once ``first``..``last`` are flushed."""
        for step in range(first, last):
            exp.log_metric("train/loss", step * 0.5, step)
        exp.flush()  # caught up: the batcher is told it is idle
        batcher = exp._sink._batcher
        batcher._idle_flush.wait()
        size = batcher._owner._db.get_property(b"rocksdb.cur-size-active-mem-table")
        return list(folder.glob("*.sst")), int(size)

    files, size = logged(0, 2000)
    assert files == [] and 0 < size < IDLE_FLUSH_BYTES  # a small memtable: nothing flushed
    files, size = logged(2000, 80_000)
    assert files and size < IDLE_FLUSH_BYTES  # it had grown to about 14 MB: on disk before the close
    exp.close()
    assert series(repo_dir, "loss", {"subset": "train"}, exp.hash) == {s: s * 0.5 for s in range(80_000)}


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_values_left_on_their_device_are_read_when_their_batch_is_handed_on(
    repo_dir: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the translator leaves on its device (a ``Deferred``) is read back, many at once, when
    its batch goes to the writer; until the first one, batches are handed on without looking. This
    machine has no GPU: a CPU tensor stands in, given to ``Deferred`` as ``to_value`` gives a one-element
    CUDA tensor (tests/test_cuda.py does the same on a GPU)."""
    import torch

    from conftest import series
    from tracelet_callbacks.core import translator as translator_module
    from tracelet_callbacks.core.values import Deferred, to_value

    def on_device(value: Any) -> Any:
        return Deferred(value) if isinstance(value, torch.Tensor) else to_value(value)

    monkeypatch.setattr(translator_module, "to_value", on_device)
    monkeypatch.setattr(process, "_spare", None)  # a new writer: an earlier test's may have imported torch
    exp = tracelet.Experiment(writer=mode, buffer_size=100)
    for step in range(250):
        exp.log_metric("train/loss", float(step), step)
    assert not exp._sink.holds_deferred
    for step in range(250, 500):
        exp.log_metric("train/loss", torch.tensor(step / 2), step)
    assert exp._sink.holds_deferred
    exp.flush()
    if mode == "process":  # only numbers crossed over: the writer never needed torch (nor a GPU)
        maps = Path(f"/proc/{exp._sink._worker.proc.pid}/maps").read_text()
        assert "libtorch" not in maps
    exp.close()
    if (spare := process._spare) is not None:  # this test's writer, kept for a run that will not come
        spare.proc.kill()
        spare.release(wait=10.0)
    expected = {step: float(step) if step < 250 else step / 2 for step in range(500)}
    assert series(repo_dir, "loss", {"subset": "train"}, exp.hash) == expected
