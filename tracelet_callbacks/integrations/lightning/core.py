"""What ``TraceletAimLogger`` does, without importing Lightning.

``lightning`` and ``pytorch_lightning`` ship two copies of the same classes, and a trainer of one
wants a logger of the same package. This module imports neither: :mod:`.logger` and
:mod:`.pytorch_lightning` each combine :class:`AimLoggerCore` with their package's ``Logger``. (Both
share one ``rank_zero_only`` from ``lightning_utilities``, so one set of decorators serves both.)

**How the logger sees the trainer.** Lightning gives a logger no trainer; the order in which
``Trainer._run`` calls the logger, and where the trainer's settings are picked up (``log_graph``, which
carries ``module.trainer``), is in docs/architecture.md, "How the Lightning logger sees the trainer".

**Resuming.** ``version`` (the AIM run hash) is asked before Lightning reads the checkpoint, so the
run that wrote each checkpoint is recorded beside it and found again from the ``Trainer._run`` frame
(see :func:`~tracelet_callbacks.integrations.lightning.resume.running_trainer`). ``run_hash=`` wins.

**One run across stages.** ``finalize`` closes the run (flushed, status recorded, indexed); a later
``validate`` / ``test`` with the same logger reopens that same run. The keywords: :mod:`.keywords`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from lightning_utilities.core.rank_zero import rank_zero_only

from ...config import TraceletConfig
from ...core.translator import Translator
from ...errors import TraceletError, WarnOnce
from ...run.checkpoints import CheckpointStore
from ...run.experiment import Experiment, RunHandle
from ...run.lifecycle import RunLifecycle
from .info import (
    attached_trainer,
    checkpoint_files,
    checkpoint_summary,
    final_status,
    model_params,
    store_optimizers,
    store_trainer,
)
from .keywords import LoggerKeywords
from .resume import (
    CHECKPOINT_INDEX,
    foreign_checkpoint,
    index_checkpoints,
    point_of_checkpoint,
    repo_label,
    running_trainer,
)

__all__ = ["CHECKPOINT_INDEX", "AimLoggerCore"]

#: Artifact folder that checkpoints are stored under (``log_model``).
CHECKPOINT_FOLDER = "checkpoints"


def _rank() -> int:
    return getattr(rank_zero_only, "rank", 0) or 0


class AimLoggerCore(LoggerKeywords):
    """The logger's behaviour; see :class:`.logger.TraceletAimLogger`."""

    #: The flavour's ``Trainer`` class, to recognise the trainer that runs this logger.
    _trainer_type: ClassVar[type | None] = None

    def _setup(self, config: TraceletConfig, prefix: str) -> None:
        """What the constructor does once :class:`.keywords.LoggerKeywords` has read its keywords."""
        self._config = config  # validated, so a bad setting has failed already; nothing is opened yet
        self._prefix = prefix
        # ranks are Lightning's decorators' business (the rank is known only once the strategy is set)
        self._runs = RunLifecycle(self._config)
        self._trainer_ref: Callable[[], Any] | None = None
        self._optimizers_pending = False
        self._trainer_stored = False
        self._checkpoint_callbacks: list[Any] = []
        self._checkpoints = CheckpointStore()
        self._warn = WarnOnce()

    # -- the run ------------------------------------------------------------------------------------

    def _live(self) -> Experiment:
        """The experiment, made (not opened) on first use, continuing the run that wrote the
        checkpoint being loaded, if any."""
        return self._runs.current(self._checkpoint_run)

    def _checkpoint_run(self) -> Any:
        trainer, checkpoint = running_trainer(self, self._trainer_type, self._trainer_ref)
        if trainer is not None:
            self._trainer_ref = weakref.ref(trainer)
        return point_of_checkpoint(checkpoint, self._config)  # a run that is gone: a new one

    def _opened(self) -> Experiment:
        return self._live().open()  # a bad repo or a server that is down fails here

    def _translator(self) -> Translator | None:
        return self._live().open().translator

    # -- the Logger contract ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The AIM experiment name."""
        return self._config.experiment_name

    @property
    def version(self) -> str | None:
        """The AIM run hash, known without opening the run (on other ranks: the known hash, or ``None``)."""
        if _rank() > 0:
            return self._runs.known_hash
        self._live()  # made here, so the checkpoint's run is the one named
        return self._runs.hash  # chosen in this process: ddp_spawn's rank 0 makes the run under it

    @property
    def save_dir(self) -> str | None:
        """The running ``Trainer``'s ``default_root_dir`` (``None`` before one runs this logger): we
        write no files, so checkpoints go to ``<root>/<experiment>/<run hash>/checkpoints``, never into
        the AIM repo folder a team may share (``log_model`` stores them redacted); LightningCLI's
        ``config.yaml`` goes to ``<root>``, and into the run as ``run["config"]``."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            trainer = running_trainer(self, self._trainer_type)[0]
        root = getattr(trainer, "default_root_dir", None)
        return str(root) if root is not None else None

    @property
    def root_dir(self) -> None:
        return None

    @property
    def log_dir(self) -> None:
        return None

    @property
    def experiment(self) -> RunHandle:
        """The run handle (``track``, ``run[key] = value`` ...); on other ranks a stand-in that, as
        Lightning's ``DummyExperiment``, swallows any call (its ``hash`` is ``None``)."""
        if _rank() > 0:
            return self._runs.stand_in.run
        self._live()
        return self._runs.handle

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Mapping[str, Any] | None = None) -> None:
        """Hyperparameters under ``run["hparams"]`` (merged); ``metrics`` as scalars."""
        translator = self._translator()
        if translator is None:
            return
        translator.params(params, key="hparams")
        if metrics:
            translator.scalars(metrics)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Scalars at ``step``, routed by the core; Lightning's ``epoch`` key becomes AIM's epoch.

        Called on every rank: the other ranks note the step for their step time and write nothing."""
        if _rank() > 0:
            self._runs.stand_in.note_step(step)
            return
        translator = self._translator()
        if translator is None:
            return
        if self._optimizers_pending:
            self._optimizers_pending = not store_optimizers(translator, self._trainer_ref)
        if self._prefix:  # Lightning's loggers join a prefix with "-"; its epoch counter stays AIM's epoch
            prefix = self._prefix
            metrics = {key if key == "epoch" else f"{prefix}-{key}": value for key, value in metrics.items()}
        translator.scalars(metrics, step)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Parameter counts, and (with the trainer it brings) the trainer and optimizer configuration."""
        translator = self._translator()
        if translator is None:
            return
        translator.params(model_params(model), key="model")
        if self._config.watch is not None:  # until this run ends: a next fit's model is watched anew
            self._watch(model, self._config.watch, self._config.watch_freq, for_this_run=True)
        if (trainer := attached_trainer(model)) is None:
            return
        self._trainer_ref = weakref.ref(trainer)
        if (message := foreign_checkpoint(trainer, self._config, self.version)) is not None:
            self._warn("checkpoint run", message)
        stage = getattr(getattr(trainer, "state", None), "fn", None)
        fitting = getattr(stage, "value", stage) == "fit"
        if fitting or not self._trainer_stored:  # a test-only run gets the test trainer's settings
            self._trainer_stored = True
            store_trainer(translator, trainer)
        if fitting:  # validate / test keep the fit's optimizers around, with their decayed lr
            self._optimizers_pending = not store_optimizers(translator, self._trainer_ref)

    @rank_zero_only
    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100) -> None:
        """As :meth:`tracelet_callbacks.Experiment.watch`, at the trainer's ``global_step``; the ``watch=``
        setting watches the trained module without this call."""
        self._watch(model, log, log_freq, for_this_run=False)

    def _watch(self, model: Any, log: str | None, log_freq: int, for_this_run: bool) -> None:
        steps_done = lambda: getattr(self._trainer_ref and self._trainer_ref(), "global_step", None)  # noqa: E731
        self._runs.watch(model, log, log_freq, steps_done, for_this_run)

    @rank_zero_only
    def unwatch(self, model: Any = None) -> None:
        self._runs.unwatch(model)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Index the checkpoint's run for resuming; with ``log_model="all"`` store it as an artifact."""
        exp = self._opened()
        if not any(known is checkpoint_callback for known in self._checkpoint_callbacks):
            self._checkpoint_callbacks.append(checkpoint_callback)
        step = getattr(self._trainer_ref and self._trainer_ref(), "global_step", None)
        index_checkpoints(checkpoint_callback, {"run_hash": exp.hash, "repo": repo_label(self._config)}, step)
        if exp.translator is not None:
            exp.translator.params(checkpoint_summary(checkpoint_callback), key="checkpoint")
        if self._config.log_model == "all":
            files = checkpoint_files(checkpoint_callback, everything=True)
            self._checkpoints.store(exp, files, CHECKPOINT_FOLDER)

    def save(self) -> None:
        """Nothing: Lightning calls this after every ``log_metrics``; a flush per step would cost a round
        trip to the writer. Values are durable within ``flush_secs``, and all of them at ``finalize``."""

    def finalize(self, status: str) -> None:
        """Close the run with ``status`` (``success`` -> ``finished``), storing ``log_model=True`` models.

        A later ``validate`` / ``test`` with this logger continues the same run. Other ranks hand their
        last system sample to rank 0 here."""
        if _rank() > 0:
            self._runs.stand_in.flush()
            return
        if not self._runs.started:
            return  # no run was ever needed
        status = final_status(status)
        exp = self._runs.current()
        if exp.is_open and status == "finished" and self._config.log_model is True:
            for callback in self._checkpoint_callbacks:
                files = checkpoint_files(callback, everything=False)
                self._checkpoints.store(exp, files, CHECKPOINT_FOLDER)
        try:
            self._runs.end(status)
        except TraceletError as exc:  # Lightning is tearing down, maybe after another error: no raise
            self._warn("close", f"tracelet: closing the AIM run failed: {exc}")

    # -- helpers ------------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Live handles stay behind; the run travels by hash (see :class:`RunLifecycle`).

        Pickled before any run exists (``ddp_spawn`` copies the logger into new processes), the run's
        hash is chosen here: every copy makes or continues that one run, and this process knows it."""
        if _rank() == 0:
            self._runs.reserve()
        state = self.__dict__.copy()
        state.update(_trainer_ref=None, _checkpoint_callbacks=[])
        return state
