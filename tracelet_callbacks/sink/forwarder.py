"""The forwarder: a thread that sends a spooled run's records to its ``aim server`` as they come.

:class:`~tracelet_callbacks.sink.forward.ForwardingSink` writes every record to the spool first and
hands it to a :class:`Forwarder`, which sends it on. When the server stops answering (nothing sent for
:data:`STALL_SECS`) the forwarder drops its queue, says so once, and waits; when the server answers
again it copies the run from the spool (:func:`~tracelet_callbacks.sink.spool.copy_run`, idempotent by
key) and goes on live. A forwarder stuck inside aim's client is replaced, at most :data:`MAX_STUCK`
times; after that the spool keeps the run for ``python -m tracelet_callbacks sync``.
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
from .repo import check_server
from .run import AimSink
from .spool import read_mark, write_mark

__all__ = ["STALL_SECS", "Forwarder", "StoredArtifact", "not_sent"]

log = logging.getLogger("tracelet_callbacks")

#: Seconds without progress after which the server counts as gone (and ``close`` stops waiting).
STALL_SECS = 10.0
#: Seconds between attempts to reach a server that went away.
RETRY_SECS = 1.0
#: Records queued for the server at most; past that the forwarder catches up from the spool.
QUEUE_LIMIT = 200_000
#: Forwarders replaced after hanging in aim's client before forwarding is given up (``sync`` remains).
MAX_STUCK = 3


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
class StoredArtifact:
    """An artifact the spool has stored: the server's run gets its entry (the file is where both
    runs' ``artifacts_uri`` points already)."""

    name: str
    entry: Any


def not_sent(what: str, spool_path: str, remote_uri: str) -> str:
    """The warning for a run the server did not get whole, with the command that sends the rest."""
    return (
        f"tracelet: {what}; the spool {spool_path} holds it whole: send it with "
        f"`python -m tracelet_callbacks sync {spool_path} --to {remote_uri}`"
    )


class Forwarder:
    """Sends the records of ``spool``'s run to ``config.remote_uri`` from a thread of its own (see the
    module docstring). ``notify`` is how news about the server reaches the user."""

    def __init__(self, config: TraceletConfig, spool: AimSink, notify: Callable[[str], None]) -> None:
        self.config = config
        self.remote_uri: str = config.remote_uri  # type: ignore[assignment]
        self.notify = notify
        self._spool = spool
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

    @property
    def hash(self) -> str:
        return self._spool.hash

    @property
    def spool_path(self) -> str:
        return self.config.spool_path

    @property
    def running(self) -> bool:
        """A forwarder thread is sending (not given up on after hanging too often)."""
        return self._thread is not None

    def start(self) -> None:
        with self._wake:
            self._start_forwarder()

    def finish(self, status: str) -> bool:
        """The run was closed in the spool: wait while the server takes what it lacks, not for a server
        that is gone (then say what was not sent). ``False`` when nothing was being forwarded."""
        with self._wake:
            forwarding = self._thread is not None
            self._closing = rec.normalise_status(status)
            self._wake.notify_all()
        if not forwarding:
            return False
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
                self.notify(not_sent(what, self.spool_path, self.remote_uri))
                break
        return True

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

    def enqueue(self, items: list) -> None:
        """Queue records for the server (the spool has them already)."""
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
        self.check_stall()

    def _client_moved(self) -> None:
        """aim's client sending its queue counts as progress, even while the forwarder waits inside
        one of its calls (a read waits for every queued write first)."""
        inner = getattr(getattr(getattr(self._server, "_client", None), "_queue", None), "_queue", None)
        left = getattr(inner, "unfinished_tasks", None)
        if left is not None and left != self._client_left:
            if self._client_left is not None:
                self._touch(sent=1)
            self._client_left = left

    def check_stall(self) -> None:
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
        records = [item for item in items if type(item) is not StoredArtifact]
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
            if type(item) is StoredArtifact:
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
