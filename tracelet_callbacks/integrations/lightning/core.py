"""What ``TraceletAimLogger`` does, without importing Lightning.

``lightning`` and ``pytorch_lightning`` ship two copies of the same classes, and a trainer of one
wants a logger of the same package. This module imports neither: :mod:`tracelet_callbacks.lightning`
and :mod:`tracelet_callbacks.pytorch_lightning` each combine :class:`AimLoggerCore` with their
package's ``Logger`` in a few lines. (Both packages share one ``rank_zero_only`` from
``lightning_utilities``, so one set of rank-zero decorators serves both.)

**How the logger sees the trainer.** Lightning gives a logger no trainer. ``Trainer._run`` (lightning
2.x) calls it in this order:

1. ``experiment`` (``_call_setup_hook``), then ``ModelCheckpoint.setup`` reads ``save_dir``, ``name``
   and ``version`` to build its default folder;
2. the checkpoint given to ``fit(ckpt_path=...)`` is read; ``strategy.setup`` builds the optimizers;
3. ``log_hyperparams(module + datamodule hparams)``, ``log_graph(module)``, ``save()``;
4. ``log_metrics`` as the loops run, ``after_save_checkpoint`` after each checkpoint;
5. ``finalize("success")`` at the end of each fit / validate / test, ``finalize("failed")`` on an
   exception.

``log_graph`` is the first call that carries the trainer (``module.trainer``): there the logger stores
the trainer's configuration, the optimizers and schedulers (built in step 2 while fitting; a strategy
that builds them later gets them stored at the first ``log_metrics``) and the parameter counts.

**Resuming.** ``version`` is the AIM run hash and is asked in step 1, before Lightning has read the
checkpoint. So each ``after_save_checkpoint`` records which run wrote which file in a small index
beside the checkpoints (``tracelet-runs.json``), and when the logger first needs its run it looks for
the ``Trainer._run`` call on the stack that lists this logger and reads the checkpoint path it was
given. That stack look-up is the one place we lean on a Lightning internal; without it we fall back
to ``trainer.ckpt_path`` and, if a different run was already opened, say so. ``run_hash=`` names the
run explicitly and always wins.

Why no cleaner signal (checked against lightning 2.6.6): ``fit`` / ``validate`` / ``test`` pass the
result of ``_checkpoint_connector._select_ckpt_path(...)`` to ``_run`` only as an argument.
``trainer.ckpt_path`` reads ``_checkpoint_connector._ckpt_path``, which ``resume_start`` sets inside
``_restore_modules_and_callbacks``, after ``_call_setup_hook`` has already asked for the run (step 1
above); before that it holds only what a user assigned with ``trainer.ckpt_path = ...`` (which the
frame's ``ckpt_path`` then equals anyway). So the ``_run`` frame is the only place the path exists in
time.

**One run across stages.** ``finalize`` closes the run (flushed, status recorded, indexed, so
``aim.Repo`` sees it as soon as ``fit`` returns); a later ``validate`` / ``test`` with the same logger
reopens that same run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from lightning_utilities.core.rank_zero import rank_zero_only

from .info import (
    CHECKPOINT_INDEX,
    checkpoint_files,
    checkpoint_summary,
    index_checkpoints,
    model_params,
    optimizer_params,
    repo_label,
    run_of_checkpoint,
    scrubbed_checkpoint,
    trainer_params,
)
from ...config import TraceletConfig, resolve
from ...core.records import normalise_status
from ...core.translator import Translator
from ...errors import TraceletError, TraceletWarning
from ...run.experiment import Experiment, RunHandle

__all__ = ["CHECKPOINT_INDEX", "AimLoggerCore"]

#: Artifact folder that checkpoints are stored under (``log_model``).
CHECKPOINT_FOLDER = "checkpoints"
_STACK_DEPTH = 24


def _rank() -> int:
    return getattr(rank_zero_only, "rank", 0) or 0


class AimLoggerCore:
    """The logger's behaviour; see :class:`tracelet_callbacks.lightning.TraceletAimLogger`."""

    #: The flavour's ``Trainer`` class, to recognise the trainer that runs this logger.
    _trainer_type: ClassVar[type | None] = None

    def __init__(self, config: Mapping[str, Any] | TraceletConfig | None = None, **settings: Any) -> None:
        super().__init__()
        # resolved now so a bad setting fails here, not mid-training; nothing is opened yet
        if isinstance(config, TraceletConfig):
            self._config = config.replace(**settings) if settings else config
        else:
            self._config = resolve(settings, config)
        self._run_hash: str | None = self._config.run_hash
        self._exp: Experiment | None = None
        self._trainer_ref: Callable[[], Any] | None = None
        self._optimizers_pending = False
        self._trainer_stored = False
        self._checkpoint_callbacks: list[Any] = []
        self._logged_model_time: dict[str, float] = {}
        self._warned: set[str] = set()

    # -- the run ------------------------------------------------------------------------------------

    def _live(self) -> Experiment:
        """The experiment, created (not opened) on first use; this is where the run to continue is chosen."""
        if self._exp is None:
            run_hash = self._run_hash
            if run_hash is None:
                _trainer, checkpoint = self._running_trainer()
                run_hash = run_of_checkpoint(checkpoint)
            self._exp = Experiment(self._config.replace(run_hash=run_hash))
        return self._exp

    def _opened(self) -> Experiment:
        exp = self._live()
        if not exp.is_open:
            exp.open()  # a checkpoint's run missing from this repo is an error here or at `version`
        return exp

    def _translator(self) -> Translator | None:
        exp = self._exp
        if exp is None or not exp.is_open:
            exp = self._opened()
        return exp.translator

    def _running_trainer(self) -> tuple[Any, Any]:
        """The trainer running this logger and the checkpoint it was asked to load.

        Read from the ``Trainer._run`` frame on the stack, because ``trainer.ckpt_path`` is only set
        after the logger has had to name its run (see the module docstring).
        """
        trainer_type = self._trainer_type
        frame = sys._getframe(1)
        for _ in range(_STACK_DEPTH):
            if frame is None or trainer_type is None:
                break
            if frame.f_code.co_name == "_run":
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, trainer_type) and self._runs_me(candidate):
                    self._trainer_ref = weakref.ref(candidate)
                    return candidate, frame.f_locals.get("ckpt_path")
            frame = frame.f_back
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        return trainer, getattr(trainer, "ckpt_path", None)

    def _runs_me(self, trainer: Any) -> bool:
        return any(logger is self for logger in getattr(trainer, "loggers", None) or ())

    # -- the Logger contract ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The AIM experiment name."""
        return self._config.experiment_name

    @property
    def version(self) -> str | None:
        """The AIM run hash (opens the run on rank 0; the known hash, or ``None``, elsewhere)."""
        if self._run_hash is None and _rank() == 0:
            # asked only here: the writer opens the run in the background, and the hash waits for it
            self._run_hash = self._opened().hash
        return self._run_hash

    @property
    def save_dir(self) -> str | None:
        """The local repo folder; ``None`` for a remote server (checkpoints then go to the trainer's root)."""
        return None if self._config.remote_uri else self._config.repo_path

    @property
    def root_dir(self) -> str | None:
        return None if self.save_dir is None else os.path.join(self.save_dir, self.name)

    @property
    def log_dir(self) -> str | None:
        root = self.root_dir
        return None if root is None else os.path.join(root, str(self.version))

    @property
    def experiment(self) -> RunHandle:
        """The run handle (``track``, ``run[key] = value`` ...); a do-nothing stand-in on non-zero ranks.

        Lightning's own ``_DummyExperiment`` would answer ``hash`` with a function; ours answers ``None``.
        """
        if _rank() > 0:
            return Experiment(self._config, enabled=False).run
        return self._live().run

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Mapping[str, Any] | None = None) -> None:
        """Hyperparameters under ``run["hparams"]`` (merged); ``metrics`` as scalars."""
        translator = self._translator()
        if translator is None:
            return
        translator.params(params, key="hparams")
        if metrics:
            translator.scalars(metrics)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Scalars at ``step``, routed by the core; Lightning's ``epoch`` key becomes AIM's epoch."""
        translator = self._translator()
        if translator is None:
            return
        if self._optimizers_pending:
            self._store_optimizers(translator)
        epoch = None
        if "epoch" in metrics:
            metrics = dict(metrics)
            epoch = metrics.pop("epoch")
        translator.scalars(metrics, step, epoch)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Parameter counts, and (with the trainer it brings) the trainer and optimizer configuration."""
        translator = self._translator()
        if translator is None:
            return
        translator.params(model_params(model), key="model")
        try:
            trainer = model.trainer
        except (AttributeError, RuntimeError):  # a module not attached to a trainer
            return
        if trainer is None:
            return
        self._trainer_ref = weakref.ref(trainer)
        self._check_checkpoint_run(trainer)
        stage = getattr(getattr(trainer, "state", None), "fn", None)
        fitting = getattr(stage, "value", stage) == "fit"
        if fitting or not self._trainer_stored:  # a test-only run gets the test trainer's settings
            self._trainer_stored = True
            translator.params(trainer_params(trainer), key="trainer")
        if fitting:  # validate / test keep the fit's optimizers around, with their decayed lr
            self._optimizers_pending = True
            self._store_optimizers(translator)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Index the checkpoint's run for resuming; with ``log_model="all"`` store it as an artifact."""
        exp = self._opened()
        if not any(known is checkpoint_callback for known in self._checkpoint_callbacks):
            self._checkpoint_callbacks.append(checkpoint_callback)
        index_checkpoints(checkpoint_callback, {"run_hash": exp.hash, "repo": repo_label(self._config)})
        if exp.translator is not None:
            exp.translator.params(checkpoint_summary(checkpoint_callback), key="checkpoint")
        if self._config.log_model == "all":
            self._store_checkpoints(exp, checkpoint_files(checkpoint_callback, everything=True))

    def save(self) -> None:
        """Nothing: Lightning calls this after every ``log_metrics``, and a flush here would cost a round
        trip to the writer per step. Values become durable within ``flush_secs`` and at ``finalize``."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Close the run with ``status`` (``success`` -> ``finished``), storing ``log_model=True`` models."""
        exp, self._exp = self._exp, None
        if exp is None:
            return  # no run was ever needed
        if status == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            status = "interrupted"  # Lightning says "failed" for Ctrl-C too
        try:
            status = normalise_status(status)
        except ValueError:
            status = "failed"
        if exp.is_open:
            if status == "finished" and self._config.log_model is True:
                for callback in self._checkpoint_callbacks:
                    self._store_checkpoints(exp, checkpoint_files(callback, everything=False))
            with contextlib.suppress(TraceletError):  # a run that never opened: close says so
                self._run_hash = exp.hash
        try:
            exp.close(status)
        except TraceletError as exc:  # Lightning is tearing down, maybe after another error: no raise
            self._warn(f"tracelet: closing the AIM run failed: {exc}")

    # -- helpers ------------------------------------------------------------------------------------

    def _store_optimizers(self, translator: Translator) -> None:
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        optimizers, schedulers = optimizer_params(trainer)
        if not optimizers:
            return
        self._optimizers_pending = False
        translator.params(optimizers, key="optimizers")
        if schedulers:
            translator.params(schedulers, key="schedulers")

    def _store_checkpoints(self, exp: Experiment, paths: Iterable[str]) -> None:
        """Store each checkpoint file not stored since it was last written (a ``{path: mtime}`` scan),
        with secrets in its saved hyperparameters redacted (DESIGN: stored checkpoints carry none)."""
        for path in paths:
            try:
                mtime = os.path.getmtime(path)
            except OSError:
                continue
            if self._logged_model_time.get(path, -1.0) >= mtime:
                continue
            with tempfile.TemporaryDirectory(prefix="tracelet-ckpt-") as scratch:
                try:
                    stored = scrubbed_checkpoint(path, scratch)
                except Exception as exc:  # unreadable: never store what we could not check
                    self._warn(
                        f"tracelet: checkpoint {path!r} was not stored: its hyperparameters could not be "
                        f"checked for secrets ({type(exc).__name__}: {exc})"
                    )
                    continue
                try:  # waits for the copy, so the scratch folder may go afterwards
                    exp.log_artifact(stored, artifact_path=CHECKPOINT_FOLDER)
                except (TraceletError, OSError, ValueError) as exc:  # storing must not stop training
                    self._warn(f"tracelet: could not store checkpoint {path!r}: {exc}")
                    continue
            self._logged_model_time[path] = mtime

    def _check_checkpoint_run(self, trainer: Any) -> None:
        recorded = run_of_checkpoint(getattr(trainer, "ckpt_path", None))
        if recorded and self._config.run_hash is None and recorded != self.version:
            self._warn(
                f"tracelet: the checkpoint being loaded belongs to AIM run {recorded}, but this logger "
                f"already writes to run {self.version} (its run was opened before fit); pass "
                f"run_hash={recorded!r} to continue that run"
            )

    def _warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, TraceletWarning, stacklevel=3)

    def __getstate__(self) -> dict[str, Any]:
        """Live handles stay behind; the run hash travels, so a copy continues the same run."""
        state = self.__dict__.copy()
        exp = state["_exp"]
        if exp is not None and exp.is_open:
            state["_run_hash"] = exp.hash
        state.update(_exp=None, _trainer_ref=None, _checkpoint_callbacks=[])
        return state
