"""``Experiment``: one AIM run and the calls a script makes on it.

Every adapter (Lightning, Hugging Face, Accelerate, the TensorBoard writer) holds one of these; the
seed's ``get_active_experiment()`` returns one. Nothing is opened until the first call that needs the
run, unless :meth:`Experiment.open` is called.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

from . import exits
from ..config import TraceletConfig, resolve
from ..core import records as rec
from ..core.params import to_params
from ..core.translator import Translator
from ..core.values import Unsupported, to_step, to_value
from ..errors import TraceletError, TraceletWarning

__all__ = ["Experiment", "RunHandle"]


class Experiment:
    """A tracked run.

    Args:
        config: a settings dict (the seed's ``config={...}``), below keywords in priority.
        enabled: ``False`` makes every call a no-op (the stand-in on non-zero ranks).
        **settings: any :class:`~tracelet_callbacks.config.TraceletConfig` field.

    Example::

        exp = Experiment(repo_path="./aim_repo", run_name="baseline")
        exp.log_params({"lr": 1e-3, "batch_size": 32})
        for step in range(100):
            exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
        exp.close()
    """

    def __init__(
        self,
        config: Mapping[str, Any] | TraceletConfig | None = None,
        *,
        enabled: bool = True,
        **settings: Any,
    ) -> None:
        if isinstance(config, TraceletConfig):  # already resolved (start_logging): do not read env again
            if settings:
                config = config.replace(**settings)
            self.config: TraceletConfig = config
        else:
            self.config = resolve(settings, config)
        self.enabled = enabled
        self._name = self.config.run_name
        self._sink: Any = None
        self._translator: Translator | None = None
        self._live: Translator | None = None  # the translator while open, else None: one attribute read
        self._opened = False
        self._closed = False
        self._warned_closed = False
        self._lock = threading.RLock()

    # -- lifecycle ----------------------------------------------------------------------------------

    def open(self) -> Experiment:
        """Open (or resume) the AIM run now; errors about the repo or server surface here."""
        if not self.enabled or self._opened:
            return self
        with self._lock:
            if self._opened:
                return self
            if self._closed:
                raise TraceletError("tracelet: this experiment is closed; start a new one to log more")
            # the sink imports aim: keep that off `import tracelet_callbacks`
            from ..sink.writer import open_sink

            sink = open_sink(self.config)
            self._sink = sink
            self._translator = Translator(sink, routing=self.config.routing, strict=self.config.strict)
            self._opened = True
            self._live = self._translator
            self._translator.tags(self.config.tags)
            exits.watch(self)
        return self

    @property
    def translator(self) -> Translator | None:
        """The translation core over this run; ``None`` when disabled or closed (values then go nowhere,
        with one warning), so a late ``add_scalar`` never stops a script."""
        live = self._live  # every logged value comes this way
        if live is not None:
            return live
        if not self.enabled:
            return None
        if self._closed:
            if not self._warned_closed:
                self._warned_closed = True
                warnings.warn(
                    "tracelet: logging after the run was closed; the values are dropped",
                    TraceletWarning,
                    stacklevel=3,
                )
            return None
        self.open()
        return self._translator

    @property
    def is_open(self) -> bool:
        return self._opened and not self._closed

    def flush(self) -> None:
        """Make everything logged so far durable."""
        if self._opened and not self._closed:
            self._sink.flush()

    def close(self, status: str = "finished") -> None:
        """Flush, record ``status`` (``finished``, ``failed``, ``interrupted``, ``killed``), close, index."""
        status = rec.normalise_status(status)  # a bad status must not leave the run half-closed
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._live = None
            exits.forget(self)
            if self._opened:
                self._sink.close(status)

    def __enter__(self) -> Experiment:
        return self.open()

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if kind is None:
            self.close("finished")
        elif issubclass(kind, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("failed")

    # -- the seed's API -----------------------------------------------------------------------------

    def log_params(self, params: Any) -> None:
        """Store hyperparameters (dict, Namespace, dataclass, config objects) under ``run["hparams"]``."""
        if (translator := self.translator) is not None:
            translator.params(params)

    def log_metric(
        self,
        name: str,
        value: Any,
        iteration: int | None = None,
        *,
        epoch: int | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """One scalar; ``train/loss`` lands in metric ``loss`` with context ``{"subset": "train"}``."""
        if (translator := self.translator) is not None:
            translator.scalar(name, value, iteration, epoch, context)

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, *, epoch: int | None = None
    ) -> None:
        """Many scalars at one step."""
        if (translator := self.translator) is not None:
            translator.scalars(metrics, step, epoch)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> list[str]:
        """Copy a file or folder into the run's artifact store; ``artifact_path`` is a folder in it."""
        if (translator := self.translator) is None:
            return []
        return translator.artifact(path, artifact_path)

    def set_tags(self, tags: Any) -> None:
        """A dict (queryable as ``run["tags"]["key"]`` and shown as ``key=value``) or a list of tags."""
        if (translator := self.translator) is not None:
            translator.tags(tags)

    # -- handles ------------------------------------------------------------------------------------

    @property
    def run(self) -> RunHandle:
        """A handle with ``aim.Run``'s writing surface that goes through our sink."""
        return RunHandle(self)

    @property
    def hash(self) -> str | None:
        """The AIM run hash (``None`` on a disabled stand-in)."""
        if not self.enabled:
            return None
        self.open()
        return self._sink.hash

    @property
    def name(self) -> str | None:
        """The run's display name (aim shows ``Run: <hash>`` when none was given)."""
        return self._name

    @property
    def status(self) -> str | None:
        """The status the run was closed with, ``None`` while it is open."""
        return self._sink.status if self._sink is not None else None


class RunHandle:
    """``aim.Run``'s writing surface (``track``, ``run[key] = value``, tags, hash, name) over our sink."""

    def __init__(self, experiment: Experiment) -> None:
        self._exp = experiment

    def track(
        self,
        value: Any,
        name: str | None = None,
        step: int | None = None,
        epoch: int | None = None,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Track a number, tensor or aim object under ``name`` as given (no routing), as ``aim.Run.track``."""
        translator = self._exp.translator
        if translator is None:
            return
        if isinstance(value, Mapping) and name is None:
            for key, item in value.items():
                self.track(item, name=str(key), step=step, epoch=epoch, context=context)
            return
        if name is None:
            raise TypeError("tracelet: track() needs a name for a single value")
        where = dict(context or {})
        try:
            record: rec.Record = rec.Scalar(
                name, to_value(value), to_step(step), to_step(epoch), where, time.time()
            )
        except Unsupported as exc:
            if type(value).__module__.startswith("aim") or (
                isinstance(value, list) and value and type(value[0]).__module__.startswith("aim")
            ):
                record = rec.Native(name, value, to_step(step), to_step(epoch), where)
            else:
                translator.skip(name, str(exc))
                return
        translator.sink.submit([record])

    def _submit(self, record: rec.Record) -> None:
        if (translator := self._exp.translator) is not None:
            translator.sink.submit([record])

    def __setitem__(self, key: str, value: Any) -> None:
        self._submit(rec.Params(str(key), to_params({key: value})[str(key)], merge=False))

    def set(self, key: str, value: Any, strict: bool = True) -> None:
        self[key] = value

    def __getitem__(self, key: str) -> Any:
        exp = self._exp
        if not exp.enabled or exp._closed:
            raise KeyError(key)
        return exp.translator.sink.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def add_tag(self, tag: str) -> None:
        self._submit(rec.Tags(add=(str(tag),)))

    def remove_tag(self, tag: str) -> None:
        self._submit(rec.Tags(remove=(str(tag),)))

    @property
    def hash(self) -> str | None:
        return self._exp.hash

    @property
    def name(self) -> str | None:
        return self._exp.name

    @name.setter
    def name(self, value: str) -> None:
        if (translator := self._exp.translator) is not None:
            self._exp._name = str(value)
            translator.run_info(name=str(value))

    @property
    def artifacts_uri(self) -> str | None:
        """Where this run's artifacts are copied (``file://...`` or ``s3://...``)."""
        if not self._exp.enabled:
            return None
        if not self._exp._closed:
            self._exp.open()
        return self._exp._sink.artifacts_uri if self._exp._sink is not None else None

    def __bool__(self) -> bool:
        return self._exp.enabled
