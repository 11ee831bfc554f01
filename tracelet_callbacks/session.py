"""The seed's plain-script API: ``start_logging`` / ``get_active_experiment`` / ``stop_logging``.

While a session is active, every ``torch.utils.tensorboard.SummaryWriter`` (even one imported or
created before ``start_logging``) also sends its ``add_*`` calls to the session's AIM run.

A process forked during a session (a DataLoader worker, a forked evaluation) sees the session but
never writes its run: what it logs is dropped with one warning, and its ``stop_logging()`` ends only
its own view of the session, never the parent's run. Its own ``start_logging()`` opens a run of its
own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from .config import TraceletConfig, explicit, resolve
from .errors import TraceletWarning
from .run.experiment import Experiment, active, swap_active
from .run.ranks import global_rank

__all__ = ["SUPPORTED_BACKENDS", "get_active_experiment", "start_logging", "stop_logging"]

log = logging.getLogger("tracelet_callbacks")

SUPPORTED_BACKENDS = ("aim",)

_lock = threading.RLock()


def _new_lock() -> None:
    global _lock
    _lock = threading.RLock()  # in a forked child: a parent's thread may have held it at the fork


os.register_at_fork(after_in_child=_new_lock)


def start_logging(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str = "aim",
    config: Mapping[str, Any] | TraceletConfig | None = None,
    **settings: Any,
) -> Experiment:
    """Open an AIM run and route every ``SummaryWriter`` into it until :func:`stop_logging`.

    Args:
        exp_name: the run's name (unless ``config`` sets ``run_name``).
        project: the AIM experiment the run belongs to (unless ``config`` sets ``experiment_name``).
        backend: ``"aim"``, the one backend this package writes to.
        config: settings such as ``repo_path``, ``experiment_name``, ``run_name``, ``tags``,
            ``remote_uri``, ``buffer_size`` (see :class:`~tracelet_callbacks.config.TraceletConfig`),
            as a dict or a ``TraceletConfig`` (which is complete: the environment is not read again).
        **settings: the same settings as keywords; they win over ``config``.

    Returns:
        The active :class:`~tracelet_callbacks.Experiment`.

    Example::

        import tracelet_callbacks as tracelet
        from torch.utils.tensorboard import SummaryWriter

        tracelet.start_logging(exp_name="baseline", project="my_project", backend="aim")
        writer = SummaryWriter()
        writer.add_scalar("train/loss", 0.5, 1)
        tracelet.stop_logging()
    """
    if not isinstance(backend, str) or backend.lower() not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"tracelet: unknown backend {backend!r}; supported: "
            + ", ".join(repr(b) for b in SUPPORTED_BACKENDS)
        )
    named = {key: value for key, value in (("run_name", exp_name), ("experiment_name", project)) if value}
    if isinstance(config, TraceletConfig):
        resolved = resolve(settings, {**named, **explicit(config)}, env={})
    else:
        resolved = resolve(settings, {**named, **(config or {})})
    with _lock:
        previous = active()
        if previous is not None and previous.inherited:
            stop_logging()  # a forked parent's session: this process's own run replaces it, nothing ends
        elif previous is not None:
            warnings.warn(
                "tracelet: start_logging called while a session is active; "
                "the previous run is finished first",
                TraceletWarning,
                stacklevel=2,
            )
            stop_logging()
        experiment = Experiment(resolved, enabled=global_rank() == 0)
        experiment.open()
        swap_active(experiment)
        _patch_writers()
    return experiment


def get_active_experiment() -> Experiment | None:
    """The experiment :func:`start_logging` opened, or ``None`` outside a session."""
    return active()


def stop_logging(status: str = "finished") -> None:
    """Close the active run (flush, record ``status``, index) and restore ``SummaryWriter``.

    Calling it with no active session does nothing. In a process forked during the session it ends
    the session in that process only: the run is the parent's, which goes on writing and closes it.
    """
    with _lock:
        experiment = swap_active(None)
        _unpatch_writers()
    if experiment is None:
        log.debug("tracelet: stop_logging called with no active session")
        return
    experiment.close(status)


def _tensorboard_available() -> bool:
    return (
        importlib.util.find_spec("torch") is not None and importlib.util.find_spec("tensorboard") is not None
    )


def _patch_writers() -> None:
    if not _tensorboard_available():
        return
    from .integrations.tensorboard.forwarding import patch_summary_writer

    patch_summary_writer()


def _unpatch_writers() -> None:
    import sys

    module = sys.modules.get("tracelet_callbacks.integrations.tensorboard.forwarding")
    if module is not None:
        module.unpatch_summary_writer()
