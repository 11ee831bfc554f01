"""``TraceletCallback``: what a Hugging Face ``Trainer`` logs, in an AIM run.

How a run lives (the choice differs from "close at exit" on purpose):

* it opens at ``on_init_end``, so ``callback.experiment`` can track values before training;
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

import gc
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

from ..config import FIELDS, TraceletConfig, resolve
from ..core.params import parameter_counts, to_params
from ..core.translator import Translator
from ..errors import TraceletValueError, TraceletWarning
from ..run.experiment import Experiment, RunHandle
from ..session import global_rank

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ModuleNotFoundError(
        'TraceletCallback needs transformers: pip install "tracelet-callbacks[transformers]"'
    ) from exc

__all__ = ["TraceletCallback"]

#: Keys of the one dict ``Trainer`` logs at the end of ``train()``: run params under ``summary``, never
#: points of a series (the averaged ``train_loss`` must not land on the last step's ``loss``).
_SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
)
#: ``TrainingArguments`` pickle in every checkpoint folder; it holds ``hub_token``, so it is never stored.
_TRAINING_ARGS_FILE = "training_args.bin"
#: ``Trainer``'s own metric prefixes: such keys never take the default ``train`` subset, routed or not.
_HF_PREFIXES = ("eval_", "test_", "predict_")


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
    step = ``state.global_step``. End-of-training figures go to the run param ``summary``.

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
        if isinstance(config, TraceletConfig):  # already resolved: do not read the environment again
            config = {name: getattr(config, name) for name in FIELDS}
            self._config = resolve(settings, config, env={})
        else:
            self._config = resolve(settings, config)  # a bad key fails here, not mid-training
        self._exp: Experiment | None = None
        self._ended_hash: str | None = None  # closed at train end (or left by pickling); resumed on use
        self._run_name: str | None = None  # the current run's display name, known without opening it
        self._runs = 0  # experiments made; the ``run_hash`` setting names the first one only
        self._main: bool | None = None
        self._placed: dict[str, bool] = {}  # key -> the routing table gives it a subset
        self._warned: set[str] = set()
        self._reset()

    def _reset(self) -> None:
        """Per-run state, fresh for each ``Trainer`` that trained before the next one is built."""
        self._trained = False  # the current run has begun training (the next trainer / trial: a new run)
        self._training = False  # between on_train_begin and on_train_end: still set = train() raised
        self._params_logged = False
        self._trials = 0
        self._base_name: str | None = self._config.run_name
        self._saved: dict[str, float] = {}  # checkpoint folder -> mtime stored

    # -- the run ------------------------------------------------------------------------------------

    @property
    def experiment(self) -> RunHandle:
        """``aim.Run``'s writing surface over this callback's run (a do-nothing stand-in off rank 0).

        The handle follows the callback: after ``train()`` closed the run, tracking through it continues
        the same AIM run; reading ``hash`` or ``name`` does not reopen it."""
        return _CallbackRunHandle(self)

    @property
    def run_hash(self) -> str | None:
        """The AIM run hash (``None`` off rank 0); does not reopen a run closed at train end."""
        if self._ended_hash is not None:
            return self._ended_hash
        exp = self._live()
        if not exp.is_open and exp.config.run_hash:  # resumed lazily: its hash is known without opening
            return exp.config.run_hash
        return exp.hash

    def flush(self) -> None:
        """Make everything logged so far durable."""
        if self._exp is not None and self._ended_hash is None:
            self._exp.flush()

    def close(self, status: str | None = None) -> None:
        """Close the run now (after a final ``trainer.evaluate()``, say) instead of at process exit.

        ``status`` defaults to ``finished``, or ``failed`` when the last ``train()`` raised."""
        if status is None:
            status = "failed" if self._training else "finished"
        self._training = False
        exp = self._exp
        if exp is None or self._ended_hash is not None:
            return
        run_hash = None
        if exp.enabled:
            run_hash = exp.hash if exp.is_open else exp.config.run_hash
        exp.close(status)
        self._ended_hash = run_hash

    def __getstate__(self) -> dict[str, Any]:
        """The live run stays behind (it holds locks and a writer); its hash travels, so a copy (HF's
        Ray search pickles the trainer) continues the same run when it first logs."""
        state = self.__dict__.copy()
        exp = state["_exp"]
        if exp is not None and exp.enabled and state["_ended_hash"] is None:
            state["_ended_hash"] = exp.hash if exp.is_open else exp.config.run_hash
        state["_exp"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # lazy: the run is resumed by hash on first use

    def _is_main(self, state: Any = None) -> bool:
        """The one rank decision: only the world process zero writes (remembered for calls that come
        without a ``TrainerState``, such as ``callback.experiment``)."""
        if state is not None:
            self._main = bool(getattr(state, "is_world_process_zero", True))
        elif self._main is None:
            self._main = global_rank() == 0
        return self._main

    def _live(self, state: Any = None) -> Experiment:
        """The experiment values go to now; opened lazily, the same AIM run resumed after train end."""
        if self._ended_hash is not None:
            # aim keeps a closed Run's storage open in this process through reference cycles (an
            # in-process sink); resuming while they live corrupts the run's existing series
            gc.collect()
            resumed = self._config.replace(run_hash=self._ended_hash, run_name=None, tags=None)
            self._exp, self._ended_hash = Experiment(resumed), None
        elif self._exp is None:
            self._exp = self._new_experiment(self._base_name, enabled=self._is_main(state))
        return self._exp

    def _new_experiment(self, run_name: str | None, enabled: bool = True) -> Experiment:
        config = self._config.replace(run_name=run_name)
        if self._runs:
            config = config.replace(run_hash=None)  # a later trainer or trial is a new run
        self._runs += 1
        self._run_name = run_name
        return Experiment(config, enabled=enabled)

    def _translator(self, state: Any) -> Translator | None:
        if not self._is_main(state):
            return None
        return self._live(state).translator

    def _guarded(self, what: str, action: Any, *args: Any) -> None:
        """Run ``action``; a failure (the artifact store cannot be written ...) is one warning per
        ``what`` and training goes on."""
        try:
            action(*args)
        except TraceletValueError:
            raise  # strict=True asked for it
        except Exception as exc:
            if what not in self._warned:
                self._warned.add(what)
                warnings.warn(
                    f"tracelet: {what} failed ({exc}); training goes on", TraceletWarning, stacklevel=3
                )

    # -- Trainer events -----------------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._trained:  # a new Trainer after one that trained (k-fold): a new run, fresh state
            self.close()
            self._exp, self._ended_hash = None, None
            self._reset()
        if self._base_name is None:
            self._base_name = getattr(args, "run_name", None)
        if self._is_main(state):
            self._live(state).open()  # a bad repo or a server that is down fails at Trainer(...)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self._is_main(state):
            return
        if self._base_name is None:
            self._base_name = getattr(args, "run_name", None)
        if state.is_hyper_param_search:
            self._begin_trial(state)
        self._trained = self._training = True
        self._log_params(args, state, model)

    def _begin_trial(self, state: Any) -> None:
        """One run per trial: the first reuses the run opened at init, later ones start afresh."""
        name = state.trial_name or f"trial-{self._trials}"
        run_name = f"{self._base_name}-{name}" if self._base_name else name
        if self._trained:
            self.close()  # ``failed`` if the previous trial raised (optuna's ``catch=``)
            self._exp, self._ended_hash = self._new_experiment(run_name), None
            self._params_logged = False
            self._saved.clear()
        elif (translator := self._live(state).translator) is not None:
            translator.run_info(name=run_name)
            self._run_name = run_name
        trial = {"name": name, "number": self._trials, "params": dict(state.trial_params or {})}
        if (translator := self._live(state).translator) is not None:
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
            self._guarded("storing the model params", _store_model_params, translator, model)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or not self._is_main(state):
            return
        translator = self._translator(state)
        if translator is None:
            return
        final = "train_runtime" in logs  # the end-of-train() dict: all of it is summary
        summary = {key: value for key, value in logs.items() if final or key in _SUMMARY_KEYS}
        # ``epoch`` is state.epoch, passed as AIM's epoch below: not a series of its own
        values = {key: value for key, value in logs.items() if key not in summary and key != "epoch"}
        self._scalars(translator, values, state, "train")
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
            self._scalars(translator, metrics, state, "test")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._is_main(state):
            return
        folder = _checkpoint_folder(args.output_dir, state.global_step)
        translator = self._translator(state)
        if folder is None or translator is None:
            return
        name = os.path.basename(folder)
        translator.params({"last": folder, "saved": {name: folder}}, key="checkpoints")
        if self._config.log_model == "all":
            mtime = os.path.getmtime(folder)
            if self._saved.get(folder) != mtime:
                self._guarded("storing checkpoints", self._store_folder, folder, f"checkpoints/{name}", args)
                self._saved[folder] = mtime

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self._is_main(state):
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
                self._guarded("storing the final model", self._store_model, model, processing_class, args)
        finally:
            self.close("finished")

    # -- helpers ------------------------------------------------------------------------------------

    def _scalars(self, translator: Translator, values: Mapping[str, Any], state: Any, subset: str) -> None:
        """``Trainer``'s keys name no subset for training values (``loss``, ``grad_norm``): those go to
        ``subset``; keys the routing table places (``eval_*``, ``test_*``) keep their own, and HF's
        own prefixes never take ``subset`` even when the table leaves them as they are."""
        routed: dict[str, Any] = {}
        unplaced: dict[str, Any] = {}
        for key, value in values.items():
            placed = self._placed.get(key)
            if placed is None:
                found = translator.table(key)
                placed = "subset" in found.context or found.name != key or key.startswith(_HF_PREFIXES)
                self._placed[key] = placed
            (routed if placed else unplaced)[key] = value
        if routed:
            translator.scalars(routed, state.global_step, state.epoch)
        if unplaced:
            translator.scalars(unplaced, state.global_step, state.epoch, {"subset": subset})

    def _store_model(self, model: Any, processing_class: Any, args: Any) -> None:
        with tempfile.TemporaryDirectory() as folder:
            _save_model(model, processing_class, folder)
            self._store_folder(folder, "model", args)

    def _store_folder(self, folder: str, artifact_path: str, args: Any) -> None:
        """Copy a checkpoint / model folder into the artifact store, ``training_args.bin`` replaced by
        a redacted ``training_args.json``; waits for the copy (rotation may delete the folder next)."""
        exp = self._live()
        with tempfile.TemporaryDirectory() as scratch:
            for root, _dirs, files in os.walk(folder):
                relative = os.path.relpath(root, folder).replace(os.sep, "/")
                target = artifact_path if relative == "." else f"{artifact_path}/{relative}"
                for file in sorted(files):
                    if file == _TRAINING_ARGS_FILE:
                        continue
                    exp.log_artifact(os.path.join(root, file), artifact_path=target)
            if args is not None:
                scrubbed = os.path.join(scratch, "training_args.json")
                with open(scrubbed, "w", encoding="utf-8") as handle:
                    json.dump(to_params(args), handle, indent=2, sort_keys=True)
                exp.log_artifact(scrubbed, artifact_path=artifact_path)
            exp.flush()


class _CallbackRunHandle(RunHandle):
    """A :class:`RunHandle` that always writes to the callback's current run (resumed after train end)."""

    def __init__(self, callback: TraceletCallback) -> None:
        self._callback = callback

    @property
    def _exp(self) -> Experiment:  # type: ignore[override]
        return self._callback._live()

    @property
    def hash(self) -> str | None:
        return self._callback.run_hash

    @property
    def name(self) -> str | None:
        """The run's display name, answered without reopening a run closed at train end."""
        callback = self._callback
        return callback._run_name if callback._is_main() else None

    @name.setter
    def name(self, value: str) -> None:
        exp = self._exp
        if (translator := exp.translator) is not None:
            exp._name = self._callback._run_name = str(value)
            translator.run_info(name=str(value))

    def __bool__(self) -> bool:
        exp = self._callback._exp
        return exp.enabled if exp is not None else self._callback._is_main()


def _store_model_params(translator: Translator, model: Any) -> None:
    translator.params(_model_params(model), key="model")


def _model_params(model: Any) -> dict[str, Any]:
    """Class, parameter counts, config, PEFT config."""
    found = parameter_counts(model)
    config = getattr(model, "config", None)
    if config is not None:
        found["config"] = config
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        found["peft_config"] = peft_config
    return found


def _checkpoint_folder(output_dir: str, step: int) -> str | None:
    """The folder ``Trainer`` just saved: ``checkpoint-<step>`` under ``output_dir`` or, in a
    hyperparameter search, under its ``run-<n>`` subfolder; the newest when several match."""
    name = f"checkpoint-{step}"
    candidates = [os.path.join(output_dir, name)]
    if os.path.isdir(output_dir):
        candidates += [os.path.join(output_dir, sub, name) for sub in os.listdir(output_dir)]
    found = [path for path in candidates if os.path.isdir(path)]
    return os.path.abspath(max(found, key=os.path.getmtime)) if found else None


def _save_model(model: Any, processing_class: Any, folder: str) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        import torch

        torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)
