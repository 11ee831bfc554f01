"""``TraceletWriter``: a ``SummaryWriter`` whose every ``add_*`` also lands in AIM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...run.experiment import Experiment
from ...run.experiment import active as active_experiment
from ...run.ranks import global_rank
from .forwarding import WRAPPED, SummaryWriter

__all__ = ["TraceletWriter"]


class _NoEventFiles:
    """Stands in for TensorBoard's FileWriter when ``tensorboard=False``: no folder, no event file."""

    def __init__(self, log_dir: str) -> None:
        self._log_dir = log_dir

    def get_logdir(self) -> str:
        return self._log_dir

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        pass

    add_summary = add_graph = add_onnx_graph = add_event

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def reopen(self) -> None:
        pass


class TraceletWriter(SummaryWriter):
    """A ``SummaryWriter`` that also sends every ``add_*`` to an AIM run.

    Args:
        log_dir, comment, purge_step, max_queue, flush_secs, filename_suffix: as ``SummaryWriter``.
        tensorboard: keep writing TensorBoard event files too (default); ``False`` writes AIM only.
        experiment: log into this :class:`~tracelet_callbacks.Experiment` instead of opening a run.
        config: a settings dict; ``**settings``: any setting keyword (``repo_path``, ``run_name`` ...).
            Note ``flush_secs`` here is TensorBoard's; AIM's is ``config={"flush_secs": ...}``.

    With no settings while ``start_logging`` is active, the writer logs into that session's run.

    Example::

        writer = TraceletWriter(repo_path="./aim_repo", run_name="baseline")
        writer.add_scalar("train/loss", 0.5, global_step=1)   # AIM metric "loss", subset train
        writer.close()                                         # closes the run: status "finished"
    """

    def __init__(
        self,
        log_dir: str | None = None,
        comment: str = "",
        purge_step: int | None = None,
        max_queue: int = 10,
        flush_secs: int = 120,
        filename_suffix: str = "",
        *,
        tensorboard: bool = True,
        experiment: Experiment | None = None,
        config: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self._tracelet_tensorboard = tensorboard
        self._tracelet_owns = experiment is None
        if experiment is None:
            active = active_experiment()
            if active is not None and not settings and not config:
                experiment, self._tracelet_owns = active, False
            else:
                experiment = Experiment(config, enabled=global_rank() == 0, **settings)
        self._tracelet_experiment = experiment
        super().__init__(log_dir, comment, purge_step, max_queue, flush_secs, filename_suffix)

    def _get_file_writer(self) -> Any:
        if self._tracelet_tensorboard:
            return super()._get_file_writer()
        if self.file_writer is None:
            self.file_writer = _NoEventFiles(self.log_dir)
            self.all_writers = {self.log_dir: self.file_writer}
        return self.file_writer

    @property
    def experiment(self) -> Experiment:
        """The :class:`~tracelet_callbacks.Experiment` this writer logs into."""
        return self._tracelet_experiment

    def flush(self) -> None:
        super().flush()
        self._tracelet_experiment.flush()

    def close(self, status: str = "finished") -> None:
        """Close the event files and, if this writer opened the run, the run with ``status``."""
        super().close()
        if self._tracelet_owns:
            self._tracelet_experiment.close(status)

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.close("finished")
        else:
            self.close("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")


for _name, _method in WRAPPED.items():
    setattr(TraceletWriter, _name, _method)
