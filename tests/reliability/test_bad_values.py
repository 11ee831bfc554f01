"""Values and settings no run can hold: skipped with one warning naming the tag, never a crash in the
training loop, and never a change to what else was logged (issue 14, items 1-5, 8 and 10).

Each case goes through every entry point it applies to (the contract test's four drivers, with a
recording sink), and the cases that hurt aim itself are read back from a real repo.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo, read_run, series  # noqa: E402
from test_contract import ADAPTERS, _points, _recording  # noqa: E402
from tracelet_callbacks import TraceletValueError, TraceletWarning  # noqa: E402
from tracelet_callbacks.core import records as rec  # noqa: E402

TRAIN_LOSS = ("loss", (("subset", "train"),), 3, 0.5)


@pytest.fixture
def sinks() -> list:
    """The recording sinks the entry points open, in order (see ``test_contract._recording``)."""
    return []


def _recorded(**settings: Any) -> tuple[tracelet.Experiment, list]:
    """An experiment over a recording sink, and the list that sink lands in."""
    made: list = []
    exp = tracelet.Experiment(
        sink_factory=lambda config: made.append(tracelet.testing.RecordingSink(config)) or made[-1],
        **settings,
    )
    return exp, made


UNREADABLE = {
    "complex tensor": torch.tensor(1j),
    "int beyond float": 10**400,
    "complex numpy": np.complex64(1j),
    "huge fraction": Fraction(10**400, 3),
}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("bad", list(UNREADABLE))
def test_unreadable_numbers_are_skipped_and_the_rest_is_kept(
    adapter: str, bad: str, repo_dir: Path, sinks: list
) -> None:
    with pytest.warns(TraceletWarning, match="val_loss") as caught:
        ADAPTERS[adapter](
            _recording(repo_dir, sinks), [(3, {"val_loss": UNREADABLE[bad], "train/loss": 0.5})]
        )
    assert _points(sinks[-1]) == [TRAIN_LOSS]  # the rest of the dict is stored
    assert sum("val_loss" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_unreadable_numbers_raise_our_error_with_strict(adapter: str, repo_dir: Path, sinks: list) -> None:
    with pytest.raises(TraceletValueError, match="val_loss"):
        ADAPTERS[adapter](_recording(repo_dir, sinks, strict=True), [(0, {"val_loss": torch.tensor(1j)})])


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_an_empty_tag_is_skipped_in_every_adapter(adapter: str, repo_dir: Path, sinks: list) -> None:
    with pytest.warns(TraceletWarning, match="empty name"):
        ADAPTERS[adapter](_recording(repo_dir, sinks), [(3, {"": 1.0, "train/loss": 0.5})])
    assert _points(sinks[-1]) == [TRAIN_LOSS]
    with pytest.raises(TraceletValueError, match="empty name"):
        ADAPTERS[adapter](_recording(repo_dir, sinks, strict=True), [(0, {"": 1.0})])


BAD_STEPS = {"beyond int64": 2**63, "a string": "7", "nan": float("nan"), "inf": float("inf"), "1.7": 1.7}


@pytest.mark.parametrize("step", list(BAD_STEPS))
def test_a_step_aim_cannot_hold_skips_that_value_with_its_tag_named(step: str) -> None:
    exp, sinks = _recorded()
    with pytest.warns(TraceletWarning, match="'val_loss'") as caught:
        exp.log_metric("val_loss", 0.5, iteration=BAD_STEPS[step])
    assert caught[0].filename == __file__  # said at the caller's line
    exp.log_metric("val_loss", 0.25, iteration=4)
    exp.log_metrics({"train/loss": 0.5}, step=3, epoch=BAD_STEPS[step])  # as an epoch
    exp.close()
    assert sinks[0].series("loss", subset="val") == [(4, 0.25)]
    # an epoch may be fractional (HF's 0.25 a quarter in); the others are skipped as steps are
    expected = [(3, 0.5)] if step == "1.7" else []
    assert sinks[0].series("loss", subset="train") == expected
    with pytest.raises(TraceletValueError, match="step"):
        tracelet.Experiment(strict=True, sink_factory=tracelet.testing.RecordingSink).log_metric(
            "x", 1.0, iteration=BAD_STEPS[step]
        )


def test_whole_float_steps_and_numpy_steps_are_kept() -> None:
    exp, sinks = _recorded()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceletWarning)
        exp.log_metric("a", 1.0, iteration=4.0)
        exp.log_metric("a", 2.0, iteration=np.int64(5))
        exp.log_metric("a", 3.0, iteration=torch.tensor(6))
    exp.close()
    assert sinks[0].series("a") == [(4, 1.0), (5, 2.0), (6, 3.0)]


def test_a_context_holding_an_object_is_skipped_at_the_callers_line() -> None:
    exp, sinks = _recorded()
    with pytest.warns(TraceletWarning, match=r"'loss'.*context value 'model' is an object") as caught:
        exp.log_metric("loss", 1.0, context={"model": object()})
        exp.run.track(1.0, name="loss", context={"model": object()})
    assert len(caught) == 1 and caught[0].filename == __file__
    exp.log_metric("loss", 2.0, context={"fold": 1})
    exp.close()
    assert [r.context for r in sinks[0].scalars()] == [{"fold": 1}]


def test_an_empty_image_is_skipped_before_the_writer() -> None:
    exp, sinks = _recorded()
    translator = exp.translator
    with pytest.warns(TraceletWarning, match=r"'sample'.*needs pixels"):
        translator.image("sample", np.zeros((3, 0, 16)), step=1)
    exp.close()
    assert sinks[0].of(rec.Images) == []


# -- read back from a real repo ----------------------------------------------------------------------


@pytest.mark.slow
def test_in_a_real_repo_bad_tags_steps_and_params_leave_everything_else_intact(repo_dir: Path) -> None:
    exp = tracelet.Experiment(repo_path=str(repo_dir), run_name="odd", system_tracking_interval=None)
    with pytest.warns(TraceletWarning):
        for step in range(10):
            exp.log_metric("a", float(step))  # automatic steps 0..9
            if step == 4:
                exp.log_metric("b", 1.0, iteration=2**63)
                exp.log_metric("", 1.0)
                exp.log_metric("c", torch.tensor(1j))
        exp.log_params({"lr": 0.1, "seed": 2**70, "nested": [2**64, 3]})
    run_hash = exp.hash
    exp.close()
    assert series(repo_dir, "a", {}, run_hash) == {step: float(step) for step in range(10)}
    names = {metric.name for metric in open_repo(repo_dir).query_metrics("run.name == 'odd'").iter()}
    assert names == {"a"}  # queries work: no empty name reached the repo
    run = read_run(repo_dir, run_hash)
    assert run["hparams"] == {"lr": 0.1, "seed": str(2**70), "nested": [str(2**64), 3]}
    assert run.get("status") == "finished"


@pytest.mark.slow
def test_accelerate_keeps_its_hparams_when_one_is_beyond_int64(repo_dir: Path) -> None:
    pytest.importorskip("accelerate")
    from accelerate import Accelerator

    tracker = tracelet.TraceletAimTracker("big", repo_path=str(repo_dir), system_tracking_interval=None)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("big", config={"big": 2**70, "lr": 3e-4})
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert read_run(repo_dir, run_hash)["hparams"] == {"big": str(2**70), "lr": 3e-4}


@pytest.mark.slow
def test_a_failed_write_in_the_writer_does_not_fail_a_later_artifact(repo_dir: Path) -> None:
    exp = tracelet.Experiment(repo_path=str(repo_dir), system_tracking_interval=None)
    # past the translator on purpose: a record aim refuses (an int beyond int64), as a sink sees it
    with pytest.warns(TraceletWarning, match="writing to AIM failed"):
        exp.translator.sink.submit([rec.Params("raw", {"big": 2**70})])
        exp.flush()
    artifact = repo_dir / "notes.txt"
    artifact.write_text("kept")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceletWarning)
        assert exp.log_artifact(artifact) == ["notes.txt"]  # the old failure is not raised again
        exp.log_artifact(artifact, artifact_path="again")
    exp.close()


# -- settings ----------------------------------------------------------------------------------------


def test_flags_in_a_config_dict_are_read_as_the_environment_reads_them() -> None:
    from tracelet_callbacks.config import resolve

    config = resolve(config={"strict": "false", "capture_terminal_logs": "no", "exit_handlers": "0"}, env={})
    assert (config.strict, config.capture_terminal_logs, config.exit_handlers) == (False, False, False)
    assert resolve(config={"strict": "yes"}, env={}).strict is True
    with pytest.raises(ValueError, match="strict"):
        resolve(config={"strict": "maybe"}, env={})


@pytest.mark.parametrize("entry", ["Experiment", "TraceletWriter", "TraceletCallback", "TraceletAimTracker"])
def test_an_artifact_store_aim_cannot_write_fails_at_construction(entry: str, repo_dir: Path) -> None:
    make: Any = getattr(tracelet, entry)
    with pytest.raises(ValueError, match=r"gs://.*file://, s3://"):
        make(artifacts_uri="gs://bucket/runs")


def test_a_link_out_of_a_logged_folder_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    folder = tmp_path / "outputs"
    (folder / "sub").mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "sub" / "key").symlink_to(secret)  # out of the folder: left out
    (folder / "latest.json").symlink_to(folder / "metrics.json")  # inside: kept
    exp, sinks = _recorded()
    with pytest.warns(TraceletWarning, match=r"1 link\(s\).*sub/key") as caught:
        stored = exp.log_artifact(folder)
    assert caught[0].filename == __file__
    assert sorted(stored) == ["outputs/latest.json", "outputs/metrics.json"]
    exp.close()
    assert sorted(record.name for record in sinks[0].of(rec.Artifact)) == sorted(stored)
