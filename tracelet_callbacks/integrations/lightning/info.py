"""What a Lightning trainer, module and checkpoint callback tell the logger, as plain dicts; and the
index beside checkpoints that says which AIM run wrote each file.

Framework-free (duck-typed on the attributes Lightning's objects have), so both flavours share it.

>>> _unique_names([1, 2.0, 3])
['int', 'float', 'int-1']
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ...config import TraceletConfig
from ...core.params import parameter_counts

__all__ = [
    "CHECKPOINT_INDEX",
    "attached_trainer",
    "checkpoint_files",
    "checkpoint_summary",
    "foreign_checkpoint",
    "index_checkpoints",
    "model_params",
    "optimizer_params",
    "repo_label",
    "run_of_checkpoint",
    "running_trainer",
    "trainer_params",
]

#: File beside the checkpoints: ``{file name: {"run_hash": ..., "repo": ...}}``.
CHECKPOINT_INDEX = "tracelet-runs.json"
#: The checkpoint entries that hold ``save_hyperparameters()`` of the module and the datamodule.
#: Scheduler state that is progress, not configuration.
_SCHEDULER_STATE = frozenset({"last_epoch", "verbose", "best", "num_bad_epochs", "cooldown_counter"})
_SETTINGS = """max_epochs min_epochs max_steps min_steps precision accumulate_grad_batches gradient_clip_val
gradient_clip_algorithm num_devices device_ids num_nodes world_size limit_train_batches limit_val_batches
val_check_interval check_val_every_n_epoch log_every_n_steps"""
_TRAINER_SETTINGS = tuple(_SETTINGS.split())


def _qualname(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _unique_names(objects: list[Any]) -> list[str]:
    """``Adam``, ``Adam-1`` ...: Lightning's ``LearningRateMonitor`` naming."""
    seen: dict[str, int] = {}
    names = []
    for obj in objects:
        base = type(obj).__name__
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}-{count}")
    return names


def model_params(model: Any) -> dict[str, Any]:
    # the same keys as the Hugging Face adapter's, so runs of both compare in one table
    return parameter_counts(model)


def trainer_params(trainer: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in _TRAINER_SETTINGS:
        try:
            value = getattr(trainer, name)
        except Exception:  # a property that needs a running loop
            continue
        if value is not None:
            settings[name] = value
    for name in ("strategy", "accelerator"):
        if getattr(trainer, name, None) is not None:
            settings[name] = type(getattr(trainer, name)).__name__
    seed = os.environ.get("PL_GLOBAL_SEED")  # where seed_everything() leaves it
    if seed:
        settings["seed"] = int(seed) if seed.lstrip("-").isdigit() else seed
    return settings


def optimizer_params(trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({name: optimizer settings}, {name: scheduler settings})`` of a trainer, named as Lightning's
    ``LearningRateMonitor`` names them."""
    optimizers = list(getattr(trainer, "optimizers", None) or ())
    names = _unique_names(optimizers)
    by_id = {id(optimizer): name for name, optimizer in zip(names, optimizers, strict=True)}
    configs = list(getattr(trainer, "lr_scheduler_configs", None) or ())
    schedulers = [config.scheduler for config in configs]
    entries = {}
    for name, config, scheduler in zip(_unique_names(schedulers), configs, schedulers, strict=True):
        entry = {"class": _qualname(scheduler)}
        owner = by_id.get(id(getattr(scheduler, "optimizer", None)))
        if owner is not None:
            entry["optimizer"] = owner
        for field in ("interval", "frequency", "monitor"):
            if getattr(config, field, None) is not None:
                entry[field] = getattr(config, field)
        entry.update(_scheduler_settings(scheduler))
        entries[name] = entry
    return {by_id[id(o)]: _optimizer_params(o) for o in optimizers}, entries


def _optimizer_params(optimizer: Any) -> dict[str, Any]:
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    entry: dict[str, Any] = {"class": _qualname(optimizer)}
    if len(groups) == 1:
        entry.update(groups[0])
    else:  # the constructor's settings, then each group as it differs
        entry.update(getattr(optimizer, "defaults", {}))
        entry["param_groups"] = {
            str(i): {**group, "num_parameters": sum(p.numel() for p in raw["params"])}
            for i, (group, raw) in enumerate(zip(groups, optimizer.param_groups, strict=True))
        }
    return entry


def _scheduler_settings(scheduler: Any) -> dict[str, Any]:
    try:
        state = scheduler.state_dict()
    except Exception:
        return {}
    return {k: v for k, v in state.items() if not k.startswith("_") and k not in _SCHEDULER_STATE}


def checkpoint_files(callback: Any, everything: bool) -> list[str]:
    """Best and last (``log_model=True``), or every file the callback keeps (``"all"``), oldest first."""
    paths = [getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")]
    if everything:
        paths += list(getattr(callback, "best_k_models", {}) or {})
    existing = {str(path) for path in paths if path and os.path.isfile(path)}
    return sorted(existing, key=os.path.getmtime)


def checkpoint_summary(callback: Any) -> dict[str, Any]:
    summary = {
        "monitor": getattr(callback, "monitor", None),
        "best_model_path": getattr(callback, "best_model_path", None) or None,
        "best_model_score": getattr(callback, "best_model_score", None),
        "last_model_path": getattr(callback, "last_model_path", None) or None,
    }
    return {key: value for key, value in summary.items() if value is not None}


def repo_label(config: TraceletConfig) -> str:
    return config.remote_uri or os.path.abspath(config.repo_path)


def index_checkpoints(callback: Any, entry: dict[str, str]) -> None:
    """Record ``entry`` (this run) for the callback's checkpoint files in the folder's index."""
    folder = getattr(callback, "dirpath", None)
    if not folder or "://" in str(folder) or not os.path.isdir(folder):
        return  # remote checkpoint folders: resume with run_hash=
    path = os.path.join(folder, CHECKPOINT_INDEX)
    index = _read_index(path)
    for file in checkpoint_files(callback, everything=True):
        if os.path.dirname(os.path.abspath(file)) == os.path.abspath(folder):
            index[os.path.basename(file)] = entry
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


def run_of_checkpoint(checkpoint: Any) -> str | None:
    """The run that wrote ``checkpoint``, from the index beside it."""
    if not checkpoint or not isinstance(checkpoint, (str, os.PathLike)) or "://" in str(checkpoint):
        return None
    path = os.fspath(checkpoint)
    entry = _read_index(os.path.join(os.path.dirname(path), CHECKPOINT_INDEX)).get(os.path.basename(path))
    run_hash = entry.get("run_hash") if isinstance(entry, dict) else None
    return run_hash if isinstance(run_hash, str) else None


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


def foreign_checkpoint(trainer: Any, run_hash_setting: str | None, version: str | None) -> str | None:
    """What to say when the checkpoint a trainer loads belongs to another run than the logger's."""
    recorded = run_of_checkpoint(getattr(trainer, "ckpt_path", None))
    if not recorded or run_hash_setting is not None or recorded == version:
        return None
    return (
        f"tracelet: the checkpoint being loaded belongs to AIM run {recorded}, but this logger already "
        f"writes to run {version} (its run was opened before fit); pass run_hash={recorded!r} to continue "
        "that run"
    )


def attached_trainer(module: Any) -> Any:
    """The trainer ``module`` is attached to, or ``None`` (Lightning raises when there is none)."""
    try:
        return module.trainer
    except (AttributeError, RuntimeError):
        return None
