"""The one run lifecycle every adapter uses, so a run opens, ends and resumes the same way everywhere.

A :class:`RunLifecycle` holds the settings and the current :class:`~tracelet_callbacks.Experiment`:

* **open lazily**: the experiment is made on first use and opens its run when something is logged
  (or :meth:`RunLifecycle.open` is called);
* **end with a status** (:meth:`end`): the run is flushed, closed and indexed (queryable at once), and
  the next use **continues the same run** by hash (HF's ``evaluate()`` after ``train()``, Lightning's
  ``test`` after ``fit``);
* **a new run** (:meth:`next_run`) for the next trainer, trial or fold: ``run_hash`` from the settings
  names the first run only;
* **finish** (:meth:`finish`): ended for good, later values are dropped with one warning until
  :meth:`next_run` (accelerate's ``end_training`` then ``init_trackers``);
* **pickled by hash**: a copy continues the run the original was writing (DDP spawn, Ray);
* **forked, left alone**: a child forked while a run is open (a DataLoader worker) drops what it
  logs, with one warning, and its :meth:`end` / :meth:`finish` end nothing of the parent's run
  (see :mod:`~tracelet_callbacks.run.experiment`); :meth:`next_run` gives the child a run of its own;
* **a stand-in** when ``enabled`` is ``False`` (non-zero ranks): every call does nothing.

>>> from tracelet_callbacks.config import resolve
>>> from tracelet_callbacks.testing import RecordingSink
>>> events = []
>>> runs = RunLifecycle(resolve({"sink_factory": lambda c: RecordingSink(c, events)}, env={}))
>>> runs.current().log_metric("loss", 1.0)
>>> first = runs.hash; runs.end("finished")
>>> runs.current().log_metric("loss", 0.5)   # continues the same run
>>> runs.hash == first
True
>>> runs.next_run(); runs.current().log_metric("loss", 2.0)
>>> [event[0] for event in events if event[0] != "flush"]
['open', 'close', 'open', 'close', 'open']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import TraceletConfig
from ..core.records import new_run_hash, normalise_status
from ..errors import TraceletError
from .experiment import Experiment, RunHandle, opened_here
from .ranks import launched_as_rank_zero
from .resume import ResumePoint, gone_from_server, run_not_found
from .watch import Watchers

__all__ = ["RunLifecycle"]


class RunLifecycle:
    """The state of one adapter's runs (see the module docstring).

    Args:
        config: the adapter's validated settings.
        enabled: ``False`` makes it a do-nothing stand-in (decided once, at the adapter's edge).
    """

    def __init__(self, config: TraceletConfig, *, enabled: bool = True) -> None:
        self.config = config
        self.enabled = enabled
        self.run_name: str | None = config.run_name  # the current run's name, known without opening
        self._exp: Experiment | None = None
        self._ended_exp: Experiment | None = None  # the last one closed, still readable (hash, status)
        self._resume: str | None = None  # an ended run, continued on next use
        self._checkpoint: ResumePoint | None = None  # a checkpoint's run, continued on next use
        self._reserved: str | None = None  # the hash the first run is made under (see reserve)
        self._ended: str | None = None  # the last run ended, whatever comes next
        self._runs = 0  # experiments made; the ``run_hash`` setting names the first one only
        self._finished = False
        self._stand_in: Experiment | None = None
        self._watchers = Watchers()
        if enabled and launched_as_rank_zero():
            from ..sink.writer import prepare

            prepare(config)  # the writer imports aim while the trainer is being set up

    # -- the current run ----------------------------------------------------------------------------

    def current(self, first_hash: Callable[[], str | None] | None = None) -> Experiment:
        """The experiment values go to now, made if needed (not opened).

        ``first_hash``: asked for the run to continue when the first run is made without a
        ``run_hash`` setting (Lightning: the run that wrote the checkpoint being loaded).
        """
        exp = self._exp
        if exp is not None and exp.closed and exp.enabled and not exp.inherited:
            # closed by a copy that shared it (or at exit): the next use continues it
            self._ended_exp, self._exp = exp, None
            if not self._finished:
                self._resume = self._ended = exp.hash
        if self._exp is None:
            self._exp = self._make(first_hash)
            if self._exp.resume_point is not None:  # a checkpoint's run
                self._exp = self._on_server(self._exp)
        exp = self._exp
        if exp.enabled and not exp.is_open and (shared := opened_here(exp.config.run_hash)) is not None:
            self._exp = shared  # a copy of this logger in this process holds the run: write through it
        return self._exp

    def _on_server(self, exp: Experiment) -> Experiment:
        """``exp``, continuing a checkpoint's run on a server, opened now: a run the server does not hold
        (deleted, or a hash no run has) is one warning and a new run, never a failed start. A local repo
        was asked (without aim) when the checkpoint was read: :func:`~.resume.checked_point`."""
        point = exp.resume_point
        if point is None or not self.config.remote_uri or self.config.offline or self.config.sink_factory:
            return exp
        try:
            return exp.open()  # any other failure is the caller's, as it was before: ``exp`` stays
        except TraceletError as exc:
            if not run_not_found(exc):
                raise
        gone_from_server(point, self.config)  # says why a new run starts
        return Experiment(self.config.replace(run_hash=None, run_name=self.run_name))

    def _make(self, first_hash: Callable[[], str | None] | None) -> Experiment:
        if not self.enabled:
            return Experiment(self.config, enabled=False)
        if self._checkpoint is not None:
            point, self._checkpoint = self._checkpoint, None
            self._runs += 1
            exp = Experiment(self.config.replace(run_hash=point.run_hash, run_name=None, tags=None))
            exp.resume_point = point
            return exp
        if self._resume is not None:
            resumed = self.config.replace(run_hash=self._resume, run_name=None, tags=None)
            self._resume = None
            return Experiment(resumed)
        if self._finished:  # as accelerate's own trackers: nothing is written until the next start
            dropped = Experiment(self.config)
            dropped.close("finished")  # never opened: writes nothing
            return dropped
        if self._reserved is not None and self._runs == 0:
            self._runs += 1
            return Experiment(
                self.config.replace(run_hash=self._reserved, resume="allow", run_name=self.run_name)
            )
        run_hash = self.config.run_hash if self._runs == 0 else None
        point = None
        if run_hash is None and self._runs == 0 and first_hash is not None:
            found = first_hash()
            if isinstance(found, ResumePoint):  # a checkpoint's run, and the step to rewind it to
                point = found if self.config.resume != "never" else None
                found = point.run_hash if point is not None else None
            run_hash = found
        self._runs += 1
        exp = Experiment(self.config.replace(run_hash=run_hash, run_name=self.run_name))
        exp.resume_point = point
        return exp

    def open(self) -> Experiment:
        """Open the current run now (a bad repo or a server that is down fails here)."""
        return self.current().open()

    def reserve(self) -> None:
        """Choose the first run's hash now, without making the run: copies of this lifecycle made
        before it (a logger pickled into ``ddp_spawn`` processes) then continue one run, made by
        whichever uses it first, and this one knows its hash."""
        if self.enabled and not self.started and self._reserved is None and not self.config.run_hash:
            self._reserved = new_run_hash()

    def check(self) -> None:
        """Fail now if the repo cannot be written or the server does not answer, without making a run
        (an adapter that may yet learn which run to continue, from a checkpoint)."""
        if self.enabled and not self.started:
            from ..sink.writer import check_target

            check_target(self.config)
        elif self.enabled:
            self.open()

    def continue_from(self, point: ResumePoint) -> None:
        """From here on, continue the run that wrote the checkpoint being loaded, rewound to its step
        (as ``resume`` says). A run already made for this attempt is closed as it is."""
        if not self.enabled or self.config.resume == "never":
            return
        exp = self._exp
        if exp is not None and point.run_hash in (exp.config.run_hash, exp.hash if exp.is_open else None):
            if not exp.is_open:
                exp.resume_point = point
            return
        if exp is not None:
            self.end("finished")
        self._resume, self._finished, self._checkpoint = None, False, point

    @property
    def made(self) -> Experiment | None:
        """The current experiment if it was made, without making one (a copy's run waits to be
        continued until it is used)."""
        return self._exp

    @property
    def latest(self) -> Experiment | None:
        """The current experiment if it was made, else the one that ended last."""
        return self._exp or self._ended_exp

    @property
    def is_open(self) -> bool:
        return self._exp is not None and self._exp.is_open

    @property
    def started(self) -> bool:
        """A run was made (or is waiting to be continued, or was finished) since :meth:`next_run`."""
        return self._exp is not None or self._resume is not None or self._finished or bool(self._checkpoint)

    @property
    def finished(self) -> bool:
        """:meth:`finish` was called and no :meth:`next_run` since."""
        return self._finished

    @property
    def hash(self) -> str | None:
        """The current run's hash, without reopening an ended run (``None`` on a stand-in)."""
        if not self.enabled:
            return None
        if self._resume is not None:
            return self._resume
        if self._checkpoint is not None:
            return self._checkpoint.run_hash
        if self._reserved is not None and self._exp is None and self._runs == 0:
            return self._reserved
        if self._finished and (self._exp is None or self._exp.closed):
            return self._ended  # finished for good: the run it was, not a new one
        exp = self.current()
        if not exp.is_open and exp.config.run_hash:
            return exp.config.run_hash
        return exp.hash

    @property
    def name(self) -> str | None:
        return self.run_name if self.enabled else None

    @property
    def known_hash(self) -> str | None:
        """The hash already known without making or opening anything (a copy's run, the setting)."""
        exp = self._exp
        made = exp.config.run_hash if exp is not None else None
        return self._resume or made or self._reserved or self.config.run_hash

    @property
    def stand_in(self) -> Experiment:
        """A do-nothing experiment for a rank > 0 (its steps still feed that rank's system metrics)."""
        if self._stand_in is None:
            self._stand_in = Experiment(self.config, enabled=False)
        return self._stand_in

    @property
    def handle(self) -> RunHandle:
        """``aim.Run``'s writing surface that always follows the current run."""
        return RunHandle(self)

    def rename(self, run_name: str) -> None:
        self.run_name = run_name
        if (translator := self.current().translator) is not None:
            translator.run_info(name=run_name)

    def flush(self) -> None:
        if self._exp is not None:
            self._exp.flush()

    def watch(
        self,
        model: Any,
        log: str | None,
        log_freq: int,
        steps_done: Callable[[], Any] | None = None,
        for_this_run: bool = False,
    ) -> None:
        """Watch ``model`` into whichever run is current (see :meth:`Experiment.watch`); ``steps_done``
        gives the trainer's optimizer steps completed, so the watcher's steps are the trainer's;
        ``for_this_run`` (the ``watch`` setting) takes the hooks off when the run ends."""
        if self.enabled:
            self._watchers.add(
                model, self._watch_target, log, log_freq, steps_done=steps_done, for_this_run=for_this_run
            )

    def unwatch(self, model: Any = None) -> None:
        self._watchers.remove(model)

    def _watch_target(self) -> Any:
        return self.current().translator if self.enabled and not self._finished else None

    # -- endings ------------------------------------------------------------------------------------

    def end(self, status: str = "finished") -> None:
        """Close the current run with ``status``; the next use continues it."""
        status = normalise_status(status)
        if self._watchers:
            self._watchers.end_run()  # the steps since the last write are checked before closing
        exp, self._exp = self._exp, None
        if exp is None or not exp.enabled:
            return
        if exp.inherited:
            # a forked child's copy of its parent's run: the parent alone ends it, and nothing here
            # continues it; it stays current, dropping what is logged, until next_run()
            self._exp, self._ended = exp, exp.hash
            exp.close(status)
            return
        self._ended_exp = exp
        run_hash = exp.hash if exp.is_open else exp.config.run_hash
        if not self._finished:  # set first: a close that fails still leaves the run to continue
            self._resume = self._ended = run_hash
        exp.close(status)

    def finish(self, status: str = "finished") -> None:
        """Close the current run for good: values are dropped (one warning) until :meth:`next_run`."""
        self.end(status)
        self._watchers.remove()
        self._resume, self._finished = None, True

    def next_run(self, run_name: str | None = None, status: str = "finished") -> None:
        """End the current run (if any) with ``status``; the next use starts a new run."""
        self.end(status)
        if self._exp is not None and self._exp.inherited:
            self._exp = None  # a forked child's new run is its own
        self._resume, self._finished = None, False
        self.run_name = run_name if run_name is not None else self.config.run_name

    # -- pickling -----------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """The live run stays behind (locks, a writer); its hash travels, so a copy continues it."""
        state = self.__dict__.copy()
        exp = state.pop("_exp")
        if exp is not None and exp.enabled and not exp.closed:
            if not exp.is_open:
                exp._name_run()  # named now if it was not: the copy must write the same run
            if exp.new_run:  # not made yet: whichever uses it first makes it (ddp_spawn's rank 0)
                state["_reserved"], state["_runs"] = exp.config.run_hash, 0
            else:
                state["_resume"] = exp.hash if exp.is_open else exp.config.run_hash
                state["_runs"] = max(state["_runs"], 1)
        state["_exp"] = state["_stand_in"] = state["_ended_exp"] = None
        state["_watchers"] = Watchers()  # hooks belong to the model in this process
        return state
