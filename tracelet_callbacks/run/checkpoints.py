"""Checkpoints stored as artifacts, once per version and never with a secret in them.

One helper for every adapter that stores checkpoints (Lightning's ``.ckpt`` files, Hugging Face's
``checkpoint-N`` folders): a ``{path: mtime}`` scan so each version is stored once, and a scrub on the
way: a torch checkpoint's saved hyperparameters are redacted (the copy still loads), and HF's
``training_args.bin`` (a pickle of ``TrainingArguments``, ``hub_token`` included) is never stored;
a redacted ``training_args.json`` takes its place. A checkpoint that cannot be checked is not stored.
Storing never stops training: a failure is one warning.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Iterable, MutableMapping
from typing import Any

from ..core.params import redact, scrubbed_config, to_params
from ..errors import TraceletError, WarnOnce
from .experiment import Experiment

__all__ = ["CheckpointStore", "scrubbed_checkpoint"]

#: A pickle of ``TrainingArguments`` in every HF checkpoint folder; it holds ``hub_token``.
TRAINING_ARGS_FILE = "training_args.bin"
#: Checkpoint entries that hold hyperparameters as the user passed them (Lightning's).
_HPARAM_ENTRIES = ("hyper_parameters", "datamodule_hyper_parameters")
#: Files loaded and scrubbed before they are stored (Lightning's checkpoints).
_TORCH_CHECKPOINTS = (".ckpt",)


class CheckpointStore:
    """Stores checkpoint files or folders into a run's artifacts (see the module docstring)."""

    def __init__(self, what: str = "storing checkpoints") -> None:
        self._what = what  # named in the one warning a failure gives
        self._stored: dict[str, float] = {}  # path -> the mtime of the version stored
        self._warn = WarnOnce()

    def forget(self) -> None:
        """A new run: everything is stored again."""
        self._stored.clear()

    def store(self, exp: Experiment, paths: Iterable[str], artifact_path: str, settings: Any = None) -> None:
        """Store each of ``paths`` not stored since it last changed, under ``artifact_path`` (a file
        directly, a folder as ``artifact_path/<folder name>/...``). ``settings``: the training
        arguments, stored redacted as ``training_args.json`` beside a folder's files."""
        for path in paths:
            try:
                mtime = os.path.getmtime(path)
            except OSError:
                continue
            if self._stored.get(path, -1.0) >= mtime:
                continue
            try:
                self._store(exp, path, artifact_path, settings)
            except (TraceletError, OSError) as exc:  # the store cannot be written: say it once
                message = f"tracelet: {self._what} failed ({path!r}: {exc}); training goes on"
                self._warn("store", message, stacklevel=3)
                continue
            except Exception as exc:  # unreadable: never store what we could not check
                self._warn(
                    "check",
                    f"tracelet: checkpoint {path!r} was not stored: it could not be checked for secrets "
                    f"({type(exc).__name__}: {exc})",
                    stacklevel=3,
                )
                continue
            self._stored[path] = mtime

    def _store(self, exp: Experiment, path: str, artifact_path: str, settings: Any) -> None:
        # each log_artifact waits for its copy, so the scratch folder (and, with HF's rotation, the
        # checkpoint itself) may go afterwards
        with tempfile.TemporaryDirectory(prefix="tracelet-ckpt-") as scratch:
            if not os.path.isdir(path):
                _copy(exp, scrubbed_checkpoint(path, scratch), artifact_path)
                return
            folder = posixpath.join(artifact_path, os.path.basename(os.path.normpath(path)))
            for root, _dirs, files in os.walk(path):
                relative = os.path.relpath(root, path).replace(os.sep, "/")
                target = folder if relative == "." else f"{folder}/{relative}"
                for file in sorted(files):
                    if file != TRAINING_ARGS_FILE:
                        _copy(exp, scrubbed_checkpoint(os.path.join(root, file), scratch), target)
            if settings is not None:
                written = os.path.join(scratch, "training_args.json")
                with open(written, "w", encoding="utf-8") as handle:
                    json.dump(to_params(settings), handle, indent=2, sort_keys=True)
                _copy(exp, written, folder)


def _copy(exp: Experiment, path: str, artifact_path: str) -> None:
    """``exp.log_artifact``, except that a store that refuses the file raises (to :meth:`store`,
    which says so once for all of them) instead of warning for each file."""
    translator = exp.translator
    if translator is not None:
        translator.artifact(path, artifact_path, raise_errors=True)


def scrubbed_checkpoint(path: str, folder: str) -> str:
    """``path`` itself when it holds no secret we know how to find, else a redacted copy written under
    ``folder`` with the same file name: a torch checkpoint's saved hyperparameters, or a JSON or YAML
    config (HF's ``config.json``, Lightning's ``hparams.yaml``) as a whole.

    Raises whatever loading or saving raises; the caller decides what a failure means.
    """
    if path.endswith((".json", ".yaml", ".yml")):
        return scrubbed_config(path, folder)
    if not path.endswith(_TORCH_CHECKPOINTS):
        return path
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
            checkpoint[entry], redacted = redact(checkpoint[entry])
            changed = changed or redacted
    if not changed:
        return path
    target = os.path.join(folder, os.path.basename(path))
    torch.save(checkpoint, target)
    return target
