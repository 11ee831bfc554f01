"""What a Hugging Face ``Trainer`` tells the callback, as plain values: the model's params, the
checkpoint folder just saved, and the final model saved for storing. Framework calls are duck-typed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ...config import TraceletConfig
from ...core.params import parameter_counts
from ...core.translator import Translator
from ...run.resume import ResumePoint, find_resume_point

__all__ = ["SUMMARY_KEYS", "checkpoint_folder", "save_model", "store_model_params"]

#: Keys of the one dict ``Trainer`` logs at the end of ``train()``: run params under ``summary``, never
#: points of a series (the averaged ``train_loss`` must not land on the last step's ``loss``).
SUMMARY_KEYS = frozenset(
    {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
)


def store_model_params(translator: Translator, model: Any) -> None:
    translator.params(_model_params(model), key="model")


def _model_params(model: Any) -> dict[str, Any]:
    """Class, parameter counts, config, PEFT config."""
    found = parameter_counts(model)
    config = getattr(model, "config", None)
    if config is not None:
        found["config"] = config
    peft_config = getattr(model, "peft_config", None)
    if peft_config:
        found["peft_config"] = peft_config
    return found


def checkpoint_folder(output_dir: str, step: int) -> str | None:
    """The folder ``Trainer`` just saved: ``checkpoint-<step>`` under ``output_dir`` or, in a
    hyperparameter search, under its ``run-<n>`` subfolder; the newest when several match."""
    name = f"checkpoint-{step}"
    candidates = [os.path.join(output_dir, name)]
    if os.path.isdir(output_dir):
        candidates += [os.path.join(output_dir, sub, name) for sub in os.listdir(output_dir)]
    found = [path for path in candidates if os.path.isdir(path)]
    return os.path.abspath(max(found, key=os.path.getmtime)) if found else None


def resume_point(args: Any, state: Any, config: TraceletConfig) -> ResumePoint | None:
    """The run that wrote the checkpoint ``trainer.train(resume_from_checkpoint=...)`` loaded (its
    ``tracelet-run.json``), at the checkpoint's step; ``None`` for a fresh start or a foreign checkpoint.

    ``Trainer`` has read the checkpoint's state by ``on_train_begin`` (``global_step`` > 0) but tells
    callbacks no path: the argument is read from the ``train`` frames on the stack, else the
    ``checkpoint-<step>`` folder under ``output_dir`` is taken.
    """
    if not state.global_step or config.resume == "never" or config.run_hash:
        return None
    seen: set[str] = set()
    for candidate in (_resume_argument(), checkpoint_folder(args.output_dir, state.global_step)):
        if candidate is None or os.path.realpath(candidate) in seen:
            continue  # the argument is usually that folder: a run that is gone is said once
        seen.add(os.path.realpath(candidate))
        point = find_resume_point(candidate, config)
        if point is not None:
            return ResumePoint(point.run_hash, point.step if point.step is not None else state.global_step)
    return None


def _resume_argument() -> Any:
    frame = sys._getframe(2)
    for _ in range(24):
        if frame is None:
            break
        value = frame.f_locals.get("resume_from_checkpoint")
        if isinstance(value, (str, os.PathLike)):
            return value
        frame = frame.f_back
    return None


def save_model(model: Any, processing_class: Any, folder: str) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        import torch

        torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
    if processing_class is not None and hasattr(processing_class, "save_pretrained"):
        processing_class.save_pretrained(folder)
