"""Which run a Lightning checkpoint belongs to, so ``fit(ckpt_path=...)`` continues that run.

``version`` (the AIM run hash) is asked before Lightning reads the checkpoint. So each
``after_save_checkpoint`` records which run wrote which file, and at which step, in a small index
beside the checkpoints (``tracelet-runs.json``); when the logger first needs its run it finds the
checkpoint being loaded from the ``Trainer._run`` frame (:func:`running_trainer`) and continues that
run, rewound to the step (``resume`` setting).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ...config import TraceletConfig
from ...run.resume import ResumePoint, checked_point, recorded_step, repo_label, why_not_here
from .info import checkpoint_files

__all__ = [
    "CHECKPOINT_INDEX",
    "foreign_checkpoint",
    "index_checkpoints",
    "point_of_checkpoint",
    "repo_label",
    "run_of_checkpoint",
    "running_trainer",
]

#: File beside the checkpoints: ``{file name: {"run_hash": ..., "repo": ...}}``.
CHECKPOINT_INDEX = "tracelet-runs.json"


def index_checkpoints(callback: Any, entry: dict[str, Any], step: int | None = None) -> None:
    """Record ``entry`` (this run) for the callback's checkpoint files in the folder's index, with
    ``step`` for each file written since it was last recorded (the step a resume rewinds to)."""
    folder = getattr(callback, "dirpath", None)
    if not folder or "://" in str(folder) or not os.path.isdir(folder):
        return  # remote checkpoint folders: resume with run_hash=
    path = os.path.join(folder, CHECKPOINT_INDEX)
    index = _read_index(path)
    for file in checkpoint_files(callback, everything=True):
        if os.path.dirname(os.path.abspath(file)) == os.path.abspath(folder):
            known = index.get(os.path.basename(file))
            try:
                mtime = os.path.getmtime(file)
            except OSError:
                continue
            if (
                isinstance(known, dict)
                and known.get("mtime") == mtime
                and known.get("run_hash") == entry.get("run_hash")
            ):
                continue  # an older checkpoint: its step stays the one it was saved at
            index[os.path.basename(file)] = {**entry, "step": step, "mtime": mtime}
    # entries of checkpoints that ModelCheckpoint has since deleted would only mislead
    index = {name: value for name, value in index.items() if os.path.exists(os.path.join(folder, name))}
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as handle:
            json.dump(index, handle, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only folder only costs the automatic resume


def _read_index(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _entry_of(checkpoint: Any) -> dict[str, Any] | None:
    """The index entry of ``checkpoint`` (its run, step and repo) when it names a run."""
    if not checkpoint or not isinstance(checkpoint, (str, os.PathLike)) or "://" in str(checkpoint):
        return None
    path = os.fspath(checkpoint)
    entry = _read_index(os.path.join(os.path.dirname(path), CHECKPOINT_INDEX)).get(os.path.basename(path))
    return entry if isinstance(entry, dict) and isinstance(entry.get("run_hash"), str) else None


def point_of_checkpoint(checkpoint: Any, config: TraceletConfig | None = None) -> ResumePoint | None:
    """The run that wrote ``checkpoint`` and its step then, from the index beside it. With ``config``:
    only a run to continue where ``config`` logs (else ``None``, and one warning when the run is gone)."""
    entry = _entry_of(checkpoint)
    if entry is None or (config is not None and config.resume == "never"):
        return None
    run_hash, step = entry["run_hash"], entry.get("step")
    if config is None:
        return ResumePoint(run_hash, step if _is_step(step) else None)
    if checked_point(ResumePoint(run_hash, None), entry.get("repo"), config, checkpoint) is None:
        return None
    index = os.path.join(os.path.dirname(os.fspath(checkpoint)), CHECKPOINT_INDEX)
    return ResumePoint(run_hash, recorded_step(step, index, run_hash))  # a negative step: one warning


def _is_step(step: Any) -> bool:
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def run_of_checkpoint(checkpoint: Any) -> str | None:
    """The run that wrote ``checkpoint``, from the index beside it."""
    point = point_of_checkpoint(checkpoint)
    return point.run_hash if point is not None else None


_STACK_DEPTH = 32


def running_trainer(logger: Any, trainer_type: type | None, known: Any = None) -> tuple[Any, Any]:
    """The trainer running ``logger`` and the checkpoint it was asked to load (``fit(ckpt_path=...)``).

    ``version`` is the AIM run hash and is asked in step 1, before Lightning has read the
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
    """
    frame = sys._getframe(1)
    for _ in range(_STACK_DEPTH):
        if frame is None or trainer_type is None:
            break
        if frame.f_code.co_name == "_run":
            candidate = frame.f_locals.get("self")
            loggers = getattr(candidate, "loggers", None) or ()
            if isinstance(candidate, trainer_type) and any(item is logger for item in loggers):
                return candidate, frame.f_locals.get("ckpt_path")
        frame = frame.f_back
    trainer = known() if known is not None else None
    return trainer, getattr(trainer, "ckpt_path", None)


def foreign_checkpoint(trainer: Any, config: TraceletConfig, version: str | None) -> str | None:
    """What to say when the checkpoint a trainer loads belongs to another run than the logger's, and
    that run could have been continued: not with ``run_hash`` or ``resume="never"`` (the run to write
    was chosen), nor when the checkpoint's run is not where ``config`` logs (nothing to continue)."""
    entry = _entry_of(getattr(trainer, "ckpt_path", None))
    recorded = entry["run_hash"] if entry is not None else None
    if not recorded or config.run_hash is not None or config.resume == "never" or recorded == version:
        return None
    if why_not_here(recorded, entry.get("repo"), config) is not None:
        return None
    return (
        f"tracelet: the checkpoint being loaded belongs to AIM run {recorded}, but this logger already "
        f"writes to run {version} (its run was opened before fit); pass run_hash={recorded!r} to continue "
        "that run"
    )
