"""``TraceletCallback``: what a Hugging Face ``Trainer`` logs, in an AIM run.

How a run lives (the choice differs from "close at exit" on purpose):

* ``on_init_end`` checks the repo or server (a bad one fails at ``Trainer(...)``); the run is made on
  first use, normally ``on_train_begin``, once ``train(resume_from_checkpoint=...)`` has said whether
  it continues the run that wrote that checkpoint (each checkpoint folder carries its run in
  ``tracelet-run.json``; see ``run/resume.py``); ``callback.experiment`` can track values before;
* params (``TrainingArguments``, the model's config, parameter counts, the PEFT config) are stored at
  ``on_train_begin``;
* it is **closed at** ``on_train_end`` with status ``finished``: AIM lists a run only once it is closed
  and indexed, so values are durable and queryable as soon as ``trainer.train()`` returns;
* anything logged afterwards (``trainer.evaluate()``, ``trainer.predict()``, ``callback.experiment``)
  continues the *same* AIM run (resumed by hash), which is closed again at the next ``on_train_end``,
  by :meth:`TraceletCallback.close`, or at process exit;
* a later ``Trainer`` given the same callback (k-fold loops) starts a *new* run at its ``on_init_end``;
* ``hyperparameter_search``: one run per trial, the previous trial's run closed when the next begins;
* an exception out of ``train()`` leaves the run open: the next ``Trainer`` or trial, or
  :meth:`TraceletCallback.close`, closes it with status ``failed`` (the exception was caught); if the
  process ends first, the package's exit handling does (``interrupted`` for Ctrl-C / SIGTERM).

Storing checkpoints or the final model is guarded: a failure is one :class:`TraceletWarning` and
training goes on.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from ...config import TraceletConfig, coerce
from ...core.routing import HF_PREFIXES, make_table
from ...core.translator import Translator
from ...errors import WarnOnce
from ...run.checkpoints import CheckpointStore
from ...run.experiment import RunHandle
from ...run.lifecycle import RunLifecycle
from ...run.ranks import global_rank
from .info import SUMMARY_KEYS, checkpoint_folder, resume_point, save_model, store_model_params

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ModuleNotFoundError(
        'TraceletCallback needs transformers: pip install "tracelet-callbacks[transformers]"'
    ) from exc

__all__ = ["TraceletCallback"]


class TraceletCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that sends the ``Trainer``'s logs, params and checkpoints to AIM.

    Args:
        config: a settings dict (or :class:`~tracelet_callbacks.TraceletConfig`), below keywords.
        **settings: any setting keyword: ``repo_path``, ``experiment_name``, ``run_name`` (default:
            ``TrainingArguments.run_name``), ``tags``, ``remote_uri``, ``run_hash``, ``log_model``
            (``False``: checkpoint paths recorded; ``"all"``: each checkpoint folder stored as
            artifacts; ``True``: the final model stored at train end), ``strict``, ``routing`` ...

    Logged keys follow ``Trainer``'s convention: ``eval_*`` -> subset ``val``, ``test_*`` and predict
    metrics -> ``test``, everything else (``loss``, ``grad_norm``, ``learning_rate``) -> ``train``;
    step = ``state.global_step``, epoch = ``state.epoch`` as HF reports it (0.25 a quarter in).
    End-of-training figures go to the run param ``summary``.

    Example::

        from transformers import Trainer
        from tracelet_callbacks import TraceletCallback

        callback = TraceletCallback(repo_path="./aim_repo", experiment_name="glue")
        trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback])
        callback.experiment.track(3.2, name="load_seconds")   # the run is open already
        trainer.train()          # run closed at the end: queryable now
        trainer.evaluate()       # continues the same run
    """

    def __init__(self, config: Mapping[str, Any] | TraceletConfig | None = None, **settings: Any) -> None:
        config = coerce(config, settings)  # a bad key or value fails here, not mid-training
        # HF's training keys name no subset: the table gives them ``train`` (HF's own prefixes excepted)
        table = make_table(config.routing).defaulting("train", own_prefixes=HF_PREFIXES)
        self._config = config.replace(routing=table)
        self._runs = RunLifecycle(self._config, enabled=global_rank() == 0)
        self._warn = WarnOnce()
        self._checkpoints = CheckpointStore()
        self._reset()

    def _reset(self) -> None:
        """Per-run state, fresh for each ``Trainer`` that trained before the next one is built."""
        self._base_name: str | None = self._config.run_name  # else the next trainer's args.run_name
        self._trained = False  # the current run has begun training (the next trainer / trial: a new run)
        self._training = False  # between on_train_begin and on_train_end: still set = train() raised
        self._params_logged = False
        self._trials = 0
        self._checkpoints.forget()

    # -- the run ------------------------------------------------------------------------------------

    @property
    def experiment(self) -> RunHandle:
        """``aim.Run``'s writing surface over this callback's run (a do-nothing stand-in off rank 0).

        The handle follows the callback: after ``train()`` closed the run, tracking through it continues
        the same AIM run; reading ``hash`` or ``name`` does not reopen it."""
        return self._runs.handle

    @property
    def run_hash(self) -> str | None:
        """The AIM run hash (``None`` off rank 0); does not reopen a run closed at train end."""
        return self._runs.hash

    def flush(self) -> None:
        """Make everything logged so far durable."""
        self._runs.flush()

    def close(self, status: str | None = None) -> None:
        """Close the run now (after a final ``trainer.evaluate()``, say) instead of at process exit.

        ``status`` defaults to ``finished``, or ``failed`` when the last ``train()`` raised."""
        if status is None:
            status = "failed" if self._training else "finished"
        self._training = False
        self._runs.end(status)

    def _is_main(self, state: Any) -> bool:
        """The one rank decision: only the world process zero writes."""
        self._runs.enabled = bool(getattr(state, "is_world_process_zero", True))
        return self._runs.enabled

    def _translator(self, state: Any) -> Translator | None:
        return self._runs.current().translator if self._is_main(state) else None

    # -- Trainer events -----------------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._trained:  # a new Trainer after one that trained (k-fold): a new run, fresh state
            self.close()
            self._reset()
            self._runs.next_run(self._base_name)
        self._name_from(args)
        if self._is_main(state):
            # a bad repo or a server that is down fails at Trainer(...); the run itself is made on first
            # use, once train() has said whether it continues a checkpoint's run
            self._runs.check()

    def _name_from(self, args: Any) -> None:
        if self._base_name is None and getattr(args, "run_name", None):
            self._base_name = args.run_name
            if not self._runs.started:
                self._runs.run_name = args.run_name

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self._is_main(state):
            return
        self._name_from(args)
        if (point := resume_point(args, state, self._config)) is not None:
            self._runs.continue_from(point)
        if state.is_hyper_param_search:
            self._begin_trial(state)
        self._trained = self._training = True
        self._log_params(args, state, model)
        if self._config.watch is not None and model is not None:
            watch, every = self._config.watch, self._config.watch_freq
            self._runs.watch(model, watch, every, lambda: state.global_step, for_this_run=True)

    def _begin_trial(self, state: Any) -> None:
        """One run per trial: the first reuses the run opened at init, later ones start afresh."""
        name = state.trial_name or f"trial-{self._trials}"
        run_name = f"{self._base_name}-{name}" if self._base_name else name
        if self._trained:
            self.close()  # ``failed`` if the previous trial raised (optuna's ``catch=``)
            self._runs.next_run(run_name)
            self._params_logged = False
            self._checkpoints.forget()
        else:
            self._runs.rename(run_name)
        trial = {"name": name, "number": self._trials, "params": dict(state.trial_params or {})}
        if (translator := self._translator(state)) is not None:
            translator.params(trial, key="trial")
        self._trials += 1

    def _log_params(self, args: Any, state: Any, model: Any) -> None:
        translator = self._translator(state)
        if translator is None:
            return
        self._params_logged = True
        if args is not None:
            translator.params(args, key="hparams")  # the translator already guards the conversion
        if model is not None:
            self._warn.guard("storing the model params", store_model_params, translator, model)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or (translator := self._translator(state)) is None:
            return
        final = "train_runtime" in logs  # the end-of-train() dict: all of it is summary
        summary = {key: value for key, value in logs.items() if final or key in SUMMARY_KEYS}
        values = {key: value for key, value in logs.items() if key not in summary}
        # ``epoch`` in the logs is state.epoch; the translator makes it AIM's epoch, not a series
        translator.scalars(values, state.global_step, state.epoch)
        if summary:
            translator.params({**summary, "global_step": state.global_step}, key="summary")

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # the metrics themselves arrive through on_log; an evaluate-only script still gets its params
        if not self._params_logged and self._is_main(state):
            self._log_params(args, state, model)

    def on_predict(
        self, args: Any, state: Any, control: Any, metrics: Any = None, model: Any = None, **kwargs: Any
    ) -> None:
        if not self._is_main(state):
            return
        if not self._params_logged:
            self._log_params(args, state, model)
        translator = self._translator(state)
        if translator is not None and metrics:
            # predict's metrics are test metrics, whatever ``metric_key_prefix`` they were given
            translator.scalars(metrics, state.global_step, state.epoch, {"subset": "test"})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = checkpoint_folder(args.output_dir, state.global_step)
        translator = self._translator(state)
        if folder is None or translator is None:
            return
        name = os.path.basename(folder)
        translator.params({"last": folder, "saved": {name: folder}}, key="checkpoints")
        self._runs.current().mark_checkpoint(folder, state.global_step)  # a new process continues this run
        if self._config.log_model == "all":
            self._checkpoints.store(self._runs.current(), [folder], "checkpoints", settings=args)
            self._runs.flush()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._runs.current().note_step(state.global_step)  # on every rank: each rank's step time

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self._is_main(state):
            self._runs.current().flush()  # hands this rank's last system sample to rank 0
            return
        self._training = False
        translator = self._translator(state)
        if translator is None:
            return
        try:
            if state.best_model_checkpoint:
                translator.params({"best": state.best_model_checkpoint}, key="checkpoints")
            if self._config.log_model is True and model is not None:
                processing_class = kwargs.get("processing_class")
                self._warn.guard("storing the final model", self._store_model, model, processing_class, args)
        finally:
            self.close("finished")

    def _store_model(self, model: Any, processing_class: Any, args: Any) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            folder = os.path.join(scratch, "model")
            os.mkdir(folder)
            save_model(model, processing_class, folder)
            CheckpointStore("storing the final model").store(self._runs.current(), [folder], "", args)
            self._runs.flush()
