"""When our run opens and closes, relative to the hooks the trainers call.

In the style of transformers' ``tests/trainer/test_trainer_callback.py``: a recording callback sits in a
real ``Trainer`` just *before* ours and appends ``("hook", name)`` to the same list that a
:class:`~tracelet_callbacks.testing.RecordingSink` appends ``("open", hash)`` and
``("close", hash, status)`` to (``("flush", hash)`` is dropped); the test adds ``("call", name)`` before
each thing it does. Each test asserts the exact interleaving. Since the recorder runs first, ``("open",
h)`` right after ``("hook", "on_x")`` means "opened by our ``on_x``". No AIM, nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")  # the helpers import it; transformers / lightning / optuna: per test

from hf_helpers import TokenDataset, tiny_args, tiny_bert
from lightning_helpers import classes, trainer_kwargs
from tracelet_callbacks.testing import RecordingSink


def _hook(name: str) -> tuple[str, str]:
    return ("hook", name)


def _call(name: str) -> tuple[str, str]:
    return ("call", name)


def _sequence(events: list[tuple]) -> list[tuple]:
    """The events without flushes (how often values are flushed is not the point here)."""
    return [event for event in events if event[0] != "flush"]


def _opened(events: list[tuple]) -> list[str]:
    """The distinct run hashes in the order they were first opened."""
    hashes: list[str] = []
    for event in events:
        if event[0] == "open" and event[1] not in hashes:
            hashes.append(event[1])
    return hashes


@pytest.fixture
def events(repo_dir: Path) -> list[tuple]:
    """The shared list (in a clean working folder, with no ``TRACELET_*`` settings from outside)."""
    return []


def _factory(events: list[tuple]) -> Any:
    return lambda config: RecordingSink(config, events)


# -- Hugging Face -------------------------------------------------------------------------------------


def _hf_callback(events: list[tuple]) -> Any:
    pytest.importorskip("transformers")
    from tracelet_callbacks import TraceletCallback

    return TraceletCallback(sink_factory=_factory(events))


#: The ``Trainer`` hooks where a run could open or close, recorded beside ours.
HF_HOOKS = ("on_init_end", "on_train_begin", "on_train_end", "on_log", "on_evaluate", "on_predict", "on_save")


def _hf_recorder(events: list[tuple]) -> Any:
    """A ``TrainerCallback`` that records each of :data:`HF_HOOKS` as it is called."""
    from transformers import TrainerCallback

    def recording(name: str) -> Any:
        def hook(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            events.append(_hook(name))

        return hook

    recorder = type("HookRecorder", (TrainerCallback,), {name: recording(name) for name in HF_HOOKS})
    return recorder()


def _trainer(callbacks: list[Any], out: Path, seed: int = 0, **overrides: Any) -> Any:
    """A tiny CPU BERT ``Trainer`` (16 training rows, batches of 8); ``overrides`` go to ``tiny_args``."""
    from transformers import Trainer

    settings: dict[str, Any] = {"max_steps": 2, "logging_strategy": "no", **overrides}
    return Trainer(
        model=tiny_bert(seed=seed),
        args=tiny_args(str(out), **settings),
        train_dataset=TokenDataset(16, seed=seed),
        eval_dataset=TokenDataset(8, seed=1),
        callbacks=callbacks,
    )


def test_hf_run_opens_at_train_begin_closes_at_train_end_and_evaluate_predict_continue_it(
    events: list[tuple], tmp_path: Path
) -> None:
    """Train 2 epochs with eval and save each epoch, then ``evaluate()``, ``predict()``, ``close()``:
    the run opens at ``on_train_begin`` (once ``train()`` has said whether it resumes a checkpoint's
    run; ``on_init_end`` only checks the repo), is closed ``finished`` right at
    ``on_train_end``, ``evaluate()`` reopens the SAME hash at its first hook (``on_log``), ``predict()``
    writes into it while it is still open, and ``close()`` ends it."""
    callback = _hf_callback(events)
    events.append(_call("Trainer"))
    trainer = _trainer(
        [_hf_recorder(events), callback],
        tmp_path / "out",
        max_steps=-1,
        num_train_epochs=2,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
    )
    events.append(_call("train"))
    trainer.train()
    events.append(_call("evaluate"))
    trainer.evaluate()
    events.append(_call("predict"))
    trainer.predict(TokenDataset(8, seed=2))
    events.append(_call("close"))
    callback.close()

    (run,) = _opened(events)
    assert run.startswith("recorded")  # a fresh run, not a resume of something else
    per_epoch = [_hook("on_log"), _hook("on_log"), _hook("on_evaluate"), _hook("on_save")]  # loss, eval
    assert _sequence(events) == [
        _call("Trainer"),
        _hook("on_init_end"),
        _call("train"),
        _hook("on_train_begin"),
        ("open", run),
        *per_epoch,
        *per_epoch,
        _hook("on_log"),  # the end-of-train summary
        _hook("on_train_end"),
        ("close", run, "finished"),
        _call("evaluate"),
        _hook("on_log"),
        ("open", run),  # the same hash: continued
        _hook("on_evaluate"),
        _call("predict"),
        _hook("on_predict"),  # still open: no second open
        _call("close"),
        ("close", run, "finished"),
    ]


def test_hf_predict_alone_after_train_reopens_the_same_run(events: list[tuple], tmp_path: Path) -> None:
    """``predict()`` right after ``train()`` (no ``evaluate()`` in between) reopens the SAME run in our
    ``on_predict``; ``close()`` ends it again."""
    callback = _hf_callback(events)
    trainer = _trainer([_hf_recorder(events), callback], tmp_path / "out")
    trainer.train()
    events.append(_call("predict"))
    trainer.predict(TokenDataset(8, seed=2))
    events.append(_call("close"))
    callback.close()

    (run,) = _opened(events)
    assert _sequence(events) == [
        _hook("on_init_end"),
        _hook("on_train_begin"),
        ("open", run),
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", run, "finished"),
        _call("predict"),
        _hook("on_predict"),
        ("open", run),
        _call("close"),
        ("close", run, "finished"),
    ]


def test_hf_second_train_on_the_same_trainer_continues_the_same_run(
    events: list[tuple], tmp_path: Path
) -> None:
    """A second ``train()`` on the same ``Trainer`` continues the SAME run, reopened in our
    ``on_train_begin`` and closed ``finished`` again at its ``on_train_end``.

    Why that is right, from the code (``integrations/hf/callback.py``): a new run starts only for a new
    ``Trainer`` (``on_init_end`` with ``_trained`` set) or a new hyperparameter-search trial
    (``on_train_begin`` with ``state.is_hyper_param_search``); a plain ``on_train_begin`` with
    ``_trained`` already set just logs params through the translator, which continues the ended run by
    hash, exactly as the module docstring says ("closed again at the next ``on_train_end``"). One
    ``Trainer`` is one run, which is also what ``train(resume_from_checkpoint=...)`` on the same
    ``Trainer`` after an interruption wants. (Without ``resume_from_checkpoint`` HF restarts
    ``global_step`` at 0, so the second pass's points land on the first pass's steps of that run.)"""
    callback = _hf_callback(events)
    trainer = _trainer([_hf_recorder(events), callback], tmp_path / "out")
    events.append(_call("train"))
    trainer.train()
    events.append(_call("train again"))
    trainer.train()
    events.append(_call("close"))
    callback.close()

    (run,) = _opened(events)
    assert _sequence(events) == [
        _hook("on_init_end"),
        _call("train"),
        _hook("on_train_begin"),
        ("open", run),
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", run, "finished"),
        _call("train again"),
        _hook("on_train_begin"),
        ("open", run),  # continued, not a new run
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", run, "finished"),
        _call("close"),  # nothing left open
    ]


def test_hf_two_trainers_sharing_one_callback_make_two_runs(events: list[tuple], tmp_path: Path) -> None:
    """k-fold: a second ``Trainer`` given the same callback starts a NEW run (the old one is closed at
    its ``on_init_end``, the new one opens at its ``on_train_begin``).
    The first fold's run, reopened by its ``evaluate()``, is closed ``finished`` there, before the
    second run opens."""
    callback = _hf_callback(events)
    recorder = _hf_recorder(events)
    for fold in range(2):
        events.append(_call(f"Trainer {fold}"))
        trainer = _trainer([recorder, callback], tmp_path / f"out-{fold}", seed=fold)
        events.append(_call(f"train {fold}"))
        trainer.train()
        if fold == 0:
            events.append(_call("evaluate 0"))
            trainer.evaluate()
    events.append(_call("close"))
    callback.close()

    first, second = _opened(events)
    assert first != second
    assert _sequence(events) == [
        _call("Trainer 0"),
        _hook("on_init_end"),
        _call("train 0"),
        _hook("on_train_begin"),
        ("open", first),
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", first, "finished"),
        _call("evaluate 0"),
        _hook("on_log"),
        ("open", first),
        _hook("on_evaluate"),
        _call("Trainer 1"),
        _hook("on_init_end"),
        ("close", first, "finished"),
        _call("train 1"),
        _hook("on_train_begin"),
        ("open", second),
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", second, "finished"),
        _call("close"),  # nothing left open
    ]


@pytest.mark.slow
def test_hf_hyperparameter_search_makes_one_run_per_trial(events: list[tuple], tmp_path: Path) -> None:
    """``hyperparameter_search`` (optuna, 2 trials) on ONE ``Trainer``: one run per trial.

    Trial 0 uses the run opened at its ``on_train_begin``; it is closed
    ``finished`` at trial 0's ``on_train_end``, reopened (same hash) by the objective's ``evaluate()``,
    and closed again by our ``on_train_begin`` of trial 1 (the first hook of a trial), which then opens
    trial 1's new run, before any other hook of that trial. Trial 1's run closes at its ``on_train_end``,
    is reopened by its ``evaluate()`` and ended by ``close()``."""
    optuna = pytest.importorskip("optuna")
    from transformers import Trainer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    callback = _hf_callback(events)

    def model_init() -> Any:
        events.append(_call("model_init"))
        return tiny_bert()

    trainer = Trainer(
        model_init=model_init,
        args=tiny_args(str(tmp_path / "out"), max_steps=2, logging_strategy="no", run_name="search"),
        train_dataset=TokenDataset(16),
        eval_dataset=TokenDataset(8, seed=1),
        callbacks=[_hf_recorder(events), callback],
    )

    def space(trial: Any) -> dict[str, float]:
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    events.append(_call("hyperparameter_search"))
    trainer.hyperparameter_search(
        hp_space=space, n_trials=2, direction="minimize", backend="optuna", hp_name=lambda t: f"t{t.number}"
    )
    events.append(_call("close"))
    callback.close()

    trial_0, trial_1 = _opened(events)
    assert trial_0 != trial_1
    assert _sequence(events) == [
        _call("model_init"),  # Trainer(model_init=...) builds a model at once
        _hook("on_init_end"),
        _call("hyperparameter_search"),
        _call("model_init"),  # trial 0
        _hook("on_train_begin"),
        ("open", trial_0),
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", trial_0, "finished"),
        _hook("on_log"),  # the objective's evaluate(): same run
        ("open", trial_0),
        _hook("on_evaluate"),
        _call("model_init"),  # trial 1
        _hook("on_train_begin"),
        ("close", trial_0, "finished"),
        ("open", trial_1),
        _hook("on_log"),
        _hook("on_train_end"),
        ("close", trial_1, "finished"),
        _hook("on_log"),
        ("open", trial_1),
        _hook("on_evaluate"),
        _call("close"),
        ("close", trial_1, "finished"),
    ]


# -- Lightning ----------------------------------------------------------------------------------------

_LIGHTNING_HOOKS = (
    "setup",
    "on_fit_start",
    "on_train_start",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_train_end",
    "on_fit_end",
    "on_test_start",
    "on_test_end",
    "teardown",
)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-checkpoint", "checkpoint"])
def test_lightning_fit_validate_test_close_and_continue_one_run(
    events: list[tuple], tmp_path: Path, checkpointing: bool
) -> None:
    """``fit`` (2 batches, validation), then ``validate`` and ``test`` with the same logger.

    ``fit``: the run opens once, before ``on_train_start`` and the first ``on_train_batch_end``: at
    ``log_hyperparams`` (after ``on_fit_start``), or with a ``ModelCheckpoint`` already in its ``setup``,
    which reads ``logger.version`` (the hash) to name its folder. ``finalize("success")`` closes it
    ``finished`` after the ``teardown`` hooks. ``validate`` and ``test`` each reopen the SAME hash (after
    ``setup``, before their first loop hook) and close it ``finished`` again after ``teardown``."""
    pl = pytest.importorskip("lightning.pytorch")
    from tracelet_callbacks import TraceletAimLogger

    tiny_module, tiny_data = classes(pl)

    def record(name: str) -> Any:
        return lambda self, *args, **kwargs: events.append(_hook(name))

    recorder = type("HookRecorder", (pl.Callback,), {name: record(name) for name in _LIGHTNING_HOOKS})()
    logger = TraceletAimLogger(sink_factory=_factory(events))
    trainer = pl.Trainer(
        logger=logger,
        callbacks=[recorder],
        default_root_dir=str(tmp_path),
        **trainer_kwargs(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=1,
            limit_test_batches=1,
            enable_checkpointing=checkpointing,
        ),
    )
    model, data = tiny_module(), tiny_data()
    events.append(_call("fit"))
    trainer.fit(model, datamodule=data)
    events.append(_call("validate"))
    trainer.validate(model, datamodule=data)
    events.append(_call("test"))
    trainer.test(model, datamodule=data)

    (run,) = _opened(events)
    assert logger.version == run  # read after the close: the hash, without reopening
    if checkpointing:  # ModelCheckpoint.setup runs after our recorder's and asks for the hash
        fit_start = [("open", run), _hook("on_fit_start")]
    else:  # log_hyperparams, right after the on_fit_start hooks
        fit_start = [_hook("on_fit_start"), ("open", run)]
    assert _sequence(events) == [
        _call("fit"),
        _hook("setup"),
        *fit_start,
        _hook("on_train_start"),
        _hook("on_train_batch_end"),
        _hook("on_train_batch_end"),
        _hook("on_validation_start"),
        _hook("on_validation_end"),
        _hook("on_train_end"),
        _hook("on_fit_end"),
        _hook("teardown"),
        ("close", run, "finished"),
        _call("validate"),
        _hook("setup"),
        ("open", run),
        _hook("on_validation_start"),
        _hook("on_validation_end"),
        _hook("teardown"),
        ("close", run, "finished"),
        _call("test"),
        _hook("setup"),
        ("open", run),
        _hook("on_test_start"),
        _hook("on_test_end"),
        _hook("teardown"),
        ("close", run, "finished"),
    ]
