"""``Experiment``: one AIM run and the calls a script makes on it.

Every adapter (Lightning, Hugging Face, Accelerate, the TensorBoard writer) holds one of these; the
seed's ``get_active_experiment()`` returns one. Nothing is opened until the first call that needs the
run, unless :meth:`Experiment.open` is called.

**Forked processes.** A run is written only by the process that opened it. A child forked after that
(a DataLoader worker, a forked evaluation) inherits the experiment but not the run: what it logs is
dropped with one warning at its line, and its ``close()`` (``stop_logging()``, a logger's
``finalize``, its exit) ends nothing of the parent's; the parent's run goes on as if the child had
never been. A child that should log opens a run of its own (``start_logging`` or a new
``Experiment`` in the child). An experiment not yet opened at the fork is opened by whichever process
uses it first, as a pickled copy is.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

from ..config import TraceletConfig, coerce
from ..core import records as rec
from ..core.translator import Translator
from ..errors import TraceletError, TraceletWarning, say
from . import exits
from .monitor import SystemMonitor, monitor
from .resume import ResumePoint, find_resume_point, gone_from_server, mark_checkpoint, run_not_found
from .terminal import TerminalCapture
from .watch import Watchers

__all__ = ["Experiment", "RunHandle", "active", "find_run", "opened_here", "swap_active"]


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
        self.config: TraceletConfig = coerce(config, settings)
        self.enabled = enabled
        self._name = self.config.run_name
        self._sink: Any = None
        self._translator: Translator | None = None
        self._live: Translator | None = None  # the translator while open, else None: one attribute read
        self._opened = False
        self._closed = False
        self._warned_closed = False
        self._lock = threading.RLock()
        self._monitor: SystemMonitor | bool | None = None  # False: asked, and sampling is off
        self._watchers = Watchers()
        self._terminal: TerminalCapture | None = None
        #: The checkpoint this run continues from (set by an adapter, or found from ``resume_from``).
        self.resume_point: ResumePoint | None = None
        self._new_run = False  # the hash in self.config was chosen here, for a run not made yet
        self._told = False  # the hash was handed to the caller (so close() makes the run if nothing did)
        self._owner = os.getpid()
        if enabled:
            from ..sink.writer import prepare  # no aim import: the writer does that

            prepare(self.config)  # a web server given as the server fails here; the writer starts

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

            asked = self.config
            self._name_run()
            try:
                sink = open_sink(self.config, new_run=self._new_run)
            except TraceletError as exc:
                if not self._found_here(asked) or not run_not_found(exc):
                    raise
                # the server holds no run of the checkpoint found here (deleted, a bogus hash): one
                # warning and a new run, as the adapters do, never a failed start
                point, self.resume_point = self.resume_point, None
                gone_from_server(point, asked, asked.resume_from)
                self.config = asked.replace(run_hash=rec.new_run_hash(), resume="allow")
                self._new_run = True
                sink = open_sink(self.config, new_run=True)
            if self.resume_point is not None:
                sink.submit([rec.Resumed(self.resume_point.step, keep=self.config.resume == "append")])
            self._sink = sink
            self._translator = Translator(sink, routing=self.config.routing, strict=self.config.strict)
            self._opened = True
            self._live = self._translator
            self._owner = os.getpid()
            _live_here.add(self)
            if self.config.run_hash:
                _opened_here[self.config.run_hash] = self
            self._translator.tags(self.config.tags)
            exits.watch(self, hooks=self.config.exit_handlers)
            if (system := self._system()) is not None:
                translator = self._translator
                system.attach(sink, lambda: translator.last_step)
            if self.config.capture_terminal_logs:
                self._terminal = TerminalCapture(sink.submit).start()
        return self

    def _name_run(self) -> None:
        """Settle which run this is without opening it: the run a ``resume_from`` checkpoint names, or
        a new run whose hash is chosen here, so whatever asks for it (Lightning's version, a checkpoint
        folder) never waits for the writer to start; the writer makes the run under it."""
        cfg = self.config
        if self.resume_point is None and cfg.resume_from and not cfg.run_hash and cfg.resume != "never":
            self.resume_point = find_resume_point(cfg.resume_from, cfg)
            if self.resume_point is not None:
                self.config = cfg.replace(run_hash=self.resume_point.run_hash, run_name=None, tags=None)
        if not self.config.run_hash and self.config.sink_factory is None:
            self.config = self.config.replace(run_hash=rec.new_run_hash(), resume="allow")
            self._new_run = True

    def _found_here(self, asked: TraceletConfig) -> bool:
        """Whether this run is the one a ``resume_from`` checkpoint named (read by :meth:`_name_run`
        from ``asked``, the settings before that), rather than one an adapter or the caller chose."""
        point = self.resume_point
        return point is not None and not asked.run_hash and self.config.run_hash == point.run_hash

    @property
    def new_run(self) -> bool:
        """Whether this is a run whose hash was chosen here and that no writer has made yet."""
        return self._new_run and not self._opened

    def _system(self) -> SystemMonitor | None:
        found = self._monitor
        if found is None:
            found = self._monitor = monitor(self.config) or False
        return found or None

    def note_step(self, step: int | None) -> None:
        """A training step was reached: feeds this rank's step time (nothing when system metrics are off).

        Adapters call it on every rank, so a rank that writes nothing still reports how fast it goes.
        """
        found = self._monitor
        if found is None:
            found = self._system()
        if found:
            found.note_step(step)

    @property
    def translator(self) -> Translator | None:
        """The translation core over this run; ``None`` when disabled or closed, or in a process forked
        from the one that opened it (values then go nowhere, with one warning), so a late ``add_scalar``
        never stops a script."""
        live = self._live  # every logged value comes this way
        if live is not None:
            return live
        if not self.enabled:
            return None
        if self.inherited:
            if not self._warned_closed:
                self._warned_closed = True
                say(
                    f"tracelet: run {self.hash} belongs to process {self._owner}, which this process "
                    "was forked from; values logged here are dropped (open a run of this process's "
                    "own with start_logging() or Experiment() to keep them)"
                )
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

    @property
    def inherited(self) -> bool:
        """Whether the run was opened by a process this one was forked from, which alone writes it
        (see the module docstring): here values are dropped and ``close()`` ends nothing."""
        return self._opened and self._owner != os.getpid()

    @property
    def closed(self) -> bool:
        return self._closed

    def current(self) -> Experiment:
        """Itself (what a :class:`RunHandle` asks of whatever it follows)."""
        return self

    def flush(self) -> None:
        """Make everything logged so far durable (on a stand-in: hand this rank's system sample on now)."""
        if self._opened and not self._closed and not self.inherited:
            self._sink.flush()
        elif not self.enabled and (system := self._system()) is not None:
            system.flush()

    def close(self, status: str = "finished") -> None:
        """Flush, record ``status`` (``finished``, ``failed``, ``interrupted``, ``killed``), close, index."""
        status = rec.normalise_status(status)  # a bad status must not leave the run half-closed
        with self._lock:
            if self._closed:
                return
            if self.inherited:  # the parent's run: only this process stops using it
                self._closed, self._live = True, None
                return
            if self._told and not self._opened and self.enabled:
                # someone was given this run's hash: it must name a run, even one that holds nothing
                try:
                    self.open()
                except TraceletError as exc:
                    warnings.warn(
                        f"{exc}; run {self.config.run_hash} was not made", TraceletWarning, stacklevel=2
                    )
            if self._watchers:  # while the run still takes values: a late NaN's health is written
                self._watchers.drain()
                self._watchers.remove()
            self._closed = True
            self._live = None
            _live_here.discard(self)
            exits.forget(self)
            if _opened_here.get(self.config.run_hash or "") is self:
                del _opened_here[self.config.run_hash]
            if self._opened:
                if self._terminal is not None:
                    self._terminal.stop()
                if self._monitor:
                    self._monitor.detach(self._sink)
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

    def mark_checkpoint(self, checkpoint: str | os.PathLike, step: int | None = None) -> None:
        """Record in a checkpoint you saved (a folder, or a file) that this run wrote it at ``step``
        (default: the last step logged), so ``start_logging(resume_from=checkpoint)`` in a new process
        continues this run and rewinds it to that step. A failure to write is one warning."""
        if not self.enabled:
            return
        self.open()
        if step is None and self._translator is not None:
            step = self._translator.last_step
        try:
            mark_checkpoint(checkpoint, self.hash, step, self.config)
        except OSError as exc:
            warnings.warn(
                f"tracelet: could not record run {self.hash} in checkpoint {os.fspath(checkpoint)!r}: {exc}",
                TraceletWarning,
                stacklevel=2,
            )

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
        self.note_step(iteration)
        if (translator := self.translator) is not None:
            translator.scalar(name, value, iteration, epoch, context)

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, *, epoch: int | None = None
    ) -> None:
        """Many scalars at one step."""
        self.note_step(step)
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

    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100) -> None:
        """Track ``model``'s per-layer gradient and / or weight norms (metrics) and histograms
        (distributions) every ``log_freq`` optimizer steps, and report the first NaN / inf gradient or
        loss (warning + run param ``health``); see :mod:`tracelet_callbacks.run.watch`.

        ``log``: ``"gradients"``, ``"parameters"``, ``"all"`` or ``None`` (the health check only).
        Steps are counted from this call. Nothing happens on a disabled stand-in.
        """
        if self.enabled:
            self._watchers.add(model, lambda: self.translator if not self._closed else None, log, log_freq)

    def unwatch(self, model: Any = None) -> None:
        """Remove the hooks of :meth:`watch` for ``model`` (``None``: every watched model)."""
        self._watchers.remove(model)

    # -- handles ------------------------------------------------------------------------------------

    @property
    def run(self) -> RunHandle:
        """A handle with ``aim.Run``'s writing surface that goes through our sink."""
        return RunHandle(self)

    @property
    def artifacts_uri(self) -> str | None:
        """Where this run's artifacts are copied (``file://...`` or ``s3://...``)."""
        if not self.enabled:
            return None
        if not self._closed:
            self.open()
        return self._sink.artifacts_uri if self._sink is not None else None

    def rename(self, name: str) -> None:
        if (translator := self.translator) is not None:
            self._name = name
            translator.run_info(name=name)

    @property
    def hash(self) -> str | None:
        """The AIM run hash (``None`` on a disabled stand-in); asking opens nothing."""
        if not self.enabled:
            return None
        if self._sink is None and self.config.sink_factory is None:
            if not self._closed:
                self._name_run()
                self._told = True
            return self.config.run_hash
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


class _Followed(Protocol):
    """What a :class:`RunHandle` follows: an :class:`Experiment`, or a run lifecycle whose current
    experiment changes as runs end and resume."""

    enabled: bool

    def current(self) -> Experiment: ...

    def rename(self, name: str) -> None: ...

    @property
    def hash(self) -> str | None: ...

    @property
    def name(self) -> str | None: ...


class RunHandle:
    """``aim.Run``'s writing surface (``track``, ``run[key] = value``, tags, hash, name) over our sink.

    Every call goes through the run's translator, so values are converted and secrets redacted as
    anywhere else; on a disabled stand-in (non-zero ranks) every call does nothing.
    """

    def __init__(self, source: _Followed) -> None:
        self._source = source

    def _translator(self) -> Translator | None:
        return self._source.current().translator

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
        if (translator := self._translator()) is not None:
            translator.track(value, name, step, epoch, context)

    def __setitem__(self, key: str, value: Any) -> None:
        if (translator := self._translator()) is not None:
            translator.set_param(key, value)

    def set(self, key: str, value: Any, strict: bool = True) -> None:
        self[key] = value

    def __getitem__(self, key: str) -> Any:
        exp = self._source.current()
        if not exp.enabled or exp.closed:
            raise KeyError(key)
        return exp.translator.sink.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def add_tag(self, tag: str) -> None:
        if (translator := self._translator()) is not None:
            translator.change_tags(add=[tag])

    def remove_tag(self, tag: str) -> None:
        if (translator := self._translator()) is not None:
            translator.change_tags(remove=[tag])

    @property
    def hash(self) -> str | None:
        return self._source.hash

    @property
    def name(self) -> str | None:
        return self._source.name

    @name.setter
    def name(self, value: str) -> None:
        self._source.rename(str(value))

    @property
    def artifacts_uri(self) -> str | None:
        """Where this run's artifacts are copied (``file://...`` or ``s3://...``)."""
        return self._source.current().artifacts_uri

    def __bool__(self) -> bool:
        return self._source.enabled

    def __getattr__(self, name: str) -> Any:
        """On a stand-in (ranks other than 0) any other call does nothing, as Lightning's
        ``DummyExperiment``: ``logger.experiment.log_text(...)`` in user code runs on every rank."""
        if name.startswith("_") or self._source.enabled:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


# The run ``start_logging`` opened: every ``SummaryWriter`` made while it is active writes to it.
_active: Experiment | None = None

# The runs open in this process, by hash: a copy of a logger (pickled, deep-copied) made in the process
# whose original holds the run writes through the original's experiment instead of opening it twice.
_opened_here: weakref.WeakValueDictionary[str, Experiment] = weakref.WeakValueDictionary()


# The experiments open in this process: a child forked from it drops what it logs to them.
_live_here: weakref.WeakSet[Experiment] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Values logged in a forked child to the parent's runs take the slow path, which drops them with
    one warning (:attr:`Experiment.inherited`); the sinks themselves are let go of by
    :mod:`~tracelet_callbacks.sink.ownership`."""
    inherited = list(_live_here)
    _live_here.clear()
    for exp in inherited:
        exp._live = None
        exp._warned_closed = False
        exp._lock = threading.RLock()  # a parent's thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def opened_here(run_hash: str | None) -> Experiment | None:
    """The open experiment of ``run_hash`` in this process (not one a forked parent opened)."""
    found = _opened_here.get(run_hash or "")
    return found if found is not None and found.is_open and found._owner == os.getpid() else None


def active() -> Experiment | None:
    """The experiment of the ``start_logging`` session, ``None`` outside one."""
    return _active


def swap_active(experiment: Experiment | None) -> Experiment | None:
    """Make ``experiment`` the session's (``None``: end it); returns the one it replaces."""
    global _active
    previous, _active = _active, experiment
    return previous


def find_run(config: TraceletConfig, path: tuple[str, ...], value: Any) -> str | None:
    """The hash of a run in ``config``'s repo or server whose param at ``path`` is ``value`` (the run an
    earlier import made for a folder, say); ``None`` when there is none."""
    from ..sink.storage import find_run as find_in_repo  # imports aim

    return find_in_repo(config, path, value)
