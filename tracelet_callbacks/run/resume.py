"""Which run wrote a checkpoint, carried by the checkpoint itself, so a new process continues that run.

When a checkpoint is saved (the Hugging Face callback at each ``on_save``, a plain script through
``Experiment.mark_checkpoint``) a small ``tracelet-run.json`` goes into its folder (or beside a file,
as ``<file>.tracelet-run.json``): the run hash, the step, and the repo or server. Loading that
checkpoint in a new process (``trainer.train(resume_from_checkpoint=...)``, ``resume_from=``) finds
it, continues that run, and rewinds it to the step (see :mod:`~tracelet_callbacks.sink.rewind`).
The file holds no setting and no secret.

The run is continued when it is in the repo being written to, however that repo is reached (a
symlink, a project folder moved with its checkpoints); a run that is not there (deleted, or of
another repo or server) is one warning and a new run (:func:`checked_point`), never a failed start.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from ..config import TraceletConfig
from ..errors import say

__all__ = [
    "IDENTITY_FILE",
    "ResumePoint",
    "checked_point",
    "find_resume_point",
    "gone_from_server",
    "mark_checkpoint",
    "not_on_server",
    "recorded_step",
    "run_not_found",
    "why_not_here",
]

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


def _same_repo(recorded: Any, config: TraceletConfig) -> bool:
    """Whether ``recorded`` (a checkpoint's ``repo``) is where ``config`` logs: the same server address,
    or the same folder however it is spelled or reached (a symlink, a bind mount)."""
    here = repo_label(config)
    if recorded == here:
        return True
    if config.remote_uri or not isinstance(recorded, str) or "://" in recorded:
        return False
    try:
        return os.path.samefile(recorded, here)
    except OSError:  # the recorded folder is gone (moved, deleted) or cannot be read
        return False


def _in_local_repo(run_hash: str, repo_path: str) -> bool:
    """Whether the local repo holds ``run_hash``, read as aim's ``Repo.run_exists`` does (a folder per
    run under ``.aim/meta/chunks``), so the training process need not import aim to know."""
    if run_hash.strip() in ("", ".", "..") or os.path.basename(run_hash) != run_hash:
        return False  # not a run's name, whatever folder it would lead to
    return os.path.isdir(os.path.join(repo_path, ".aim", "meta", "chunks", run_hash))


#: ``(server, run hash)`` of checkpoints' runs a server said it does not hold: no later advice in this
#: process offers to continue them.
_NOT_ON_SERVER: set[tuple[str, str]] = set()


def not_on_server(run_hash: str, config: TraceletConfig) -> None:
    """Note that the server ``config`` logs to holds no run ``run_hash`` (see :func:`why_not_here`)."""
    if config.remote_uri:
        _NOT_ON_SERVER.add((config.remote_uri, run_hash))


def gone_from_server(point: ResumePoint, config: TraceletConfig, checkpoint: Any = None) -> None:
    """The server ``config`` logs to said it holds no run ``point.run_hash``: note it, so no later
    advice offers to continue it, and warn once that training goes on in a new run."""
    not_on_server(point.run_hash, config)
    checked_point(point, config.remote_uri, config, checkpoint)


def run_not_found(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from (the writer process's), says the server holds
    no such run."""
    from ..sink.forward import RunNotFound  # no aim import: the class only

    while exc is not None:
        if isinstance(exc, RunNotFound):
            return True
        exc = exc.__cause__
    return False


def why_not_here(run_hash: str, recorded: Any, config: TraceletConfig) -> str | None:
    """Why the run ``run_hash``, recorded with repo ``recorded``, cannot be continued where ``config``
    logs; ``None`` when it can.

    A local repo is asked whether it holds the run: the repo's path at the time says nothing (a repo
    reached through a symlink, or moved with its project folder, still holds it; a run deleted since
    does not). A server is asked by the writer only, when the run is opened (``RunLifecycle`` starts a
    new run when it is not there), so here the recorded address must match.

    >>> import tempfile
    >>> from tracelet_callbacks.config import resolve
    >>> folder = tempfile.mkdtemp()
    >>> why_not_here("0123456789abcdef01234567", folder, resolve({"repo_path": folder}, env={}))
    'the AIM repo ... holds no such run (deleted?)'
    >>> os.makedirs(os.path.join(folder, ".aim", "meta", "chunks", "0123456789abcdef01234567"))
    >>> why_not_here("0123456789abcdef01234567", "/moved/from/here", resolve({"repo_path": folder}, env={}))
    """
    here = repo_label(config)
    if config.remote_uri and (config.remote_uri, run_hash) in _NOT_ON_SERVER:
        return f"the AIM server {here} holds no such run (deleted?)"
    if config.remote_uri:  # a file that names no repo (written by hand): the server is asked
        ok = recorded is None or _same_repo(recorded, config)
        return None if ok else f"it was logged to {recorded}, not to {here}"
    if _in_local_repo(run_hash, config.repo_path):
        return None
    if _same_repo(recorded, config):
        return f"the AIM repo {here} holds no such run (deleted?)"
    return f"it was logged to {recorded}, and the AIM repo {here} holds no such run"


def checked_point(
    point: ResumePoint, recorded: Any, config: TraceletConfig, checkpoint: str | os.PathLike | None
) -> ResumePoint | None:
    """``point`` when its run can be continued where ``config`` logs; else ``None`` (a new run) and one
    warning that says why, so a checkpoint whose run is gone never stops training."""
    why = why_not_here(point.run_hash, recorded, config)
    if why is None:
        return point
    which = f"checkpoint {os.fspath(checkpoint)}" if checkpoint is not None else "the checkpoint being loaded"
    say(
        f"tracelet: {which} belongs to run {point.run_hash}, but {why}: training goes on in a new run "
        '(resume="never" starts a new run without looking)'
    )
    return None


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
    """The run that wrote ``checkpoint``, if it says so and can be continued where ``config`` logs to
    (see :func:`checked_point`); ``None`` with ``resume="never"``."""
    if not checkpoint or "://" in os.fspath(checkpoint) or config.resume == "never":
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
    if checked_point(ResumePoint(run_hash, None), entry.get("repo"), config, checkpoint) is None:
        return None
    return ResumePoint(run_hash, recorded_step(entry.get("step"), _identity_path(checkpoint), run_hash))


def recorded_step(step: Any, where: str, run_hash: str) -> int | None:
    """The step a checkpoint's file (``where``) records, to rewind run ``run_hash`` to: ``None`` when
    it records none, or (with one warning) one that would rewind the whole run, a negative step."""
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    if step < 0:
        say(f"tracelet: {where} holds step {step}: run {run_hash} continues unrewound")
        return None
    return step
