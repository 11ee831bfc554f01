"""The AIM sink: owns one ``aim.Run`` and turns records into calls on it.

This is the only module that imports aim. It opens a local repo (creating it), a remote
``aim://`` server, or an existing run to resume; writes records; and on ``close`` records the final
status, closes the run and indexes it so ``aim.Repo(...).query_metrics(...)`` sees it at once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import operator
import os
import threading
import warnings
from collections.abc import Iterable
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..errors import TraceletError, TraceletWarning, say
from .contract import Sink
from .environment import environment_params
from .heartbeat import BOOKKEEPING, Heartbeat
from .repo import check_server, make_repo
from .rocks import new_run_with_hash, roomier_storage
from .series import ScalarBatcher
from .storage import abandon_storage, close_and_index, index_run, release_storage
from .track import write_record
from .watchdog import is_disk_full

__all__ = ["AimSink", "index_run"]

log = logging.getLogger("tracelet_callbacks")

ARTIFACTS_FOLDER = "aim-artifacts"

_value = operator.itemgetter(1)  # a Scalar's value


class AimSink(Sink):
    """Writes records to an AIM run. ``open()`` is explicit; ``submit`` opens lazily too.

    Args:
        config: the resolved settings (repo, experiment, run name, tags, remote, resume hash ...).
    """

    def __init__(
        self,
        config: TraceletConfig,
        *,
        takeover: bool = False,
        argv: list[str] | None = None,
        heartbeat: bool = False,
        new_run: bool = False,
    ) -> None:
        self.config = config
        self._takeover = takeover  # continuing a run our writer opened: not a user's resume
        self._new_run = new_run  # config.run_hash is a run to make under that hash, not to look for
        self._argv = argv  # the training process's command line, when this runs in the writer process
        self._run: Any = None
        self._hash: str | None = None
        self._artifacts_uri: str | None = None
        self._repo_path: str | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._failures = 0
        self._batcher: Any = None  # ScalarBatcher once the run is open; False when unavailable
        self._disk_full = False  # RocksDB then neither writes nor closes: closing is skipped
        self.last_error: str | None = None
        #: Set by the writer process: a batch of scalars may still be committing when ``submit``
        #: returns (see ``submit``); ``committing`` and ``settled`` tell when it is done.
        self.pipelined = False
        #: ``(failures, last_error)`` as they were when the last batch left committing settled.
        self.settled: tuple[int, str | None] = (0, None)
        self.index_error: str | None = None
        self.status: str | None = None
        self._heartbeat = Heartbeat(self) if heartbeat else None
        #: How the sink tells the user about the run (a rewind); the writer process passes it on.
        self.notify: Any = say

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._run is not None and not self._closed

    @property
    def run(self) -> Any:
        """The live ``aim.Run`` (opened on first access); ``TraceletError`` once closed."""
        self.open()
        return self._run

    @property
    def hash(self) -> str:
        """The run hash; still known after ``close``."""
        if self._hash is None:
            self.open()
        return self._hash

    def open(self) -> None:
        with self._lock:
            if self._run is not None:
                return
            if self._closed:
                raise TraceletError("tracelet: this run is closed; start a new one to log more")
            self._run = self._create_run()
            self._hash = self._run.hash
            self._artifacts_uri = self._run.artifacts_uri
            if self._heartbeat is not None:
                self._heartbeat.start()

    def _create_run(self) -> Any:
        cfg = self.config
        import aim

        if cfg.remote_uri:
            check_server(cfg.remote_uri)
            repo: Any = cfg.remote_uri
        else:
            repo = self._local_repo(cfg.repo_path)
        if cfg.run_hash and not self._new_run:
            # aim's storage handles of a run closed earlier in this process are freed by the garbage
            # collector; reopening the run while they live reads stale or corrupt chunks
            gc.collect()
            # aim keeps the list of run hashes for 0.5 s: a run closed just now would be "missing"
            clear = getattr(getattr(aim.Repo, "_all_run_hashes", None), "cache_clear", None)
            if clear is not None:
                clear()
        made_here = self._new_run
        try:
            if not made_here and cfg.run_hash and cfg.resume == "allow":
                made_here = not self._exists(repo, cfg.run_hash)
            with contextlib.ExitStack() as context:
                if not cfg.remote_uri:
                    context.enter_context(roomier_storage())
                if made_here:  # a new run under the name the job chose for it
                    context.enter_context(new_run_with_hash(cfg.run_hash))
                run = aim.Run(
                    run_hash=None if made_here else cfg.run_hash,
                    repo=repo,
                    # a continued run keeps its experiment (the setting has a default, never "unset")
                    experiment=cfg.experiment_name if made_here or not cfg.run_hash else None,
                    # aim's collector measures the process it runs in (the writer): ours samples the trainer
                    system_tracking_interval=None,
                    log_system_params=False,  # aim's collector needs pkg_resources (gone in setuptools 81)
                    capture_terminal_logs=False,  # captured in the trainer (run/terminal.py), not here
                )
        except Exception as exc:
            where = cfg.remote_uri or self._repo_path
            what = f"resume run {cfg.run_hash!r}" if cfg.run_hash and not made_here else "open a run"
            raise TraceletError(
                f"tracelet: could not {what} in AIM repo {where}: {exc or repr(exc)}"
            ) from exc
        if self._takeover:
            return run  # the writer that died had set everything below already
        if cfg.run_name:
            run.name = cfg.run_name
        try:
            if cfg.log_system_params:  # key by key: our bookkeeping beside it stays
                for key, value in environment_params(self._argv).items():
                    run["__system_params", key] = value
        except Exception as exc:  # environment info is a nicety, never a reason to fail
            log.debug("tracelet: could not record environment info: %s", exc)
        if cfg.run_hash and not made_here:
            previous = run.get("status")
            if previous:
                run[(*BOOKKEEPING, "resumed_from_status")] = previous
        run["status"] = "running"
        run.set_artifacts_uri(cfg.artifacts_uri or self._default_artifacts_uri())
        return run

    @staticmethod
    def _exists(repo: Any, run_hash: str) -> bool:
        from aim import Repo

        return (
            Repo.from_path(repo).run_exists(run_hash) if isinstance(repo, str) else repo.run_exists(run_hash)
        )

    def _local_repo(self, repo_path: str) -> Any:
        self._repo_path = repo_path  # absolute and checked when the settings were resolved
        return make_repo(repo_path)

    def _default_artifacts_uri(self) -> str:
        base = self._repo_path or os.path.abspath(".")
        return "file://" + os.path.join(base, ARTIFACTS_FOLDER)

    # -- writing ------------------------------------------------------------------------------------

    def submit(self, records: Iterable[rec.Record]) -> None:
        """Write ``records``. With ``pipelined``, a batch of plain numbers may still be committing on
        return (``committing``); the batch before it has settled either way, before this call writes
        anything else or returns (``settled`` then holds the failures as they were right after)."""
        with self._lock:
            if self._closed:
                self._dropped_after_close()
                return
            run = self.run
            records = list(records)
            if set(map(type, records)) == {rec.Scalar} and set(map(type, map(_value, records))) == {float}:
                # the common batch: plain numbers only, the one that may still be committing on return
                self._write_scalars(run, records, wait=not self.pipelined)
                return
            self._settle()  # anything but numbers sees the scalars before it stored
            scalars: list[rec.Scalar] = []
            for record in records:
                if type(record) is rec.Scalar:
                    if type(record.value) is not float:  # a device value, read only now
                        try:
                            record = record._replace(value=float(record.value))
                        except Exception as exc:
                            self._report_failure(record, exc)
                            continue
                    scalars.append(record)
                    continue
                if scalars:
                    self._write_scalars(run, scalars)
                    scalars = []
                try:
                    if type(record) is rec.Resumed:
                        self._resumed(run, record)
                    else:
                        write_record(run, record)
                except Exception as exc:
                    if isinstance(record, rec.Artifact):  # an explicit call: answer it, not the log
                        raise TraceletError(
                            f"tracelet: storing artifact {record.name!r} failed: {exc}"
                        ) from exc
                    self._report_failure(record, exc)
            if scalars:
                self._write_scalars(run, scalars)

    def _write_scalars(self, run: Any, scalars: list[rec.Scalar], wait: bool = True) -> None:
        if self._batcher is None and ScalarBatcher.available(run):
            self._batcher = ScalarBatcher(run, settled=self._scalars_settled)
        if self._batcher:
            try:
                self._batcher.write(scalars, wait=wait)
                return
            except Exception as exc:  # raised before the batch's commit (a commit's own is settled)
                if isinstance(exc, Warning):
                    raise  # our own failure warning, which the caller's filters made an error
                self._batcher.settle()  # the batch before it, in order
                if is_disk_full(exc):
                    for record in scalars:
                        self._report_failure(record, exc)
                    return
                # a different aim: say so once, then write value by value
                log.warning("tracelet: batched writing is unavailable (%r); using Run.track", exc)
                self._batcher.close()
                self._batcher = False
        for record in scalars:
            try:
                write_record(run, record)
            except Exception as exc:
                self._report_failure(record, exc)

    def _scalars_settled(self, scalars: Any, exc: BaseException | None) -> None:
        """A batch of scalars is committed, or its commit failed (each of its values counts)."""
        if exc is not None:
            for record in scalars:
                self._report_failure(record, exc)  # type: ignore[arg-type]
        self.settled = (self._failures, self.last_error)

    @property
    def committing(self) -> bool:
        """Whether the last batch of scalars may still be committing (only with ``pipelined``)."""
        return bool(self._batcher) and self._batcher.committing

    def _settle(self) -> None:
        """Wait for the batch of scalars still committing; its failures are counted and reported."""
        if self._batcher:
            self._batcher.settle()

    def get(self, key: str) -> Any:
        """``run[key]`` as stored (``KeyError`` when absent)."""
        with self._lock:
            self._settle()
            return self.run[key]

    def _report_failure(self, record: rec.Record, exc: Exception) -> None:
        self._failures += 1
        full = is_disk_full(exc)
        if full and self._disk_full:
            return  # said once: every later value fails the same way
        if full:
            self._disk_full = True
            self.last_error = (
                f"the disk holding {self._repo_path or self.config.repo_path} is full, so values are not "
                f"stored from now on and run {self._hash} will stay 'active' (free space, then run "
                f"`python -m tracelet_callbacks runs close-stale`): {exc}"
            )
        else:
            self.last_error = f"{type(record).__name__}: {exc!r}"
        if self._failures == 1 or full:
            say(f"tracelet: writing to AIM failed ({self.last_error}); training goes on")

    def _resumed(self, run: Any, record: rec.Resumed) -> None:
        from .rewind import rewind

        removed = 0
        if record.step is not None and not record.keep:
            removed = rewind(run, record.step)
        run["resumed"] = [*(run.get("resumed") or []), {"time": record.timestamp, "step": record.step}]
        if removed:
            self.notify(
                f"tracelet: continuing run {run.hash} from its checkpoint at step {record.step}: removed "
                f"{removed} points the interrupted attempt logged after it (resume='append' keeps them)"
            )
        else:
            log.info("tracelet: continuing run %s from step %s", run.hash, record.step)

    # -- durability ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Everything submitted so far is on disk (or applied by the server)."""
        with self._lock:
            # Locally this sink writes as it goes, but for a batch that may still be committing
            # (pipelined). aim's client queues a server's writes and sends them from a thread: wait
            # until that queue is empty (what aim's own Run.close does).
            self._settle()
            run = self._run
            if run is None or self._closed:
                return
            if run.repo.is_remote_repo:
                run.repo._client.get_queue().wait_for_finish()
            elif self._batcher:
                self._batcher.idle()  # a large memtable goes to disk now, not at the run's close

    def close(self, status: str = "finished") -> None:
        """Record ``status``, close the run and index it. Safe to call twice."""
        status = rec.normalise_status(status)
        if self._heartbeat is not None:
            self._heartbeat.stop()  # outside the lock: a beat in progress needs it
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.status = status
            if self._batcher:
                try:
                    self._batcher.close()  # the last commit settles (a full disk shows here); its thread ends
                except Exception as exc:  # counted already: the run is closed all the same
                    log.error("tracelet: the last values of run %s: %r", self._hash, exc)
            run, self._run = self._run, None
            if run is None:
                return
            repo = run.repo
            if self._disk_full:
                # RocksDB neither writes nor closes without room (closing waits for it forever): the
                # run is left unclosed, as the warning said, and nothing waits on its databases
                log.warning("tracelet: run %s is left unclosed: %s", run.hash, self.last_error)
                abandon_storage(run)
                return
            try:
                run["status"] = status
                if self._failures:
                    run["tracelet_write_failures"] = self._failures
            except Exception as exc:  # the end of a script is no place to raise; say it and close anyway
                warnings.warn(
                    f"tracelet: could not record status of run {run.hash}: {exc!r}",
                    TraceletWarning,
                    stacklevel=3,
                )
            finally:
                try:
                    run.close()
                except Exception as exc:  # its files are gone or broken: aim must not retry at exit
                    abandon_storage(run)
                    self.index_error = f"closing AIM run {run.hash} failed: {exc!r}"
                    warnings.warn(f"tracelet: {self.index_error}", TraceletWarning, stacklevel=3)
                    return
            chunk = os.path.join(self._repo_path or "", ".aim", "meta", "chunks", run.hash)
            if self._repo_path is not None and not os.path.isdir(chunk):
                release_storage(repo, run.hash)
                self.index_error = (
                    f"run {run.hash} is lost: its files under {self._repo_path} are gone (the repo was "
                    "deleted or moved while the run was open)"
                )
                warnings.warn(f"tracelet: {self.index_error}", TraceletWarning, stacklevel=3)
                return
            try:
                self.index_error = close_and_index(repo, run.hash)
            except Exception as exc:
                self.index_error = f"run {run.hash} could not be indexed: {exc!r}"
            if self.index_error:
                warnings.warn(f"tracelet: {self.index_error}", TraceletWarning, stacklevel=3)
