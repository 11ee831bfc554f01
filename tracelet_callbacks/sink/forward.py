"""Logging to an ``aim server`` through the spool, so a server that goes away loses nothing.

:func:`aim_sink` is what every writer opens. For a local repo that is an
:class:`~tracelet_callbacks.sink.run.AimSink`. With ``remote_uri`` it is a :class:`ForwardingSink`:

* every record is written to the spool first (a local AIM repo, :mod:`~tracelet_callbacks.sink.spool`),
  with its automatic step made explicit, so the training loop's acknowledgements never wait for the
  network and every series point has the same key in both places;
* a forwarder thread sends the same records to the server as they come;
* when the server stops answering (nothing sent for :data:`STALL_SECS`), one warning names the spool,
  the forwarder drops its queue and waits; when the server answers again it copies the run from the
  spool (:func:`~tracelet_callbacks.sink.spool.copy_run`, idempotent by key) and goes on live;
* ``flush()`` is the spool's; ``close()`` waits for the server only while it makes progress, and
  otherwise says which command sends the rest.

With ``offline=True`` there is no forwarder: ``python -m tracelet_callbacks sync`` sends the run later.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..errors import TraceletError, say
from .contract import Sink
from .heartbeat import Heartbeat
from .repo import check_server
from .rewind import hold_steps
from .run import AimSink
from .spool import read_mark, seed_from, write_mark

__all__ = ["ForwardingSink", "RunNotFound", "aim_sink"]

log = logging.getLogger("tracelet_callbacks")

#: Seconds without progress after which the server counts as gone (and ``close`` stops waiting).
STALL_SECS = 10.0
#: Seconds between attempts to reach a server that went away.
RETRY_SECS = 1.0
#: Records queued for the server at most; past that the forwarder catches up from the spool.
QUEUE_LIMIT = 200_000
#: Forwarders replaced after hanging in aim's client before forwarding is given up (``sync`` remains).
MAX_STUCK = 3


class RunNotFound(TraceletError):
    """The run to continue is neither on the server nor in the spool (deleted, or a hash no run has):
    its own type, so a trainer continuing a checkpoint's run can start a new run instead of failing."""


def _answers(remote_uri: str) -> bool:
    try:
        check_server(remote_uri)
    except Exception:
        return False
    return True


def _defuse(repo: Any) -> None:
    """Let go of the client of a server that went away, so that nothing waits for it again.

    aim's client sends writes from a queue that retries forever, and every remote object it hands out
    waits for that queue when it is garbage collected (in whatever thread the collector runs): with
    the server gone, any thread of the writer could hang there. The queue is emptied and told to
    stop, and new writes to it are dropped (the spool holds them). aim 3.29's ``RequestQueue`` (pinned
    by ``aim<4``); its tasks sit in a ``queue.Queue``.
    """
    queue = getattr(getattr(repo, "_client", None), "_queue", None)
    inner = getattr(queue, "_queue", None)
    if queue is None or inner is None:
        return
    queue._shutdown = True
    queue.register_task = lambda *args, **kwargs: None
    queue.wait_for_finish = lambda: None
    inner.task_done = lambda: None  # a task its thread is sending now must not trip over the reset
    with inner.all_tasks_done:
        inner.queue.clear()
        inner.unfinished_tasks = 0
        inner.all_tasks_done.notify_all()


@dataclasses.dataclass(frozen=True)
class _StoredArtifact:
    """An artifact the spool has stored: the server's run gets its entry (the file is where both
    runs' ``artifacts_uri`` points already)."""

    name: str
    entry: Any


def aim_sink(
    config: TraceletConfig, *, takeover: bool = False, argv: list[str] | None = None, new_run: bool = False
) -> Any:
    """The sink that writes ``config``'s run: straight into a local repo, or through the spool.
    ``new_run``: ``config.run_hash`` names a run to make, not one to look for."""
    if config.remote_uri:
        return ForwardingSink(config, takeover=takeover, argv=argv, new_run=new_run)
    return AimSink(config, takeover=takeover, argv=argv, heartbeat=True, new_run=new_run)


class ForwardingSink(Sink):
    """Writes a server's run into the spool and forwards it (see the module docstring)."""

    def __init__(
        self,
        config: TraceletConfig,
        *,
        takeover: bool = False,
        argv: list[str] | None = None,
        new_run: bool = False,
    ) -> None:
        import os

        self.config = config
        self.remote_uri: str = config.remote_uri  # type: ignore[assignment]
        # the artifacts go where a run logged straight to the server would put them
        artifacts = config.artifacts_uri or "file://" + os.path.abspath("aim-artifacts")
        spool_config = config.replace(remote_uri=None, repo_path=config.spool_path, artifacts_uri=artifacts)
        self._spool = AimSink(spool_config, takeover=takeover, argv=argv, new_run=new_run)
        self._new_run = new_run
        self._lock = threading.RLock()
        self._wake = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._queued = 0
        self._behind = True  # the server's copy must first be brought up to date from the spool
        self._busy = False  # the forwarder holds work it has not finished
        self._alive_at = self._sent_at = time.monotonic()
        self._closing: str | None = None
        self._done = threading.Event()
        self._outage_said = False
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._stuck = 0  # forwarders replaced because a call to the server never returned
        self._server: Any = None  # the aim.Repo of the server, a new one after each outage
        self._client_left: int | None = None  # tasks aim's client held when last looked at
        self._steps: dict[tuple, int] = {}
        self._heartbeat = Heartbeat(self, tick=self._check_stall)
        #: How news about the server reaches the user: a warning here; the writer process passes it
        #: on to the training process (``wire.Notice``).
        self.notify: Callable[[str], None] = say

    # -- the AimSink surface the writers use ---------------------------------------------------------

    @property
    def hash(self) -> str:
        return self._spool.hash

    @property
    def artifacts_uri(self) -> str | None:
        return self._spool._artifacts_uri

    @property
    def failures(self) -> int:
        return self._spool.failures

    @property
    def last_error(self) -> str | None:
        return self._spool.last_error

    @property
    def index_error(self) -> str | None:
        return self._spool.index_error

    @property
    def status(self) -> str | None:  # type: ignore[override]
        return self._spool.status

    @property
    def is_open(self) -> bool:
        return self._spool.is_open

    @property
    def spool_path(self) -> str:
        return self.config.spool_path

    def open(self) -> None:
        with self._lock:
            if self._spool.is_open:
                return
            made_here = self._new_run
            if self.config.run_hash and not self._new_run:
                made_here = self._prepare_resume(self.config.run_hash)
            self._spool.open()
            if made_here:  # the spool holds all of it: a copy may replace the server's
                write_mark(self.spool_path, self.hash, server=self.remote_uri, whole=True)
            if not self.config.offline:
                with self._wake:
                    self._start_forwarder()
            self._heartbeat.start()

    def _prepare_resume(self, run_hash: str) -> bool:
        """Before a run is resumed: whether it will be made here (neither the spool nor the server
        has it). A run the server has may hold more than this spool: its copy is marked not whole
        before anything of it lands in the spool, and a spool that lacks it gets the run's meta data
        only (params, tags, each series' last step), not its points. Those stay on the server; a copy
        from a spool run that is not whole adds to them and never deletes one."""
        import aim

        spool_repo = aim.Repo.from_path(self._spool._local_repo(self.config.spool_path))
        in_spool = spool_repo.run_exists(run_hash)
        if self.config.offline:
            return not in_spool and self.config.resume == "allow"
        server = aim.Repo.from_path(self.remote_uri)
        try:
            on_server = server.run_exists(run_hash)
        except Exception:
            if in_spool:  # the server is away: go on from the spool, the forwarder catches up
                write_mark(self.spool_path, run_hash, server=self.remote_uri, whole=False)
                return False
            raise
        if not on_server:
            if not in_spool and self.config.resume != "allow":  # aim's own error would name the spool
                raise RunNotFound(
                    f"tracelet: could not resume run {run_hash!r}: the AIM server {self.remote_uri} holds "
                    "no such run, nor does the spool"
                )
            return not in_spool and self.config.resume == "allow"
        unfinished = read_mark(self.spool_path, run_hash)["seeded"] is False  # a start that was killed
        write_mark(self.spool_path, run_hash, server=self.remote_uri, whole=False)
        if not in_spool or unfinished:
            write_mark(self.spool_path, run_hash, seeded=False)
            seed_from(server, run_hash, spool_repo)
            write_mark(self.spool_path, run_hash, seeded=True)
        return False

    def submit(self, records: Any) -> None:
        with self._lock:
            records = self._explicit_steps(list(records))
            rewinds = [
                record.step
                for record in records
                if type(record) is rec.Resumed and record.step is not None and not record.keep
            ]
            whole = True
            if rewinds:  # a spool run that is not whole: the server's points after it go on the server
                mark = read_mark(self.spool_path, self.hash)
                whole = mark["whole"]
                if not whole:
                    earliest = min(rewinds if mark["rewind"] is None else [*rewinds, mark["rewind"]])
                    write_mark(self.spool_path, self.hash, rewind=earliest)
            self._spool.submit(records)  # an artifact that cannot be stored raises here, for the caller
            if not whole:  # automatic steps go on from the checkpoint in series only the server holds
                self._spool.flush()
                hold_steps(self._spool.run, min(rewinds))
            if self._thread is None:
                return
            forwarded = []
            for record in records:
                if isinstance(record, rec.Artifact):  # the server's run gets the entry, not a second copy
                    entry = self._spool.run.meta_run_tree.subtree("artifacts")[record.name]
                    forwarded.append(_StoredArtifact(record.name, entry))
                else:
                    forwarded.append(record)
            self._enqueue(forwarded)

    def get(self, key: str) -> Any:
        return self._spool.get(key)

    def flush(self) -> None:
        """What was submitted is durable in the spool; the server is not waited for."""
        self._spool.flush()
        self._check_stall()

    def close(self, status: str = "finished") -> None:
        with self._lock:
            if not self._spool.is_open and self._spool.status is not None:
                return
            self._heartbeat.stop()
            self._spool.close(status)
            with self._wake:
                forwarding = self._thread is not None
                self._closing = rec.normalise_status(status)
                self._wake.notify_all()
            if not forwarding:
                if not self.config.offline:  # forwarding was given up on earlier
                    what = f"run {self.hash} was not sent to the AIM server at {self.remote_uri}"
                    self.notify(self._not_sent(what))
                return
            # wait while the server takes what it lacks; not for a server that is gone
            started = probed = time.monotonic()
            unreachable = False
            while not self._done.wait(0.1):
                self._client_moved()
                now = time.monotonic()
                quiet = now - max(self._sent_at, started)
                if quiet > 1.0 and now - probed > 1.0:  # nothing taken for a second: is it there at all?
                    probed = now
                    unreachable = not _answers(self.remote_uri)
                if unreachable or quiet > STALL_SECS:
                    with self._wake:
                        self._generation += 1  # the forwarder, if it ever wakes, stops
                        if self._server is not None:
                            _defuse(self._server)
                    why = f"nothing taken for {STALL_SECS:.0f} s"
                    why = "it cannot be reached" if unreachable else why
                    what = f"the AIM server at {self.remote_uri} did not take all of run {self.hash} ({why})"
                    self.notify(self._not_sent(what))
                    break

    def _not_sent(self, what: str) -> str:
        return (
            f"tracelet: {what}; the spool {self.spool_path} holds it whole: send it with "
            f"`python -m tracelet_callbacks sync {self.spool_path} --to {self.remote_uri}`"
        )

    # -- steps ----------------------------------------------------------------------------------------

    def _explicit_steps(self, records: list) -> list:
        """Give each record with an automatic step the step the spool would give it, so both copies
        store it under the same key (aim counts automatic steps per series from its last step)."""
        out = []
        for record in records:
            name = getattr(record, "name", None) if not isinstance(record, rec.LogLine) else "logs"
            if name is None or not hasattr(record, "step"):
                out.append(record)
                continue
            key = (name, tuple(sorted(record.context.items())))
            following = self._steps.get(key)
            if following is None:
                following = self._steps[key] = self._next_step(name, record.context)
            if record.step is None:
                step = following
                record = (
                    record._replace(step=step)
                    if isinstance(record, rec.Scalar)
                    else dataclasses.replace(record, step=step)
                )
            self._steps[key] = max(following, record.step + 1)
            out.append(record)
        return out

    def _next_step(self, name: str, context: dict) -> int:
        """The step aim would give the next automatic value of the series (0 for a new one)."""
        from aim.storage.context import Context

        info = self._spool.run._tracker.sequence_infos.get((Context(context).idx, name))
        return info.count if info is not None and info.initialized else 0

    # -- forwarding -----------------------------------------------------------------------------------

    def _start_forwarder(self) -> None:
        """(under ``_wake``) A new forwarder thread; one that was stuck in aim's client finds it was
        replaced when it wakes up, and ends."""
        self._generation += 1
        self._alive_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._forward, args=(self._generation,), name="tracelet-forward", daemon=True
        )
        self._thread.start()

    def _touch(self, sent: int = 0) -> None:
        """The forwarder is not stuck (and, with ``sent``, the server took something)."""
        now = time.monotonic()
        self._alive_at = now
        if sent:
            self._sent_at = now

    def _enqueue(self, items: list) -> None:
        with self._wake:
            if not self._behind:
                if self._queued + len(items) > QUEUE_LIMIT:
                    # a server slower than the loop, not a server gone: the copy from the spool is
                    # its fastest way to catch up, and nothing needs saying
                    self._fall_behind(f"more than {QUEUE_LIMIT} values are waiting for it", say=False)
                else:
                    if not self._busy and not self._queue:
                        self._touch()  # idle until now: the clock for being stuck starts here
                    self._queue.append(items)
                    self._queued += len(items)
                    self._wake.notify_all()
        self._check_stall()

    def _client_moved(self) -> None:
        """aim's client sending its queue counts as progress, even while the forwarder waits inside
        one of its calls (a read waits for every queued write first)."""
        inner = getattr(getattr(getattr(self._server, "_client", None), "_queue", None), "_queue", None)
        left = getattr(inner, "unfinished_tasks", None)
        if left is not None and left != self._client_left:
            if self._client_left is not None:
                self._touch(sent=1)
            self._client_left = left

    def _check_stall(self) -> None:
        """A forwarder stuck in a call to the server for :data:`STALL_SECS` is replaced."""
        self._client_moved()
        with self._wake:
            if self._thread is None or self._done.is_set() or self._closing is not None:
                return
            working = self._busy or bool(self._queue)
            if not working or time.monotonic() - self._alive_at <= STALL_SECS:
                return
            self._fall_behind(f"it has not answered for {STALL_SECS:.0f} s")
            self._stuck += 1
            if self._stuck <= MAX_STUCK:
                self._start_forwarder()
            else:  # its client keeps hanging: the spool keeps the run for `sync`
                self._generation += 1
                self._thread = None

    def _fall_behind(self, why: str, say: bool = True) -> None:
        """(under ``_wake``) Stop queueing for the server; the spool has everything."""
        self._behind = True
        self._queue.clear()
        self._queued = 0
        if self._server is not None:
            _defuse(self._server)
            self._server = None
        if say and not self._outage_said:
            self._outage_said = True
            self.notify(
                f"tracelet: the AIM server at {self.remote_uri} is behind ({why}); run {self.hash} goes on "
                f"in the spool {self.spool_path} and is sent when the server answers again "
                f"(or with `python -m tracelet_callbacks sync {self.spool_path} --to {self.remote_uri}`)"
            )

    def _forward(self, generation: int) -> None:
        """A forwarder thread: bring the server up to date, then send what comes, until closed."""
        live: AimSink | None = None
        items: list = []
        while True:
            with self._wake:
                if generation != self._generation:
                    return  # replaced while stuck
                closing = self._closing
                if self._behind:
                    live = None  # a server that went away: its client is not trusted again
                    self._busy = True
                elif self._queue:
                    items = self._queue.popleft()
                    self._queued -= len(items)
                    self._busy = True
                elif closing is None:
                    self._busy = False
                    self._wake.wait(1.0)
                    continue
                else:
                    items = []
            try:
                if live is None:
                    live = self._catch_up(generation)
                    if live is None:  # replaced, or the closed run was copied whole: nothing left
                        return
                    continue
                if items:
                    self._send(live, items, generation)
                    items = []
                    continue
                self._drain(live.run.repo, generation)
                live.close(closing)  # closing, and everything queued was sent
                if live.index_error:
                    self.notify(f"tracelet: {live.index_error}")
                self._finished(generation)
                return
            except Exception as exc:
                log.debug("tracelet: forwarding to %s failed: %r", self.remote_uri, exc)
                with self._wake:
                    if generation != self._generation:
                        return
                    self._fall_behind(f"{type(exc).__name__}: {str(exc)[:120]}")
                live = None
                time.sleep(RETRY_SECS)

    def _catch_up(self, generation: int) -> AimSink | None:
        """Wait for the server, copy the run there from the spool, and open it for live writing.
        ``None`` when this thread was replaced, or the run is closed (then the copy finished it)."""
        import aim

        from .spool import copy_run

        while True:
            if generation != self._generation:
                return None
            try:
                check_server(self.remote_uri)
                break
            except Exception:
                self._touch()
                time.sleep(RETRY_SECS)
        with self._wake:
            # from here on new records queue up again; any the copy also holds land on the same keys
            self._behind = False
            closing = self._closing
        # a new client: aim's old one may be wedged by the outage (its pool is by address)
        self._server = aim.Repo(self.remote_uri)
        aim.Repo._pool[self.remote_uri] = self._server
        spool = aim.Repo.from_path(self.config.spool_path)
        mark = read_mark(self.spool_path, self.hash)
        copy_run(
            spool,
            self.hash,
            self._server,
            self._touch,
            drain=lambda repo: self._drain(repo, generation),
            whole=mark["whole"],
            rewind_to=mark["rewind"],
        )
        self._rewound(mark["rewind"])
        self._touch(sent=1)
        if self._outage_said:
            self._outage_said = False
            self.notify(
                f"tracelet: the AIM server at {self.remote_uri} answers again; "
                f"run {self.hash} is up to date there"
            )
        if closing is not None:
            self._finished(generation)
            return None
        live = AimSink(self.config.replace(run_hash=self.hash, run_name=None, tags=None), takeover=True)
        live.open()
        return live

    def _drain(self, repo: Any, generation: int) -> None:
        """Wait until aim's client has sent all it holds, counting each task it sends as progress: a
        busy server is slow, not gone. (aim's ``RequestQueue`` keeps its tasks in a ``queue.Queue``.)"""
        inner = getattr(getattr(getattr(repo, "_client", None), "_queue", None), "_queue", None)
        if inner is None:
            repo._client.get_queue().wait_for_finish()
            return
        last = None
        with inner.all_tasks_done:
            while inner.unfinished_tasks and generation == self._generation:
                if inner.unfinished_tasks != last:
                    last = inner.unfinished_tasks
                    self._touch(sent=1)
                inner.all_tasks_done.wait(0.5)

    def _send(self, live: AimSink, items: list, generation: int) -> None:
        records = [item for item in items if type(item) is not _StoredArtifact]
        if records:
            failed = live.failures
            live.submit(records)
            if live.failures != failed:
                # a write the server did not take (it went away mid-call: a read before a merge, a
                # request aim's client gave up on) is in the spool: catching up sends it from there
                raise RuntimeError(f"a write did not reach the server: {live.last_error}")
            for record in records:
                if type(record) is rec.Resumed and record.step is not None and not record.keep:
                    self._rewound(record.step)
        for item in items:
            if type(item) is _StoredArtifact:
                live.run.meta_run_tree.subtree("artifacts")[item.name] = item.entry
        with self._wake:
            caught_up = not self._queue
        if caught_up:
            self._drain(live.run.repo, generation)
        self._touch(sent=len(items))

    def _rewound(self, step: int | None) -> None:
        """The server's run was rewound to ``step``: a later copy need not do it again (unless a
        rewind further back came meanwhile)."""
        if step is None:
            return
        try:
            if read_mark(self.spool_path, self.hash)["rewind"] == step:
                write_mark(self.spool_path, self.hash, rewind=None)
        except OSError as exc:
            log.debug("tracelet: could not update the spool's mark of run %s: %r", self.hash, exc)

    def _finished(self, generation: int) -> None:
        with self._wake:
            if generation == self._generation:
                self._record_synced()
                self._server = None  # the run is on the server: its client may go with the sink
                self._done.set()

    def _record_synced(self) -> None:
        """The server has the closed run whole: a later ``sync`` has nothing to send for it."""
        import aim

        from .sync import Journal, finished_mark

        try:
            mark = finished_mark(aim.Repo.from_path(self.config.spool_path), self.hash)
            Journal(self.config.spool_path).record(self.remote_uri, self.hash, mark)
        except Exception as exc:
            log.debug("tracelet: could not record that run %s is on the server: %r", self.hash, exc)
