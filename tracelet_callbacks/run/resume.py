"""Which run wrote a checkpoint, carried by the checkpoint itself, so a new process continues that run.

When a checkpoint is saved (the Hugging Face callback at each ``on_save``, a plain script through
``Experiment.mark_checkpoint``) a small ``tracelet-run.json`` goes into its folder (or beside a file,
as ``<file>.tracelet-run.json``): the run hash, the step, and the repo or server. Loading that
checkpoint in a new process (``trainer.train(resume_from_checkpoint=...)``, ``resume_from=``) finds
it, continues that run, and rewinds it to the step (see :mod:`~tracelet_callbacks.sink.rewind`).
The file holds no setting and no secret.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ..config import TraceletConfig
from ..errors import say

__all__ = ["IDENTITY_FILE", "ResumePoint", "find_resume_point", "mark_checkpoint"]

log = logging.getLogger("tracelet_callbacks")

#: The file a checkpoint folder carries (``<file>.tracelet-run.json`` beside a checkpoint file).
IDENTITY_FILE = "tracelet-run.json"


@dataclass(frozen=True)
class ResumePoint:
    """The run a checkpoint belongs to and the step it was taken at (``None``: not known)."""

    run_hash: str
    step: int | None


def repo_label(config: TraceletConfig) -> str:
    """Where runs of ``config`` live: the server's address or the repo folder."""
    return config.remote_uri or os.path.abspath(config.repo_path)


def _identity_path(checkpoint: str | os.PathLike) -> str:
    path = os.fspath(checkpoint)
    return os.path.join(path, IDENTITY_FILE) if os.path.isdir(path) else f"{path}.{IDENTITY_FILE}"


def mark_checkpoint(
    checkpoint: str | os.PathLike, run_hash: str, step: int | None, config: TraceletConfig
) -> None:
    """Record in (or beside) ``checkpoint`` that ``run_hash`` wrote it at ``step``.

    Raises ``OSError`` when it cannot be written (the caller decides whether that matters).
    """
    path = _identity_path(checkpoint)
    entry = {"run_hash": run_hash, "step": step, "repo": repo_label(config), "time": time.time()}
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(entry, handle, indent=1, sort_keys=True)
    os.replace(temporary, path)


def find_resume_point(checkpoint: str | os.PathLike | None, config: TraceletConfig) -> ResumePoint | None:
    """The run that wrote ``checkpoint``, if it says so and lives where ``config`` logs to."""
    if not checkpoint or "://" in os.fspath(checkpoint):
        return None
    try:
        with open(_identity_path(checkpoint), encoding="utf-8") as handle:
            entry: Any = json.load(handle)
    except (OSError, ValueError):
        return None
    run_hash = entry.get("run_hash") if isinstance(entry, dict) else None
    if not isinstance(run_hash, str):
        return None
    if not run_hash.strip():
        say(f"tracelet: {_identity_path(checkpoint)} names no run (an empty run_hash): a new run")
        return None
    if entry.get("repo") != repo_label(config):
        log.info(
            "tracelet: checkpoint %s belongs to a run in %s, not here: a new run",
            checkpoint,
            entry.get("repo"),
        )
        return None
    step = entry.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        step = None
    elif step < 0:  # would rewind the whole run
        say(f"tracelet: {_identity_path(checkpoint)} holds step {step}: run {run_hash} continues unrewound")
        step = None
    return ResumePoint(run_hash, step)
