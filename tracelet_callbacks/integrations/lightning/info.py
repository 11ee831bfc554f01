"""What a Lightning trainer, module and checkpoint callback tell the logger, as plain dicts; and the
index beside checkpoints that says which AIM run wrote each file.

Framework-free (duck-typed on the attributes Lightning's objects have), so both flavours share it.

>>> _unique_names([1, 2.0, 3])
['int', 'float', 'int-1']
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ...core.params import parameter_counts
from ...core.records import normalise_status

__all__ = [
    "attached_trainer",
    "checkpoint_files",
    "checkpoint_summary",
    "final_status",
    "model_params",
    "optimizer_params",
    "store_optimizers",
    "store_trainer",
    "trainer_params",
]

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


def store_trainer(translator: Any, trainer: Any) -> None:
    """The trainer's settings under ``trainer``; LightningCLI's parsed config, if any, under ``config``."""
    translator.params(trainer_params(trainer), key="trainer")
    if (config := cli_config(trainer)) is not None:
        translator.params(config, key="config")


def store_optimizers(translator: Any, trainer_ref: Any) -> bool:
    """The trainer's optimizers (and schedulers) as run params; ``False`` when there are none yet."""
    optimizers, schedulers = optimizer_params(trainer_ref() if trainer_ref is not None else None)
    if not optimizers:
        return False
    translator.params(optimizers, key="optimizers")
    if schedulers:
        translator.params(schedulers, key="schedulers")
    return True


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


def final_status(status: str) -> str:
    """Lightning's ``finalize`` status as a run status (it says ``failed`` for Ctrl-C too)."""
    if status == "failed" and isinstance(sys.exc_info()[1], KeyboardInterrupt):
        return "interrupted"
    try:
        return normalise_status(status)
    except ValueError:
        return "failed"


def attached_trainer(module: Any) -> Any:
    """The trainer ``module`` is attached to, or ``None`` (Lightning raises when there is none)."""
    try:
        return module.trainer
    except (AttributeError, RuntimeError):
        return None


def cli_config(trainer: Any) -> dict[str, Any] | None:
    """The configuration LightningCLI parsed for this run (its config file and flags together), as its
    ``SaveConfigCallback`` writes it to ``config.yaml``; ``None`` when the trainer was not built by one."""
    for callback in getattr(trainer, "callbacks", None) or ():
        if not any(cls.__name__ == "SaveConfigCallback" for cls in type(callback).__mro__):
            continue
        parser, config = getattr(callback, "parser", None), getattr(callback, "config", None)
        if parser is None or config is None:
            continue
        try:
            import yaml

            dumped = yaml.safe_load(parser.dump(config, skip_none=False))
        except Exception:  # what the CLI would write is a nicety here, never a reason to fail
            as_dict = getattr(config, "as_dict", None)
            dumped = as_dict() if callable(as_dict) else None
        return dumped if isinstance(dumped, dict) else None
    return None
