"""The contract test (STYLE.md rule 10): the same inputs through every adapter give the same records.

Four entry points feed one translation core: ``TraceletWriter.add_scalar``, Lightning's
``TraceletAimLogger.log_metrics``, Hugging Face's ``TraceletCallback.on_log`` (called directly with real
``TrainingArguments`` / ``TrainerState`` / ``TrainerControl``, no ``Trainer``) and Accelerate's
``TraceletAimTracker.log``. Each is driven with the same ``{tag: value}`` batches at the same steps;
the ``(metric name, context, step, value)`` they produce must be identical:

* through a :class:`~tracelet_callbacks.testing.RecordingSink` handed to each entry point as its
  ``sink_factory=`` (the seam every entry point takes, no monkeypatching), and
* through a real AIM repo, read back with aim's public API.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("tensorboard")

from transformers import TrainerControl, TrainerState, TrainingArguments  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo  # noqa: E402
from tracelet_callbacks import (  # noqa: E402
    TraceletAimLogger,
    TraceletAimTracker,
    TraceletCallback,
    TraceletValueError,
    TraceletWarning,
    TraceletWriter,
)
from tracelet_callbacks.testing import RecordingSink  # noqa: E402

TRAIN, VAL, TEST = {"subset": "train"}, {"subset": "val"}, {"subset": "test"}

#: tag -> the (metric name, context) every adapter must put it in.
EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "train/loss": ("loss", TRAIN),
    "val_loss": ("loss", VAL),
    "eval_loss": ("loss", VAL),  # Hugging Face's spelling, the same series in every framework
    "test/acc": ("acc", TEST),
    "val/acc": ("acc", VAL),
    "validation/f1": ("f1", VAL),
    "test_acc": ("acc", TEST),
    "train/loss/total": ("loss/total", TRAIN),
    "loss_step": ("loss", {"granularity": "step"}),
    "val_loss_epoch/dataloader_idx_1": ("loss", {"subset": "val", "granularity": "epoch", "dataloader": 1}),
}

#: The same batches for every adapter: ``(step, {tag: value})``, values of the kinds loops log.
BATCHES: list[tuple[int, dict[str, Any]]] = [
    (0, {"train/loss": 1.0, "test/acc": np.float32(0.5), "loss_step": torch.tensor(2.0)}),
    (1, {"train/loss": torch.tensor(0.75), "val_loss": 0.5, "train/loss/total": 3, "val/acc": 0.25}),
    (2, {"eval_loss": np.float64(0.125), "validation/f1": torch.tensor([0.5]), "test_acc": True}),
    (3, {"val_loss_epoch/dataloader_idx_1": 4.5, "train/loss": float("nan")}),
]

#: Values no adapter may store, nor raise on (outside ``strict=True``).
BAD = {"val_loss": None, "train/acc": torch.ones(3), "test/note": "not a number", "test/acc": 0.5}

Point = tuple[str, tuple[tuple[str, Any], ...], int | None, float]


# -- the four adapters, driven the way their frameworks drive them -----------------------------------


def _writer(settings: dict[str, Any], batches: list[tuple[int, dict[str, Any]]]) -> str | None:
    with TraceletWriter(tensorboard=False, config=settings) as writer:
        for step, values in batches:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
        return writer.experiment.hash


def _lightning(settings: dict[str, Any], batches: list[tuple[int, dict[str, Any]]]) -> str | None:
    logger = TraceletAimLogger(**settings)
    try:
        for step, values in batches:
            logger.log_metrics(values, step)
    except BaseException:
        logger.finalize("failed")
        raise
    logger.finalize("success")
    return logger.version


def _hf(settings: dict[str, Any], batches: list[tuple[int, dict[str, Any]]]) -> str | None:
    # run_name set: TrainingArguments would otherwise name it after its output folder, in run params only
    args = TrainingArguments(output_dir="hf-out", report_to="none", use_cpu=True, run_name="contract")
    state, control = TrainerState(), TrainerControl()
    callback = TraceletCallback(**settings)
    callback.on_init_end(args, state, control)
    try:
        for step, values in batches:
            state.global_step, state.epoch = step, step / 4
            callback.on_log(args, state, control, logs=dict(values))
    finally:
        run_hash = callback.run_hash
        callback.close()
    return run_hash


def _accelerate(settings: dict[str, Any], batches: list[tuple[int, dict[str, Any]]]) -> str | None:
    tracker = TraceletAimTracker(**settings)
    tracker.start()
    try:
        for step, values in batches:
            tracker.log(values, step=step)
    finally:
        run_hash = tracker.tracker.hash
        tracker.finish()
    return run_hash


ADAPTERS: dict[str, Callable[[dict[str, Any], list[tuple[int, dict[str, Any]]]], str | None]] = {
    "writer": _writer,
    "lightning": _lightning,
    "hf": _hf,
    "accelerate": _accelerate,
}


# -- the recording seam ------------------------------------------------------------------------------


@pytest.fixture
def sinks(repo_dir: Path) -> Iterator[list[RecordingSink]]:
    """Every sink an entry point opens during the test, in order; no AIM repo is touched."""
    yield []
    assert not (repo_dir / "aim" / ".aim").exists()  # the seam held: nothing reached aim


def _recording(repo_dir: Path, sinks: list[RecordingSink], **extra: Any) -> dict[str, Any]:
    """Settings whose ``sink_factory`` records into ``sinks`` (the seam every entry point takes)."""

    def factory(config: Any) -> RecordingSink:
        sinks.append(RecordingSink(config))
        return sinks[-1]

    return _settings(repo_dir, sink_factory=factory, **extra)


def _settings(repo_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"repo_path": str(repo_dir / "aim"), "system_tracking_interval": None, **extra}


def _points(sink: RecordingSink) -> list[Point]:
    found = [(r.name, tuple(sorted(r.context.items())), r.step, float(r.value)) for r in sink.scalars()]
    return sorted(found, key=repr)


def _expected_points() -> list[Point]:
    points = []
    for step, values in BATCHES:
        for tag, value in values.items():
            name, context = EXPECTED[tag]
            number = float(value.item()) if hasattr(value, "item") else float(value)
            points.append((name, tuple(sorted(context.items())), step, number))
    return sorted(points, key=repr)


def _same(left: list[Point], right: list[Point]) -> bool:
    """Equal, NaN included (NaN is a value we keep, and NaN != NaN)."""
    return len(left) == len(right) and all(
        a[:3] == b[:3] and (a[3] == b[3] or (a[3] != a[3] and b[3] != b[3]))
        for a, b in zip(left, right, strict=True)
    )


def _one_sink(sinks: list[RecordingSink], adapter: str) -> RecordingSink:
    assert len(sinks) == 1, f"{adapter} opened {len(sinks)} runs for one job"
    return sinks[0]


# -- 1. through a recording sink ---------------------------------------------------------------------


def test_every_tag_routes_as_the_table_says() -> None:
    """The table itself, so a failure below points at an adapter, not at routing."""
    from tracelet_callbacks.core.routing import route

    for tag, (name, context) in EXPECTED.items():
        found = route(tag)
        assert (found.name, found.context) == (name, context), tag


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_each_adapter_gives_the_tables_series_at_the_given_steps(
    adapter: str, repo_dir: Path, sinks: list[RecordingSink]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceletWarning)  # a clean batch must not warn
        ADAPTERS[adapter](_recording(repo_dir, sinks), BATCHES)
    sink = _one_sink(sinks, adapter)
    assert _same(_points(sink), _expected_points()), (adapter, _points(sink))
    assert sink.closed_with == "finished"


def test_all_adapters_give_identical_records(repo_dir: Path, sinks: list[RecordingSink]) -> None:
    """Side by side: the four lists of (name, context, step, value) are one list."""
    produced = {}
    for adapter, drive in ADAPTERS.items():
        before = len(sinks)
        drive(_recording(repo_dir, sinks), BATCHES)
        assert len(sinks) == before + 1, f"{adapter} opened {len(sinks) - before} runs"
        produced[adapter] = _points(sinks[-1])
    reference = produced["writer"]
    for adapter, points in produced.items():
        assert _same(points, reference), (adapter, points, reference)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_values_no_adapter_can_store_are_skipped_with_a_warning(
    adapter: str, repo_dir: Path, sinks: list[RecordingSink]
) -> None:
    with pytest.warns(TraceletWarning) as caught:
        ADAPTERS[adapter](_recording(repo_dir, sinks), [(5, dict(BAD))])
    sink = _one_sink(sinks, adapter)
    assert _points(sink) == [("acc", (("subset", "test"),), 5, 0.5)]
    messages = " ".join(str(w.message) for w in caught)
    for tag in ("val_loss", "train/acc"):
        assert repr(tag) in messages, (adapter, messages)
    assert sink.closed_with == "finished"


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_strict_raises_the_same_error_in_every_adapter(
    adapter: str, repo_dir: Path, sinks: list[RecordingSink]
) -> None:
    with pytest.raises(TraceletValueError, match="val_loss"):
        ADAPTERS[adapter](_recording(repo_dir, sinks, strict=True), [(0, {"val_loss": None})])


def test_an_epoch_key_means_the_same_in_every_framework_adapter(
    repo_dir: Path, sinks: list[RecordingSink]
) -> None:
    # Lightning, HF and Accelerate hand over a metrics dict in which `epoch` is the trainer's epoch:
    # it becomes AIM's epoch, never a series. (TensorBoard's add_scalar("epoch", ...) is a chart the
    # user asked for, so the writer keeps it as a series.)
    produced = {}
    for adapter, drive in ADAPTERS.items():
        if adapter == "writer":
            continue
        drive(_recording(repo_dir, sinks), [(7, {"train/loss": 0.5, "epoch": 2})])
        produced[adapter] = sorted((name, context) for name, context, _s, _v in _points(sinks[-1]))
    assert produced["lightning"] == [("loss", (("subset", "train"),))], produced
    assert all(points == produced["lightning"] for points in produced.values()), produced


# -- 2. through a real AIM repo ----------------------------------------------------------------------


def _read_back(repo: Path, run_hash: str) -> list[Point]:
    """Every metric point of one run, through aim's public API."""
    run = open_repo(repo).get_run(run_hash)
    points = []
    for metric in run.metrics():
        if metric.name.startswith("__system__"):
            continue
        context = tuple(sorted(metric.context.to_dict().items()))
        steps, (values, *_rest) = metric.data.items_list()
        points += [(metric.name, context, int(s), float(v)) for s, v in zip(steps, values, strict=True)]
    return sorted(points, key=repr)


@pytest.mark.slow
def test_real_aim_round_trip_gives_the_same_series_for_every_adapter(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    hashes = {}
    for index, (adapter, drive) in enumerate(ADAPTERS.items()):
        # a distinct experiment per adapter: the runs are told apart by it, not by order
        hashes[adapter] = drive(_settings(repo_dir, experiment_name=f"contract-{index}"), BATCHES)
    runs = {run.hash: run for run in open_repo(repo).iter_runs()}
    assert sorted(runs) == sorted(hashes.values()), "one run per adapter, none left out, none extra"
    expected = _expected_points()
    for adapter, run_hash in hashes.items():
        assert runs[run_hash]["status"] == "finished", adapter
        assert runs[run_hash].active is False, adapter
        assert _same(_read_back(repo, run_hash), expected), (adapter, _read_back(repo, run_hash))


def test_the_public_names_are_the_adapters_tested_here() -> None:
    assert tracelet.TraceletWriter is TraceletWriter
    assert tracelet.TraceletAimLogger is TraceletAimLogger
    assert tracelet.TraceletCallback is TraceletCallback
    assert tracelet.TraceletAimTracker is TraceletAimTracker
