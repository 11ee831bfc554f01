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
import shutil
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
from .series import ScalarBatcher, new_run_with_hash, roomier_storage
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
                    self._write(run, record)
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
                self._write(run, record)
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
            log.error("tracelet: writing to AIM failed: %s (training goes on)", self.last_error)
            warnings.warn(
                f"tracelet: writing to AIM failed ({self.last_error}); training goes on",
                TraceletWarning,
                stacklevel=4,
            )

    def _write(self, run: Any, record: rec.Record) -> None:
        import aim

        if isinstance(record, rec.Scalar):
            run.track(
                record.value, name=record.name, step=record.step, epoch=record.epoch, context=record.context
            )
        elif isinstance(record, rec.Histogram):
            self._track_at(run, aim.Distribution(hist=record.counts, bin_range=record.bin_range), record)
        elif isinstance(record, rec.Images):
            pictures = [_aim_image(image) for image in record.images]
            self._track_at(run, pictures[0] if len(pictures) == 1 else pictures, record)
        elif isinstance(record, rec.Text):
            self._track_at(run, aim.Text(record.text), record)
        elif isinstance(record, rec.LogLine):
            from aim.ext.resource.log import LogLine

            self._track_at(run, LogLine(record.text), record, name="logs")
        elif isinstance(record, rec.Audio):
            clip = aim.Audio(record.wav, format="wav", rate=record.sample_rate, caption=record.caption)
            self._track_at(run, clip, record)
        elif isinstance(record, rec.Native):
            self._track_at(run, record.value, record)
        elif isinstance(record, rec.Params):
            current = run.get(record.key) if record.merge else None
            run[record.key] = (
                _deep_merge(current, record.values) if isinstance(current, dict) else record.values
            )
        elif isinstance(record, rec.Tags):
            for tag in record.add:
                run.add_tag(tag)
            for tag in record.remove:
                run.remove_tag(tag)
        elif isinstance(record, rec.RunInfo):
            if record.name is not None:
                run.name = record.name
            if record.experiment is not None:
                run.experiment = record.experiment
            if record.description is not None:
                run.description = record.description
        elif isinstance(record, rec.Artifact):
            self._store_artifact(run, record)
        elif isinstance(record, rec.Resumed):
            self._resumed(run, record)
        else:
            raise TypeError(f"unknown record type {type(record).__name__}")

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

    @staticmethod
    def _track_at(run: Any, value: Any, record: Any, name: str | None = None) -> None:
        """``run.track`` at the time the value was logged, not the time it is written (the writer may
        write it seconds later; an imported event keeps its own wall time)."""
        tracker = getattr(run, "_tracker", None)
        where = {"name": name or record.name, "step": record.step, "epoch": record.epoch}
        if tracker is not None and hasattr(tracker, "_track"):  # aim 3.x: pinned by aim<4
            tracker._track(value, record.timestamp, context=record.context, **where)
        else:
            run.track(value, context=record.context, **where)

    def _store_artifact(self, run: Any, record: rec.Artifact) -> None:
        uri = run.artifacts_uri or ""
        if uri.startswith("file://") and record.size is not None:
            # copied here, as many bytes as the file had when it was logged (aim's copy reads to the
            # end of a file that may still be growing), then entered as aim's log_artifact does
            from aim.sdk.objects.artifact import Artifact

            stored = os.path.join(uri[len("file://") :], record.name)
            os.makedirs(os.path.dirname(stored), exist_ok=True)
            copy_start(record.path, stored, record.size)
            run.meta_run_tree.subtree("artifacts")[record.name] = Artifact(
                record.path, uri=uri, name=record.name
            )
            return
        # aim's log_artifact is wrapped in its "noexcept" guard, which only logs in safe mode: block,
        # then check that the copy landed where a file:// store keeps it.
        run.log_artifact(record.path, name=record.name, block=True)
        if uri.startswith("file://"):
            stored = os.path.join(uri[len("file://") :], record.name)
            if not os.path.isfile(stored):
                raise TraceletError(f"tracelet: artifact {record.name!r} was not stored at {stored}")

    # -- durability ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Everything submitted so far is on disk (or applied by the server)."""
        with self._lock:
            # Locally this sink writes as it goes, but for a batch that may still be committing
            # (pipelined). aim's client queues a server's writes and sends them from a thread: wait
            # until that queue is empty (what aim's own Run.close does).
            self._settle()
            run = self._run
            if run is not None and not self._closed and run.repo.is_remote_repo:
                run.repo._client.get_queue().wait_for_finish()

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
            release_storage(repo, run.hash)
            chunk = os.path.join(self._repo_path or "", ".aim", "meta", "chunks", run.hash)
            if self._repo_path is not None and not os.path.isdir(chunk):
                self.index_error = (
                    f"run {run.hash} is lost: its files under {self._repo_path} are gone (the repo was "
                    "deleted or moved while the run was open)"
                )
                warnings.warn(f"tracelet: {self.index_error}", TraceletWarning, stacklevel=3)
                return
            try:
                if self._repo_path is not None:
                    from aim import Repo

                    repo = Repo.from_path(self._repo_path)
                self.index_error = index_run(repo, run.hash)
            except Exception as exc:
                self.index_error = f"run {run.hash} could not be indexed: {exc!r}"
            if self.index_error:
                warnings.warn(f"tracelet: {self.index_error}", TraceletWarning, stacklevel=3)


def copy_start(source: str, target: str, size: int) -> None:
    """Copy the first ``size`` bytes of ``source`` (all of it, if it has shrunk since) to ``target``."""
    left = size
    with open(source, "rb") as reading, open(target, "wb") as writing:
        while left > 0 and (chunk := reading.read(min(left, 1 << 20))):
            writing.write(chunk)
            left -= len(chunk)
    shutil.copymode(source, target)


def _aim_image(image: rec.ImageData) -> Any:
    import aim
    from PIL import Image as PILImage

    return aim.Image(PILImage.fromarray(image.pixels), caption=image.caption)


def _deep_merge(old: dict, new: Any) -> Any:
    if not isinstance(new, dict):
        return new
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(merged.get(key), dict) else value
    return merged


def release_storage(repo: Any, run_hash: str) -> None:
    """Close a closed run's own databases now, so another process can resume it at once.

    ``Run.close`` leaves them to the garbage collector (aim's handles sit in reference cycles); until
    then their RocksDB locks stay held. The writer process outlives the run (it waits for the
    trainer's next one), so it must not wait for a collection. Local repos only: a server holds its
    own handles. Relies on ``Repo.container_pool`` (pinned by ``aim<4`` and by the resume tests).
    """
    if repo.is_remote_repo:
        return
    for config, container in list(repo.container_pool.items()):
        if config.sub == run_hash:
            try:
                container.close()
            except Exception as exc:  # its files are gone (the repo was deleted): let it go unclosed
                log.warning("tracelet: could not close the storage of run %s: %r", run_hash, exc)
                _unregister(container)


def abandon_storage(run: Any) -> None:
    """Let a run and its databases go without closing them. At exit aim closes what is left: it
    writes the run's end time and flushes each database, which on a full disk fails or waits forever
    (and a failure there leaves aim's exit handler waiting forever too). Relies on aim's
    ``AutoClean.finalizer`` of the run and of its containers (pinned by ``aim<4``)."""
    holders = [run]
    if not run.repo.is_remote_repo:
        holders += [c for config, c in list(run.repo.container_pool.items()) if config.sub == run.hash]
    for holder in holders:
        _unregister(holder)


def _unregister(holder: Any) -> None:
    """Take ``holder`` (an ``aim.Run`` or a storage container) off aim's close-at-exit list."""
    finalizer = getattr(getattr(holder, "_resources", None), "finalizer", None)
    if finalizer is not None:
        finalizer.detach()


def index_run(repo: Any, run_hash: str, attempts: int = 40) -> str | None:
    """Make a closed run visible to ``Repo.iter_runs()`` / ``query_*`` now; the error text if it could not.

    aim shows only indexed runs, and only ``aim up`` indexes (``aim server`` never does), so without
    this a user's first query after training finds nothing. aim 3.29 has no public call that reports
    failure (``RepoIndexManager.index`` logs and returns), so this merges the run's meta chunk into the
    index itself, through ``Repo._get_index_tree`` (pinned by ``aim<4`` and by the tests), locally or
    on a server through aim's proxies. The index is one RocksDB that one process at a time may open
    for writing (``aim up`` indexing, another run closing): a lock is retried for a while.
    """
    import time

    last: Exception | None = None
    remote = repo.is_remote_repo
    for _ in range(attempts):
        containers: list[Any] = []
        try:
            if remote:
                index = repo._get_index_tree("meta", 0).view(())
                chunk = repo.request_tree("meta", run_hash, read_only=True)
                # a server merges into what its index held: a series a resume rewound away would stay
                del index[("meta", "chunks", run_hash)]
            else:
                containers = [repo._get_index_container("meta", 0)]
                containers.append(repo.request_container("meta", run_hash, read_only=True))
                index, chunk = containers[0].tree().view(()), containers[1].tree()
            chunk.subtree(("meta", "chunks", run_hash)).finalize(index=index)
            return None
        except Exception as exc:
            last = exc
            if "lock" not in str(exc).lower():
                break  # not another process holding the index (its files are gone ...): no retry
            time.sleep(0.25)
        finally:
            index = chunk = None
            if not remote:
                # a local index holds its database's lock until closed: close both now (a full
                # garbage collection to free them would cost the trainer ~70 ms at every close)
                for container in containers:
                    container.close()
            else:
                gc.collect()  # a held server-side handle shows readers old data: drop it now
    return f"run {run_hash} is saved but could not be indexed ({last}); `aim up` will index it"


def find_run(config: TraceletConfig, path: tuple[str, ...], value: Any) -> str | None:
    """The hash of a closed (indexed) run whose param at ``path`` equals ``value``, or ``None``."""
    if not config.remote_uri and not os.path.isdir(os.path.join(config.repo_path, ".aim")):
        return None  # no repo yet: no run, and no aim import in this process
    from aim import Repo

    if config.remote_uri:
        check_server(config.remote_uri)
    repo = Repo.from_path(config.remote_uri or config.repo_path)
    for run in repo.iter_runs():
        found: Any = run.get(path[0])
        for key in path[1:]:
            found = found.get(key) if isinstance(found, dict) else None
        if found == value:
            return run.hash
    return None
