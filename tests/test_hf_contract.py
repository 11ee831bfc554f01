"""Transformers' own callback tests, run with ``TraceletCallback`` in the trainer's callbacks.

Adapted from transformers' ``tests/trainer/test_trainer_callback.py`` (Apache-2.0, Copyright 2020 The
HuggingFace Team; read at commit 020a37d, the stored version nearest the installed release 5.25: it
tests the ``KubeflowCallback`` that 5.25 ships, which the 4.x file predates). The original trains a
``RegressionPreTrainedModel`` on a ``RegressionDataset`` (its ``trainer_test_utils``); both are written
again below, built from a config, nothing downloaded. Every trainer here carries our callback beside the
original's, writes a real AIM repo in the test's ``repo_dir``, and where the original asserts what the
trainer did, we also read back through aim's public API what reached the run. Every change from the
original is marked ``ADAPTED:`` with its reason. The 4.x file's tests (``test_init_callback``,
``test_add_remove_callback``, ``test_event_flow``, ``test_stateful_callbacks``,
``test_stateful_mixed_callbacks``, ``test_stateful_duplicate_callbacks``,
``test_missing_stateful_callback``, ``test_stateful_control``) are the same checks, split in the newer
file into the tests below. Tests of the newer file that cannot apply to us, and why:

* ``TrainerStateTest`` (``test_save_and_load_json``, ``test_log_history_initialized``,
  ``test_stateful_callbacks_initialized``, ``test_compute_steps_from_proportion``,
  ``test_compute_steps_from_integers``), ``TrainerControlTest`` (all five), ``EarlyStoppingCallbackTest``
  (all four) and ``ExportableStateTest`` (both): unit tests of HF's own dataclasses and of
  ``EarlyStoppingCallback``'s arithmetic on objects built by hand, with no callback list and no
  ``Trainer``, so there is nowhere to put ours. What a third callback could break there is asserted at
  the trainer level instead: ``stateful_callbacks`` in the saved ``trainer_state.json`` and the restored
  patience (``test_early_stopping_state_persists``), the restored control
  (``test_trainer_control_state_persists``). ``TraceletCallback`` is not an ``ExportableState``, so
  none of these has a state of ours to save or restore: which run wrote a checkpoint travels in the
  checkpoint's ``tracelet-run.json`` (``run/resume.py``), and its settings stay those of the process
  that resumes.
* ``SwanLabCallbackTest`` and ``KubeflowCallbackTest``: other vendors' callbacks against mocked clients.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest

from conftest import open_repo, read_run, series

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    DefaultFlowCallback,
    EarlyStoppingCallback,
    IntervalStrategy,
    PreTrainedConfig,
    PreTrainedModel,
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)
from transformers.integrations.integration_utils import get_reporting_integration_callbacks  # noqa: E402
from transformers.trainer import DEFAULT_CALLBACKS, TRAINER_STATE_NAME  # noqa: E402
from transformers.trainer_callback import CallbackHandler, ExportableState, TrainerControl  # noqa: E402

from tracelet_callbacks import TraceletCallback  # noqa: E402

pytestmark = pytest.mark.slow

TRAIN, VAL = {"subset": "train"}, {"subset": "val"}


# -- trainer_test_utils, written again ----------------------------------------------------------------


class RegressionDataset:
    """``y = a * x + b`` plus noise (HF's ``RegressionDataset``)."""

    def __init__(self, a: float = 2, b: float = 3, length: int = 64, seed: int = 42) -> None:
        # ADAPTED: a generator of its own instead of np.random.seed, which reseeds the whole process;
        # one label column (the original's label_names serve tests of other files)
        generator = np.random.default_rng(seed)
        self.x = generator.normal(size=(length,)).astype(np.float32)
        self.y = (a * self.x + b + generator.normal(scale=0.1, size=(length,))).astype(np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_x": self.x[index], "labels": self.y[index]}


class RegressionModelConfig(PreTrainedConfig):
    def __init__(self, a: float = 0, b: float = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a, self.b = a, b
        self.hidden_size = 1


class RegressionPreTrainedModel(PreTrainedModel):
    """Two scalar parameters, saved and loaded like any pretrained model (checkpoints, best model)."""

    config_class = RegressionModelConfig
    base_model_prefix = "regression"

    def __init__(self, config: RegressionModelConfig) -> None:
        super().__init__(config)
        self.a = nn.Parameter(torch.as_tensor(config.a).float())
        self.b = nn.Parameter(torch.as_tensor(config.b).float())
        self.post_init()

    def forward(self, input_x: Any, labels: Any = None, **kwargs: Any) -> Any:
        y = input_x * self.a + self.b
        if labels is None:
            return (y,)
        return (nn.functional.mse_loss(y, labels), y)


# -- the original's test callbacks ----------------------------------------------------------------------


def _recording(event: str) -> Any:
    def hook(self: EventRecorderCallback, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.events.append(event)

    hook.__name__ = event
    return hook


class EventRecorderCallback(TrainerCallback):
    """Records every event it receives, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    # ADAPTED: each recording method built from its event's name instead of sixteen written out
    on_init_end = _recording("on_init_end")
    on_train_begin = _recording("on_train_begin")
    on_train_end = _recording("on_train_end")
    on_epoch_begin = _recording("on_epoch_begin")
    on_epoch_end = _recording("on_epoch_end")
    on_step_begin = _recording("on_step_begin")
    on_pre_optimizer_step = _recording("on_pre_optimizer_step")
    on_optimizer_step = _recording("on_optimizer_step")
    on_substep_end = _recording("on_substep_end")
    on_step_end = _recording("on_step_end")
    on_evaluate = _recording("on_evaluate")
    on_predict = _recording("on_predict")
    on_save = _recording("on_save")
    on_log = _recording("on_log")
    on_prediction_step = _recording("on_prediction_step")
    on_push_begin = _recording("on_push_begin")


class StatefulTestCallback(TrainerCallback, ExportableState):
    def __init__(self, my_value: str = "default") -> None:
        self.my_value = my_value

    def state(self) -> dict[str, Any]:
        return {"args": {"my_value": self.my_value}, "attributes": {}}


class StopTrainingCallback(TrainerCallback):
    def __init__(self, stop_after_steps: int = 1) -> None:
        self.stop_after_steps = stop_after_steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.stop_after_steps:
            control.should_training_stop = True
        return control


class ModifyControlCallback(TrainerCallback):
    def __init__(self) -> None:
        self.control_modifications: list[dict[str, Any]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.control_modifications.append(
            {
                "step": state.global_step,
                "should_log": control.should_log,
                "should_save": control.should_save,
                "should_evaluate": control.should_evaluate,
            }
        )
        return control


class ForceFlagsCallback(TrainerCallback):
    """ADAPTED: sets log / evaluate / save at one step when every strategy is "no", so that what those
    flags make the trainer do has to come through the callback list ours sits in."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step == self.at_step:
            control.should_log = control.should_evaluate = control.should_save = True
        return control


def get_callback_names(callbacks: Any) -> list[str]:
    return sorted(cb.__name__ if isinstance(cb, type) else type(cb).__name__ for cb in callbacks)


# -- helpers ------------------------------------------------------------------------------------------


def _create_trainer(
    repo_dir: Path,
    callbacks: Any = (TraceletCallback,),
    train_len: int = 64,
    eval_len: int = 64,
    **kwargs: Any,
) -> Trainer:
    """HF's ``_create_trainer``; ADAPTED: our callback is the default ``callbacks`` (by class, as HF
    passes its recorder: built with no argument it writes the AIM repo in the working folder, which is
    ``repo_dir``), output under ``repo_dir``, CPU, no other integration, no progress bar by default."""
    settings: dict[str, Any] = {"use_cpu": True, "report_to": [], "disable_tqdm": True}
    settings.update(kwargs)
    args = TrainingArguments(str(repo_dir / "out"), **settings)
    return Trainer(
        RegressionPreTrainedModel(RegressionModelConfig(a=0, b=0)),
        args,
        train_dataset=RegressionDataset(length=train_len),
        eval_dataset=RegressionDataset(length=eval_len),
        callbacks=list(callbacks),
    )


def _get_callback(trainer: Trainer, callback_class: type) -> Any:
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, callback_class):
            return cb
    return None


def _by_step(history: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in history if key in entry}


def _run_hashes(repo_dir: Path) -> list[str]:
    if not (repo_dir / ".aim").exists():
        return []
    return [run.hash for run in open_repo(repo_dir).iter_runs()]


def _assert_run_matches_history(repo_dir: Path, trainer: Trainer) -> None:
    """ADAPTED: what ``Trainer`` logged (its ``log_history``) is what our run holds, in a closed run."""
    run_hash = _get_callback(trainer, TraceletCallback).run_hash
    history = trainer.state.log_history
    assert series(repo_dir, "loss", TRAIN, run_hash) == pytest.approx(_by_step(history, "loss"))
    assert series(repo_dir, "loss", VAL, run_hash) == pytest.approx(_by_step(history, "eval_loss"))
    run = read_run(repo_dir, run_hash)
    assert run["status"] == "finished"
    assert run["summary"]["global_step"] == trainer.state.global_step


# -- TrainerCallbackTest: registration ------------------------------------------------------------------


@pytest.mark.parametrize("report_to", ["none", [], "tensorboard", "all"])
def test_default_callbacks_are_present(repo_dir: Path, report_to: Any) -> None:
    """Defaults plus ProgressCallback, plus ours. ADAPTED: parametrized over ``report_to`` (the original's
    trainer reports to nothing: ``report_to=[]`` in the 4.x file, 5.x's default ``"none"``): ours is
    independent of it and sits beside whatever integrations it adds."""
    if report_to == "tensorboard":
        pytest.importorskip("tensorboard")
    trainer = _create_trainer(repo_dir, disable_tqdm=False, report_to=report_to)

    integrations = get_reporting_integration_callbacks(report_to)
    expected = get_callback_names(DEFAULT_CALLBACKS + integrations + [ProgressCallback, TraceletCallback])
    assert get_callback_names(trainer.callback_handler.callbacks) == expected


def test_custom_callback_added_at_init(repo_dir: Path) -> None:
    trainer = _create_trainer(
        repo_dir, callbacks=[EventRecorderCallback, TraceletCallback], disable_tqdm=False
    )

    expected = get_callback_names(
        [*DEFAULT_CALLBACKS, ProgressCallback, EventRecorderCallback, TraceletCallback]
    )
    assert get_callback_names(trainer.callback_handler.callbacks) == expected
    # ADAPTED: both were built and told on_init_end; nothing is written before the first use
    assert _get_callback(trainer, EventRecorderCallback).events == ["on_init_end"]
    assert _run_hashes(repo_dir) == []


def test_printer_callback_when_tqdm_disabled(repo_dir: Path) -> None:
    trainer = _create_trainer(repo_dir, disable_tqdm=True)

    expected = get_callback_names([*DEFAULT_CALLBACKS, PrinterCallback, TraceletCallback])
    assert get_callback_names(trainer.callback_handler.callbacks) == expected


def test_add_callback_by_class(repo_dir: Path) -> None:
    """ADAPTED: the class added is ours, to a trainer built without it, and the trainer then trains: a
    callback added after ``Trainer(...)`` never gets ``on_init_end``, and must record all the same."""
    trainer = _create_trainer(repo_dir, callbacks=[], max_steps=2, logging_steps=1)
    initial_count = len(trainer.callback_handler.callbacks)

    trainer.add_callback(TraceletCallback)

    assert len(trainer.callback_handler.callbacks) == initial_count + 1
    ours = _get_callback(trainer, TraceletCallback)
    assert ours is not None
    trainer.train()
    assert _run_hashes(repo_dir) == [ours.run_hash]
    assert sorted(series(repo_dir, "loss", TRAIN, ours.run_hash)) == [1, 2]


def test_add_callback_by_instance(repo_dir: Path) -> None:
    trainer = _create_trainer(repo_dir, callbacks=[], max_steps=2, logging_steps=1)
    # ADAPTED: the instance added is ours, with settings of its own, and the trainer then trains
    callback = TraceletCallback(repo_path=str(repo_dir), run_name="added")

    trainer.add_callback(callback)

    assert callback in trainer.callback_handler.callbacks
    trainer.train()
    run = read_run(repo_dir, callback.run_hash)
    assert run.name == "added" and run["status"] == "finished"
    assert sorted(series(repo_dir, "loss", TRAIN, callback.run_hash)) == [1, 2]


def test_remove_callback_by_class(repo_dir: Path) -> None:
    trainer = _create_trainer(repo_dir, max_steps=2, logging_steps=1)
    assert _get_callback(trainer, DefaultFlowCallback) is not None

    trainer.remove_callback(DefaultFlowCallback)

    assert _get_callback(trainer, DefaultFlowCallback) is None
    # ADAPTED: ours removed by class too; the trainer trains and nothing reaches the AIM repo
    trainer.remove_callback(TraceletCallback)
    assert _get_callback(trainer, TraceletCallback) is None
    trainer.add_callback(DefaultFlowCallback)  # back, so the loop logs and stops as usual
    trainer.train()
    assert trainer.state.global_step == 2
    assert _run_hashes(repo_dir) == []


def test_remove_callback_by_instance(repo_dir: Path) -> None:
    trainer = _create_trainer(repo_dir, max_steps=2, logging_steps=1)
    # ADAPTED: the instance removed is ours (the original removes callbacks[0], DefaultFlowCallback)
    callback = _get_callback(trainer, TraceletCallback)

    trainer.remove_callback(callback)

    assert callback not in trainer.callback_handler.callbacks
    trainer.train()
    assert _run_hashes(repo_dir) == []


def test_pop_callback_returns_instance(repo_dir: Path) -> None:
    trainer = _create_trainer(repo_dir, max_steps=2, logging_steps=1)
    original_callback = _get_callback(trainer, TraceletCallback)  # ADAPTED: ours, not DefaultFlowCallback

    popped = trainer.pop_callback(TraceletCallback)

    assert popped is original_callback
    assert _get_callback(trainer, TraceletCallback) is None
    # ADAPTED: put back, as the 4.x version of this test does (``trainer.add_callback(cb1)``), it records
    trainer.add_callback(popped)
    trainer.train()
    assert _run_hashes(repo_dir) == [popped.run_hash]
    assert sorted(series(repo_dir, "loss", TRAIN, popped.run_hash)) == [1, 2]


def test_duplicate_callback_warning(repo_dir: Path) -> None:
    # ADAPTED: ours twice instead of the recorder twice
    with patch("transformers.trainer_callback.logger.warning") as warn_mock:
        _create_trainer(repo_dir, callbacks=[TraceletCallback, TraceletCallback])

    assert warn_mock.called
    assert "TraceletCallback" in warn_mock.call_args[0][0]


# -- TrainerCallbackTest: event flow --------------------------------------------------------------------


def _get_expected_events(trainer: Trainer) -> list[str]:
    """The exact sequence HF's loop produces for these arguments (the original's computation)."""
    expected_events = ["on_init_end", "on_train_begin"]
    step = 0
    train_dl_len = len(trainer.get_eval_dataloader())  # as the original: both datasets are 64 long
    eval_batches = len(trainer.get_eval_dataloader())
    evaluation_events = ["on_prediction_step"] * eval_batches + ["on_log", "on_evaluate"]
    for _ in range(trainer.state.num_train_epochs):
        expected_events.append("on_epoch_begin")
        for _ in range(train_dl_len):
            step += 1
            expected_events += ["on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"]
            if step % trainer.args.logging_steps == 0:
                expected_events.append("on_log")
            if trainer.args.eval_strategy == IntervalStrategy.STEPS and step % trainer.args.eval_steps == 0:
                expected_events += evaluation_events
            # the end-of-training evaluation, unless the last step was an evaluation step already
            if (
                step == trainer.state.max_steps
                and trainer.args.eval_strategy == IntervalStrategy.STEPS
                and step % trainer.args.eval_steps != 0
                and trainer.args.eval_delay <= step
            ):
                expected_events += evaluation_events
            if step % trainer.args.save_steps == 0 or step == trainer.state.max_steps:
                expected_events.append("on_save")
        expected_events.append("on_epoch_end")
        if trainer.args.eval_strategy == IntervalStrategy.EPOCH:
            expected_events += evaluation_events
    expected_events += ["on_log", "on_train_end"]
    return expected_events


EVENT_FLOW_CONFIGURATIONS = {
    "default": {},
    "logging_steps": {"logging_steps": 5},
    "save_steps": {"save_steps": 5},
    "eval_steps": {"eval_steps": 5, "eval_strategy": "steps"},
    "eval_epoch": {"eval_strategy": "epoch"},
    "a_bit_of_everything": {"logging_steps": 3, "save_steps": 10, "eval_steps": 5, "eval_strategy": "steps"},
}


# ADAPTED: one test per configuration of the original's test_event_flow (each its own AIM repo), with
# ours *before* the recorder so that every event reaches ours first
@pytest.mark.parametrize("settings", EVENT_FLOW_CONFIGURATIONS.values(), ids=EVENT_FLOW_CONFIGURATIONS)
def test_event_flow(repo_dir: Path, settings: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(action="ignore", category=UserWarning)
        trainer = _create_trainer(repo_dir, callbacks=[TraceletCallback, EventRecorderCallback], **settings)
        trainer.train()

    events = _get_callback(trainer, EventRecorderCallback).events
    assert events == _get_expected_events(trainer)
    # ADAPTED: and ours recorded each of those logs in one closed run
    assert _run_hashes(repo_dir) == [_get_callback(trainer, TraceletCallback).run_hash]
    _assert_run_matches_history(repo_dir, trainer)


def test_event_flow_is_the_same_without_ours(repo_dir: Path) -> None:
    """ADAPTED: the original's last configuration trained twice, without ours and with ours *after* the
    recorder (the parametrized test above puts it before): the recorder sees the same sequence."""
    settings = EVENT_FLOW_CONFIGURATIONS["a_bit_of_everything"]
    seen = []
    for callbacks in ([EventRecorderCallback], [EventRecorderCallback, TraceletCallback]):
        with warnings.catch_warnings():
            warnings.simplefilter(action="ignore", category=UserWarning)
            trainer = _create_trainer(repo_dir, callbacks=callbacks, **settings)
            trainer.train()
        seen.append(_get_callback(trainer, EventRecorderCallback).events)

    assert seen[0] == seen[1] == _get_expected_events(trainer)
    _assert_run_matches_history(repo_dir, trainer)


def test_on_push_begin_event(repo_dir: Path) -> None:
    # ADAPTED: ours in the list, before the recorder: an event it does not handle passes through it
    trainer = _create_trainer(repo_dir, callbacks=[TraceletCallback, EventRecorderCallback], max_steps=1)
    trainer.train()

    callback = _get_callback(trainer, EventRecorderCallback)
    initial_count = len(callback.events)

    trainer.callback_handler.on_push_begin(trainer.args, trainer.state, trainer.control)

    assert "on_push_begin" in callback.events
    assert callback.events.count("on_push_begin") == 1
    assert len(callback.events) == initial_count + 1


def test_no_duplicate_save_on_epoch_strategy(repo_dir: Path) -> None:
    save_count = 0

    class SaveCounterCallback(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            nonlocal save_count
            if control.should_save:
                save_count += 1

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            nonlocal save_count
            if control.should_save:
                save_count += 1

    trainer = _create_trainer(
        repo_dir,
        callbacks=[TraceletCallback, SaveCounterCallback()],  # ADAPTED: ours too
        max_steps=2,
        save_strategy="epoch",
    )
    trainer.train()

    assert save_count == 1
    # ADAPTED: ours saw that one save: one checkpoint in the run, and the folder names its run
    run_hash = _get_callback(trainer, TraceletCallback).run_hash
    checkpoints = read_run(repo_dir, run_hash)["checkpoints"]
    assert list(checkpoints["saved"]) == ["checkpoint-2"]
    identity = json.loads((repo_dir / "out" / "checkpoint-2" / "tracelet-run.json").read_text())
    assert identity["run_hash"] == run_hash and identity["step"] == 2


# -- TrainerCallbackTest: control flow ------------------------------------------------------------------


def test_callback_can_stop_training(repo_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(action="ignore", category=UserWarning)
        trainer = _create_trainer(
            repo_dir,
            # ADAPTED: ours first, so should_training_stop is set after ours has seen the step
            callbacks=[TraceletCallback, StopTrainingCallback(stop_after_steps=1)],
            max_steps=10,
            logging_steps=1,
            save_strategy="no",
        )
        trainer.train()

    # Training should have stopped after 1 step, not 10
    assert trainer.state.global_step == 1
    # ADAPTED: the run holds that one step, and was closed as finished (a stop is not a failure)
    run_hash = _get_callback(trainer, TraceletCallback).run_hash
    assert list(series(repo_dir, "loss", TRAIN, run_hash)) == [1]
    assert read_run(repo_dir, run_hash)["status"] == "finished"


def test_callback_receives_control_flags(repo_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(action="ignore", category=UserWarning)
        callback = ModifyControlCallback()
        trainer = _create_trainer(
            repo_dir,
            callbacks=[TraceletCallback, callback],  # ADAPTED: ours before the one that reads the flags
            max_steps=2,
            logging_steps=1,
            save_strategy="no",
        )
        trainer.train()

    assert len(callback.control_modifications) == 2
    # ADAPTED: the flags DefaultFlowCallback set are intact after ours: log each step, save and
    # evaluate never
    assert [
        (m["step"], m["should_log"], m["should_save"], m["should_evaluate"])
        for m in callback.control_modifications
    ] == [(1, True, False, False), (2, True, False, False)]


def test_flags_set_by_another_callback_reach_the_trainer(repo_dir: Path) -> None:
    """ADAPTED from ``test_callback_receives_control_flags``: the flags are *set* by a callback listed
    after ours, with every strategy "no", so the log, evaluation and save at step 2 happen only because
    they came through the list; ours records what they made the trainer do."""
    recorder = ModifyControlCallback()
    trainer = _create_trainer(
        repo_dir,
        callbacks=[TraceletCallback, ForceFlagsCallback(at_step=2), recorder],
        max_steps=3,
        logging_strategy="no",
        eval_strategy="no",
        save_strategy="no",
    )
    trainer.train()

    assert [m["step"] for m in recorder.control_modifications if m["should_log"]] == [2]
    assert [m["step"] for m in recorder.control_modifications if m["should_evaluate"]] == [2]
    assert [m["step"] for m in recorder.control_modifications if m["should_save"]] == [2]
    assert (repo_dir / "out" / "checkpoint-2").is_dir()
    run_hash = _get_callback(trainer, TraceletCallback).run_hash
    assert list(series(repo_dir, "loss", TRAIN, run_hash)) == [2]
    assert list(series(repo_dir, "loss", VAL, run_hash)) == [2]
    assert list(read_run(repo_dir, run_hash)["checkpoints"]["saved"]) == ["checkpoint-2"]


# -- StatefulCallbackTest -------------------------------------------------------------------------------

STATEFUL = {
    "load_best_model_at_end": True,
    "save_strategy": "steps",
    "eval_strategy": "steps",
    "save_steps": 2,
    "eval_steps": 2,
    "max_steps": 2,
}


def test_early_stopping_state_persists(repo_dir: Path) -> None:
    cb = EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.2)
    first = TraceletCallback(repo_path=str(repo_dir))  # ADAPTED: ours in both trainers
    trainer = _create_trainer(repo_dir, callbacks=[cb, first], **STATEFUL)
    trainer.train()

    # ADAPTED: what the checkpoint stores for callbacks is HF's own (ours is not an ExportableState)
    checkpoint = repo_dir / "out" / "checkpoint-2"
    stored = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME)).stateful_callbacks
    assert sorted(stored) == ["EarlyStoppingCallback", "TrainerControl"]
    assert stored["EarlyStoppingCallback"]["args"]["early_stopping_patience"] == 5

    second = TraceletCallback(repo_path=str(repo_dir))
    trainer = _create_trainer(
        repo_dir,
        callbacks=[EarlyStoppingCallback(), second],
        restore_callback_states_from_checkpoint=True,
        **STATEFUL,
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))

    restored_cb = _get_callback(trainer, EarlyStoppingCallback)
    assert restored_cb is not None
    assert restored_cb.early_stopping_patience == 5
    assert restored_cb.early_stopping_threshold == 0.2
    # ADAPTED: ours is the instance given (not rebuilt from the checkpoint), and it continued the run
    # that wrote the checkpoint: one run in the repo, holding the restored history (the evaluation at
    # step 2) and what the resumed trainer added (HF runs one more step when resuming at max_steps)
    assert _get_callback(trainer, TraceletCallback) is second
    assert second.run_hash == first.run_hash
    assert _run_hashes(repo_dir) == [first.run_hash]
    assert 2 in _by_step(trainer.state.log_history, "eval_loss")
    _assert_run_matches_history(repo_dir, trainer)


def test_mixed_stateful_and_regular_callbacks(repo_dir: Path) -> None:
    # ADAPTED: ours is a regular (not stateful) callback in both trainers, beside the recorder
    cbs = [
        EventRecorderCallback(),
        TraceletCallback(repo_path=str(repo_dir)),
        EarlyStoppingCallback(early_stopping_patience=5, early_stopping_threshold=0.2),
    ]
    trainer = _create_trainer(repo_dir, callbacks=cbs, **STATEFUL)
    trainer.train()

    ours = TraceletCallback(repo_path=str(repo_dir))
    trainer = _create_trainer(
        repo_dir,
        callbacks=[EarlyStoppingCallback(), ours, EventRecorderCallback()],
        restore_callback_states_from_checkpoint=True,
        **STATEFUL,
    )
    trainer.train(resume_from_checkpoint=str(repo_dir / "out" / "checkpoint-2"))

    early_stopping = _get_callback(trainer, EarlyStoppingCallback)
    assert early_stopping.early_stopping_patience == 5
    # ADAPTED: the regular ones are the instances given, and the recorder saw the resumed run's events
    assert _get_callback(trainer, TraceletCallback) is ours
    recorder = _get_callback(trainer, EventRecorderCallback)
    assert recorder.events[:2] == ["on_init_end", "on_train_begin"] and recorder.events[-1] == "on_train_end"
    assert _run_hashes(repo_dir) == [ours.run_hash]


def test_multiple_instances_of_same_stateful_callback(repo_dir: Path) -> None:
    # ADAPTED: ours between the two instances; HF matches stored states to callbacks by class name and
    # order, which a third class in between must not disturb
    cbs = [
        StatefulTestCallback("first"),
        TraceletCallback(repo_path=str(repo_dir)),
        StatefulTestCallback("second"),
    ]
    trainer = _create_trainer(repo_dir, callbacks=cbs, **STATEFUL)
    trainer.train()

    trainer = _create_trainer(
        repo_dir,
        callbacks=[StatefulTestCallback(), TraceletCallback(repo_path=str(repo_dir)), StatefulTestCallback()],
        restore_callback_states_from_checkpoint=True,
        **STATEFUL,
    )
    trainer.train(resume_from_checkpoint=str(repo_dir / "out" / "checkpoint-2"))

    restored = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StatefulTestCallback)]
    assert len(restored) == 2
    assert restored[0].my_value == "first"
    assert restored[1].my_value == "second"
    assert len(_run_hashes(repo_dir)) == 1  # ADAPTED: the resumed trainer continued the first run


def test_missing_stateful_callback_warning(repo_dir: Path) -> None:
    # ADAPTED: ours is in the first trainer only: having stored nothing, it is never reported missing
    trainer = _create_trainer(repo_dir, callbacks=[EarlyStoppingCallback(), TraceletCallback], **STATEFUL)
    trainer.train()

    trainer = _create_trainer(
        repo_dir,
        callbacks=[],
        save_strategy="steps",
        eval_strategy="steps",
        save_steps=2,
        eval_steps=2,
        max_steps=2,
        restore_callback_states_from_checkpoint=True,
    )
    checkpoint = repo_dir / "out" / "checkpoint-2"

    with patch("transformers.trainer.logger.warning") as warn_mock:
        trainer.train(resume_from_checkpoint=str(checkpoint))

    assert warn_mock.called
    # ADAPTED: any of the warnings (the 4.x version of this test looks through them all, as other
    # warnings may come later), and none names ours
    messages = [" ".join(map(str, call.args)) for call in warn_mock.call_args_list]
    assert any("EarlyStoppingCallback" in message for message in messages), messages
    assert not any("TraceletCallback" in message for message in messages), messages


def test_trainer_control_state_persists(repo_dir: Path) -> None:
    trainer = _create_trainer(repo_dir, max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()

    trainer = _create_trainer(repo_dir, max_steps=2, restore_callback_states_from_checkpoint=True)
    checkpoint = repo_dir / "out" / "checkpoint-2"
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
    trainer._load_callback_state()

    assert trainer.control.should_training_stop
    # ADAPTED: ours stays in the list (not stored, so not replaced); the first trainer's run is closed
    assert _get_callback(trainer, TraceletCallback) is not None
    (run_hash,) = _run_hashes(repo_dir)
    assert read_run(repo_dir, run_hash)["status"] == "finished"


# -- CallbackHandlerTest --------------------------------------------------------------------------------


def _handler(callbacks: list[Any], **refs: Any) -> CallbackHandler:
    settings = {"model": None, "processing_class": None, "optimizer": None, "lr_scheduler": None}
    settings.update(refs)
    return CallbackHandler(callbacks=callbacks, **settings)


def test_callback_list_property(repo_dir: Path) -> None:
    # ADAPTED: ours in the handler, built without a trainer
    handler = _handler([DefaultFlowCallback(), ProgressCallback(), TraceletCallback(repo_path=str(repo_dir))])

    callback_list = handler.callback_list

    assert "DefaultFlowCallback" in callback_list
    assert "ProgressCallback" in callback_list
    assert "TraceletCallback" in callback_list


def test_warning_without_default_flow_callback(repo_dir: Path) -> None:
    with patch("transformers.trainer_callback.logger.warning") as warn_mock:
        # ADAPTED: ours is the one callback given
        _handler([TraceletCallback(repo_path=str(repo_dir))])

    assert warn_mock.called
    assert "DefaultFlowCallback" in warn_mock.call_args[0][0]


def test_pop_callback_returns_none_if_not_found(repo_dir: Path) -> None:
    ours = TraceletCallback(repo_path=str(repo_dir))
    handler = _handler([DefaultFlowCallback(), ours])  # ADAPTED: ours too

    result = handler.pop_callback(ProgressCallback)

    assert result is None
    assert handler.callbacks[-1] is ours  # ADAPTED: and ours was left where it was


def test_call_event_passes_kwargs(repo_dir: Path) -> None:
    received_kwargs: dict[str, Any] = {}

    class KwargsRecorderCallback(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            received_kwargs.update(kwargs)

    ours = TraceletCallback(repo_path=str(repo_dir))
    handler = _handler(
        # ADAPTED: ours before the recorder, receiving the same call
        [DefaultFlowCallback(), ours, KwargsRecorderCallback()],
        model="test_model",
        processing_class="test_processor",
        optimizer="test_optimizer",
        lr_scheduler="test_scheduler",
    )
    handler.train_dataloader = "test_train_dl"
    handler.eval_dataloader = "test_eval_dl"

    control = TrainerControl()
    handler.call_event("on_log", None, TrainerState(), control, logs={"loss": 1.0})

    assert received_kwargs["model"] == "test_model"
    assert received_kwargs["processing_class"] == "test_processor"
    assert received_kwargs["logs"] == {"loss": 1.0}
    # ADAPTED: the same call, with the model a string and no args, reached the AIM run unchanged
    ours.close()
    assert series(repo_dir, "loss", TRAIN, ours.run_hash) == {0: 1.0}


# -- NotebookProgressCallbackTest -----------------------------------------------------------------------


def _notebook_trainer(repo_dir: Path) -> tuple[Trainer, TraceletCallback]:
    from transformers.utils.notebook import NotebookProgressCallback

    ours = TraceletCallback(repo_path=str(repo_dir))
    trainer = _create_trainer(
        repo_dir,
        # ADAPTED: ours beside the forced notebook callback
        callbacks=[NotebookProgressCallback(), ours],
        train_len=16,
        eval_len=16,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        num_train_epochs=1,
        logging_strategy="no",
        eval_strategy="epoch",
    )
    return trainer, ours


@pytest.fixture
def _ipython() -> None:
    pytest.importorskip("IPython")  # the original's @require_ipython


@pytest.mark.usefixtures("_ipython")
def test_evaluate_before_training(repo_dir: Path) -> None:
    from transformers.utils.notebook import NotebookProgressCallback

    trainer, ours = _notebook_trainer(repo_dir)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    assert _get_callback(trainer, NotebookProgressCallback) is not None
    # ADAPTED: an evaluate-only use still makes a run, with the evaluation at step 0 and the params
    ours.close()
    assert series(repo_dir, "loss", VAL, ours.run_hash) == {0: pytest.approx(metrics["eval_loss"])}
    assert read_run(repo_dir, ours.run_hash)["hparams"]["eval_strategy"] == "epoch"


@pytest.mark.usefixtures("_ipython")
def test_evaluate_after_training(repo_dir: Path) -> None:
    trainer, ours = _notebook_trainer(repo_dir)
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    # ADAPTED: the evaluation after train() joins the run train() closed, at the last step
    ours.close()
    assert _run_hashes(repo_dir) == [ours.run_hash]
    assert series(repo_dir, "loss", VAL, ours.run_hash)[8] == pytest.approx(metrics["eval_loss"])


@pytest.mark.usefixtures("_ipython")
def test_multiple_evaluate_calls(repo_dir: Path) -> None:
    trainer, ours = _notebook_trainer(repo_dir)
    metrics1 = trainer.evaluate()
    trainer.train()
    metrics2 = trainer.evaluate()
    metrics3 = trainer.evaluate()
    assert "eval_loss" in metrics1
    assert "eval_loss" in metrics2
    assert "eval_loss" in metrics3
    # ADAPTED: all of it in one run: the evaluation before training at step 0, the rest at step 8
    ours.close()
    assert _run_hashes(repo_dir) == [ours.run_hash]
    assert sorted(series(repo_dir, "loss", VAL, ours.run_hash)) == [0, 8]
    assert sorted(series(repo_dir, "loss", TRAIN, ours.run_hash)) == []


# -- report_to ------------------------------------------------------------------------------------------


def test_report_to_integration_trains_beside_ours(repo_dir: Path) -> None:
    """ADAPTED: the original's trainer reports to nothing; here HF's own TensorBoard integration is
    asked for by name, and both it and ours record the same training."""
    pytest.importorskip("tensorboard")
    from transformers.integrations import TensorBoardCallback

    trainer = _create_trainer(repo_dir, report_to=["tensorboard"], max_steps=2, logging_steps=1)
    assert _get_callback(trainer, TensorBoardCallback) is not None
    trainer.train()

    assert list((repo_dir / "out").rglob("events.out.tfevents.*"))
    run_hash = _get_callback(trainer, TraceletCallback).run_hash
    assert _run_hashes(repo_dir) == [run_hash]
    assert sorted(series(repo_dir, "loss", TRAIN, run_hash)) == [1, 2]
