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
* ``hyperparameter_search``: one run per trial, the previous trial's run closed when the next begins;
* an exception out of ``train()`` leaves the run open; the package's exit handling closes it with
  status ``failed`` (``interrupted`` for Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from .config import FIELDS, TraceletConfig, resolve
from .core.params import to_params
from .core.translator import Translator
from .experiment import Experiment, RunHandle
from .session import global_rank

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
        self._ended_hash: str | None = None  # closed at train end; resumed if more is logged
        self._trained = False  # the current run has begun training (the next trial needs a new run)
        self._params_logged = False
        self._trials = 0
        self._main: bool | None = None
        self._base_name: str | None = self._config.run_name
        self._placed: dict[str, bool] = {}  # key -> the routing table gives it a subset
        self._saved: dict[str, float] = {}  # checkpoint folder -> mtime stored

    # -- the run ------------------------------------------------------------------------------------

    @property
    def experiment(self) -> RunHandle:
        """``aim.Run``'s writing surface over this callback's run (a do-nothing stand-in off rank 0).

        The handle follows the callback: after ``train()`` closed the run, tracking through it continues
        the same AIM run."""
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

    def close(self, status: str = "finished") -> None:
        """Close the run now (after a final ``trainer.evaluate()``, say) instead of at process exit."""
        if self._exp is not None and self._ended_hash is None:
            self._exp.close(status)
            self._ended_hash = self._exp.hash if self._exp.enabled else None

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
        if self._exp is None:
            main = self._is_main(state)
            self._exp = Experiment(self._config.replace(run_name=self._base_name), enabled=main)
        elif self._ended_hash is not None:
            # aim keeps a closed Run's storage open in this process through reference cycles (an
            # in-process sink); resuming while they live corrupts the run's existing series
            gc.collect()
            resumed = self._config.replace(run_hash=self._ended_hash, run_name=None, tags=None)
            self._exp, self._ended_hash = Experiment(resumed), None
        return self._exp

    def _translator(self, state: Any) -> Translator | None:
        if not self._is_main(state):
            return None
        return self._live(state).translator

    # -- Trainer events -----------------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
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
        self._trained = True
        self._log_params(args, state, model)

    def _begin_trial(self, state: Any) -> None:
        """One run per trial: the first reuses the run opened at init, later ones start afresh."""
        name = state.trial_name or f"trial-{self._trials}"
        run_name = f"{self._base_name}-{name}" if self._base_name else name
        if self._trained:
            self.close("finished")
            self._exp, self._ended_hash = Experiment(self._config.replace(run_name=run_name)), None
            self._params_logged = False
            self._saved.clear()
        elif (translator := self._live(state).translator) is not None:
            translator.run_info(name=run_name)
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
            translator.params(args, key="hparams")
        if model is not None:
            translator.params(_model_params(model), key="model")

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or not self._is_main(state):
            return
        translator = self._translator(state)
        if translator is None:
            return
        final = "train_runtime" in logs  # the end-of-train() dict: all of it is summary
        summary = {key: value for key, value in logs.items() if final or key in _SUMMARY_KEYS}
        values = {key: value for key, value in logs.items() if key not in summary}
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
                self._store_folder(folder, f"checkpoints/{name}", args)
                self._saved[folder] = mtime

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not self._is_main(state):
            return
        translator = self._translator(state)
        if translator is None:
            return
        if state.best_model_checkpoint:
            translator.params({"best": state.best_model_checkpoint}, key="checkpoints")
        if self._config.log_model is True and model is not None:
            with tempfile.TemporaryDirectory() as folder:
                _save_model(model, kwargs.get("processing_class"), folder)
                self._store_folder(folder, "model", args)
        self.close("finished")

    # -- helpers ------------------------------------------------------------------------------------

    def _scalars(self, translator: Translator, values: Mapping[str, Any], state: Any, subset: str) -> None:
        """``Trainer``'s keys name no subset for training values (``loss``, ``grad_norm``): those go to
        ``subset``; keys the routing table places (``eval_*``, ``test_*``) keep their own."""
        routed: dict[str, Any] = {}
        unplaced: dict[str, Any] = {}
        for key, value in values.items():
            placed = self._placed.get(key)
            if placed is None:
                found = translator.table(key)
                placed = self._placed[key] = "subset" in found.context or found.name != key
            (routed if placed else unplaced)[key] = value
        if routed:
            translator.scalars(routed, state.global_step, state.epoch)
        if unplaced:
            translator.scalars(unplaced, state.global_step, state.epoch, {"subset": subset})

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


def _model_params(model: Any) -> dict[str, Any]:
    total = trainable = 0
    for parameter in model.parameters():
        count = parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    found: dict[str, Any] = {
        "class": type(model).__name__,
        "num_parameters": total,
        "trainable_parameters": trainable,
    }
    config = getattr(model, "config", None)
    if config is not None:
        found["config"] = config
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        # PEFT's enums are str subclasses that core.params passes through as-is and aim refuses to
        # encode; a JSON round trip leaves plain strings (remove once core.params converts them)
        found["peft_config"] = json.loads(json.dumps(to_params(peft_config)))
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
