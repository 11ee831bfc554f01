"""What a Lightning trainer, module and checkpoint callback tell the logger, as plain dicts; and the
index beside checkpoints that says which AIM run wrote each file.

Framework-free (duck-typed on the attributes Lightning's objects have), so both flavours share it.

>>> _unique_names([1, 2.0, 3])
['int', 'float', 'int-1']
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
from collections.abc import MutableMapping
from typing import Any

from ...config import TraceletConfig
from ...core.params import REDACTED, is_secret_key, parameter_counts, redact_text

__all__ = [
    "CHECKPOINT_INDEX",
    "checkpoint_files",
    "checkpoint_summary",
    "index_checkpoints",
    "model_params",
    "optimizer_params",
    "redact_hyperparameters",
    "repo_label",
    "run_of_checkpoint",
    "scrubbed_checkpoint",
    "trainer_params",
]

#: File beside the checkpoints: ``{file name: {"run_hash": ..., "repo": ...}}``.
CHECKPOINT_INDEX = "tracelet-runs.json"
#: The checkpoint entries that hold ``save_hyperparameters()`` of the module and the datamodule.
_HPARAM_ENTRIES = ("hyper_parameters", "datamodule_hyper_parameters")
#: Scheduler state that is progress, not configuration.
_SCHEDULER_STATE = frozenset({"last_epoch", "verbose", "best", "num_bad_epochs", "cooldown_counter"})
_TRAINER_SETTINGS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "num_devices",
    "device_ids",
    "num_nodes",
    "world_size",
    "limit_train_batches",
    "limit_val_batches",
    "val_check_interval",
    "check_val_every_n_epoch",
    "log_every_n_steps",
)


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


def redact_hyperparameters(value: Any, secret: bool = False) -> tuple[Any, bool]:
    """``(value with secrets replaced, whether anything was)``; containers keep their type and order.

    Values under a secret key (see :func:`~tracelet_callbacks.core.params.is_secret_key`) become the
    marker, every leaf of them when the value is a container; strings elsewhere lose URL passwords and
    token-shaped values. Nothing else is converted, so a checkpoint written back with the result still
    loads (``load_from_checkpoint`` passes these to ``__init__``).

    >>> redact_hyperparameters({"lr": 0.1, "api_key": "abc", "db": ["postgresql://me:pw@h/d"]})
    ({'lr': 0.1, 'api_key': '<redacted>', 'db': ['postgresql://me:<redacted>@h/d']}, True)
    >>> redact_hyperparameters({"lr": 0.1, "hub_token": None, "auth": {"user": "me", "password": ""}})
    ({'lr': 0.1, 'hub_token': None, 'auth': {'user': 'me', 'password': ''}}, False)
    >>> redact_hyperparameters({"credentials": {"user": "me", "key": "abc"}})
    ({'credentials': {'user': '<redacted>', 'key': '<redacted>'}}, True)
    """
    if isinstance(value, MutableMapping):  # dict, Lightning's AttributeDict, OmegaConf's DictConfig
        changes = {}
        for name, item in value.items():
            new, changed = redact_hyperparameters(item, secret or is_secret_key(name))
            if changed:
                changes[name] = new
        if not changes:
            return value, False
        result = copy.copy(value)
        for name, new in changes.items():
            result[name] = new
        return result, True
    if isinstance(value, (list, tuple)):
        names = getattr(value, "_fields", None) or [""] * len(value)  # a namedtuple's fields are keys
        items = [
            redact_hyperparameters(item, secret or (bool(name) and is_secret_key(name)))
            for name, item in zip(names, value, strict=True)
        ]
        if not any(changed for _new, changed in items):
            return value, False
        new_items = [new for new, _changed in items]
        if hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*new_items), True
        return type(value)(new_items), True
    if isinstance(value, argparse.Namespace):
        new, changed = redact_hyperparameters(vars(value), secret)
        return (argparse.Namespace(**new), True) if changed else (value, False)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name, None)
            new, changed = redact_hyperparameters(item, secret or is_secret_key(field.name))
            if changed:
                changes[field.name] = new
        if not changes:
            return value, False
        result = copy.copy(value)
        for name, new in changes.items():
            object.__setattr__(result, name, new)  # frozen dataclasses too
        return result, True
    if value is None or isinstance(value, bool) or (isinstance(value, (str, bytes)) and not value):
        return value, False  # nothing to hide, and "is it set" stays readable
    if secret:
        return REDACTED, True
    if isinstance(value, str):
        text = redact_text(value)
        return (value, False) if text == value else (text, True)
    return value, False


def scrubbed_checkpoint(path: str, folder: str) -> str:
    """``path`` itself when its saved hyperparameters hold no secret, else a copy with them redacted,
    written under ``folder`` with the same file name (so it is stored under the same name).

    Raises whatever loading or saving raises; the caller decides what a failure means.
    """
    import torch

    try:  # memory-mapped, so a large checkpoint's tensors are not read just to look at its hparams
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, MutableMapping):
        return path
    changed = False
    for entry in _HPARAM_ENTRIES:
        if entry in checkpoint:
            checkpoint[entry], redacted = redact_hyperparameters(checkpoint[entry])
            changed = changed or redacted
    if not changed:
        return path
    target = os.path.join(folder, os.path.basename(path))
    torch.save(checkpoint, target)
    return target
