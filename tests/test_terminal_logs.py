"""``capture_terminal_logs=True``: the trainer's stdout / stderr lines reach the run's Logs tab through
whichever writer is in use, in order, redacted, and a slow writer never holds the trainer up."""

from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
from conftest import read_run
from tracelet_callbacks.core import records as rec
from tracelet_callbacks.run import terminal
from tracelet_callbacks.testing import RecordingSink


def _stored_lines(repo: Path, run_hash: str) -> list[str]:
    logs = read_run(repo, run_hash).get_terminal_logs()
    assert logs is not None, "the run has no terminal logs"
    steps, (lines, *_rest) = logs.data.items_list()
    ordered = sorted(zip(steps, lines, strict=True))
    return [line.data if hasattr(line, "data") else str(line) for _, line in ordered]


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["process", "thread"])
def test_printed_lines_reach_the_run_in_order(repo_dir: Path, writer: str) -> None:
    exp = tracelet.Experiment(writer=writer, capture_terminal_logs=True)
    exp.log_metric("loss", 1.0, 0)  # opens the run: the capture starts here
    for number in range(300):
        print(f"epoch 0 batch {number}")
    print("warning from the loop", file=sys.stderr)
    sys.stdout.write("progress 10%\rprogress 50%\rprogress 100%\n")
    print("no newline at the end", end="")
    exp.close()
    lines = _stored_lines(repo_dir, exp.hash)
    assert lines[:300] == [f"epoch 0 batch {number}" for number in range(300)]
    assert lines[300:] == ["warning from the loop", "progress 100%", "no newline at the end"]


@pytest.mark.slow
def test_the_streams_are_given_back_at_close(repo_dir: Path) -> None:
    before = (sys.stdout, sys.stderr)
    exp = tracelet.Experiment(capture_terminal_logs=True, writer="thread")
    exp.log_metric("loss", 1.0, 0)
    assert sys.stdout is not before[0] and sys.stdout.encoding == before[0].encoding
    print("during the run")
    exp.close()
    assert (sys.stdout, sys.stderr) == before
    print("after the run")  # goes nowhere near the closed run
    assert _stored_lines(repo_dir, exp.hash) == ["during the run"]


@pytest.mark.slow
def test_secrets_printed_by_a_script_are_redacted(repo_dir: Path) -> None:
    token = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmNoPqRsT"
    exp = tracelet.Experiment(capture_terminal_logs=True)
    exp.log_metric("loss", 1.0, 0)
    print(f"logging in with HF_TOKEN={token}")
    exp.close()
    stored = "\n".join(_stored_lines(repo_dir, exp.hash))
    assert token not in stored and "logging in with" in stored


@pytest.mark.slow
def test_no_capture_unless_asked(repo_dir: Path) -> None:
    exp = tracelet.Experiment(writer="thread")
    exp.log_metric("loss", 1.0, 0)
    print("not for the run")
    exp.close()
    assert read_run(repo_dir, exp.hash).get_terminal_logs() is None


def test_a_stuck_writer_never_blocks_printing_and_drops_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sink blocks every hand-on until released: the trainer prints on, past the bound."""
    monkeypatch.setattr(terminal, "MAX_PENDING", 50)
    release = threading.Event()

    class StuckSink(RecordingSink):
        def submit(self, records):  # type: ignore[no-untyped-def]
            records = list(records)
            if any(isinstance(r, rec.LogLine) for r in records):
                release.wait(60)
            super().submit(records)

    made: list[StuckSink] = []
    exp = tracelet.Experiment(
        capture_terminal_logs=True, sink_factory=lambda config: made.append(StuckSink(config)) or made[-1]
    )
    exp.log_metric("loss", 1.0, 0)
    for number in range(5_000):  # returns although nothing is being written: the excess is dropped
        print(f"line {number}")
    release.set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.close()
    said = [str(w.message) for w in caught if "terminal output" in str(w.message)]
    assert len(said) == 1
    sink = made[0]
    kept = [r.text for r in sink.of(rec.LogLine)]
    dropped = sink.get("terminal_logs_dropped")
    assert len(kept) + dropped == 5_000 and dropped > 0
    assert kept == sorted(kept, key=lambda text: int(text.split()[1]))  # what was kept stays in order
