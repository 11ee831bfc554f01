"""Batched scalar ingestion into an AIM run, local or on an ``aim server``.

``aim.Run.track`` pays for every value: a context hash, a ``datetime`` call, and eight separate RocksDB
writes (value, step, epoch, time, plus the ``last`` / ``last_step`` / ``max`` / ``min`` meta keys), each
committed on its own (on a server: each one a request). A writer that holds a batch can do far better:
it groups the batch by series, puts every point of every series into one RocksDB ``WriteBatch`` and
commits it once (on a server: one ``update`` request per array of a series), then updates each
series' meta keys once per batch. The result is the same storage layout ``Run.track`` produces, so
aim's UI, ``query_metrics`` and ``Run.get_metric`` read it unchanged.

RocksDB's ``db.write`` of a batch was about half of the writer's time, and aimrocks releases the GIL
while it runs: the writer process commits a batch on a thread of its own while its main thread reads
and prepares the next (``write(..., wait=False)``); commits stay one at a time and in order. How the run's
series database is opened and flushed for this (a memtable that appends) is :mod:`.rocks`.

aim 3.29 has no public call for this. It relies on (all pinned by ``aim<4`` and by
tests/test_writer.py, which reads every value back through aim's public API):

* ``Run._tracker`` (``aim.sdk.tracker.RunTracker``): ``sequence_infos``, ``_init_sequence_info``,
  ``_update_context_data`` and ``_update_sequence_info``, the same bookkeeping ``Run.track`` does;
* the ``val`` / ``step`` / ``epoch`` / ``time`` array views of each series and their container's
  ``batch`` / ``set(..., store_batch=...)`` / ``commit``;
* the prefix views over each run's RocksDB container (``prefix`` / ``parent``), and
  ``aim.storage.encoding.encode_path`` / ``encode`` for keys and values (a number is a leaf, so its
  tree encoding is its value encoding at the array index);
* on a server, ``update(path, [(key, value), ...])`` of aim's tree proxies, which the server applies
  key by key (pinned by tests/test_remote.py against ``Run.track`` on a live ``aim server``).

If any of that is missing (a different aim), :class:`ScalarBatcher` says so once and the caller falls
back to ``Run.track``.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from ..core import records as rec
from .pipeline import Pipeline, pipeline_for, send
from .rocks import IdleFlush

__all__ = ["ScalarBatcher"]


class ScalarBatcher:
    """Writes many :class:`~tracelet_callbacks.core.records.Scalar` records to one run at once.

    Locally a batch can be committed while the caller prepares the next one: ``write(scalars,
    wait=False)`` hands the batch's RocksDB ``db.write`` (which releases the GIL) to the batcher's own
    committer thread and returns. Batches still commit one at a time, in the order written: every
    ``write`` waits for the commit before it (then writes that batch's meta keys) before its own
    commit starts, and ``settle()`` waits for the last one. A batch with a series or context this run
    has not seen yet waits for the commit before it first, since aim's own bookkeeping for those
    writes meta keys at once. A remote run always writes synchronously.

    Args:
        run: an open, writable ``aim.Run``, local or remote.
        settled: called with each batch's scalars once its commit and meta keys are written, with the
            exception that stopped them (``None`` when all went well). Without it that exception is
            raised by the call that settles the batch.

    For example ``ScalarBatcher(run, settled=report).write(scalars, wait=False)``, then ``settle()``:
    the batch is on disk, or ``report`` has it with its error.
    """

    def __init__(self, run: Any, settled: Settled | None = None) -> None:
        from aim.storage import encoding
        from aim.storage.context import Context

        self._run = run
        self._remote = bool(run.repo.is_remote_repo)
        self._tracker = run._tracker
        self._meta = run.meta_run_tree
        self._encode_path = encoding.encode_path
        self._encode = encoding.encode
        self._context_cls = Context
        # context dicts are hashed by aim on every Run.track; do it once per distinct context
        self._contexts: dict[tuple, Any] = {}
        self._settled = settled
        self._committer: ThreadPoolExecutor | None = None  # started by the first write(wait=False)
        self._pending: _Pending | None = None  # the batch whose commit may still be running
        self._sender: Pipeline | None = None  # a server's pipelined connection, made on first use
        self._no_sender = False  # this aim's client offers none: write through it
        self._owner: Any = None  # the series' RocksDB container, once a local batch was written
        self._idle_flush = IdleFlush()

    @staticmethod
    def available(run: Any) -> bool:
        """Whether this aim's internals look like the ones this class was written against."""
        tracker = getattr(run, "_tracker", None)
        needed = ("sequence_infos", "_init_sequence_info", "_update_context_data", "_update_sequence_info")
        return (
            tracker is not None
            and all(hasattr(tracker, name) for name in needed)
            and hasattr(run.repo, "is_remote_repo")
        )

    def _pipeline(self) -> Pipeline | None:
        if self._sender is not None and self._sender.closed:
            self._sender = None  # it failed (the server went away): a new connection next time
        if self._sender is None and not self._no_sender:
            self._sender = pipeline_for(self._run.repo)
            self._no_sender = self._sender is None
        return self._sender

    @property
    def committing(self) -> bool:
        """Whether a batch was written with ``wait=False`` and not settled since."""
        return self._pending is not None

    def _context(self, context: dict) -> Any:
        key = tuple(sorted(context.items()))
        found = self._contexts.get(key)
        if found is None:
            found = self._contexts[key] = self._context_cls(context)
        return found

    def write(self, scalars: Sequence[rec.Scalar], *, wait: bool = True) -> None:
        """Write ``scalars`` (in order; a later point at the same step wins, as with ``Run.track``).

        With ``wait=False`` a local batch may still be committing on return (see the class). Either
        way the batch written before is settled first, even when this one's commit does not start.
        """
        groups: dict[tuple[str, tuple], list[rec.Scalar]] = {}
        # records of one tag share one context dict (one per batch once unpickled): sort each once
        contexts: dict[int, tuple] = {}
        for record in scalars:
            context = record.context
            found = contexts.get(id(context))
            if found is None:
                found = contexts[id(context)] = tuple(sorted(context.items()))
            key = (record.name, found)
            group = groups.get(key)
            if group is None:
                groups[key] = [record]
            else:
                group.append(record)

        tracker = self._tracker
        if self._pending is not None and not self._known(groups):
            self.settle()  # aim's bookkeeping of a new series writes meta keys now: after the last batch
        batch = owner = None
        meta_updates: list[tuple[tuple, float]] = []
        # a step's key is the same in every series of the batch (8 metrics a step: 1 encoding, not 8)
        step_keys: dict[tuple[Any, int], bytes] = {}
        for (name, _), points in groups.items():
            ctx = self._context(points[0].context)
            info = tracker.sequence_infos[ctx.idx, name]
            if not info.initialized:
                tracker._init_sequence_info(ctx.idx, name, points[0].value)
            tracker._update_context_data(ctx)
            views, steps, columns, updates = self._points(info, ctx.idx, name, points)
            meta_updates += updates
            step_hash = info.step_hash_fn
            if self._remote:
                # a few requests per array of the series (the server writes its keys), not four per
                # value; pipelined where this aim allows it (see sink/pipeline.py)
                hashes = list(map(step_hash, steps))
                pipeline = self._pipeline()
                for view, column in zip(views, columns, strict=True):
                    send(view.tree, list(zip(hashes, column, strict=True)), pipeline)
                continue
            if owner is None:
                owner = self._owner = _flatten(info.val_view.tree.container)[0]
                batch = owner.batch()
            keys = []
            for step in steps:
                key = step_keys.get((step_hash, step))
                if key is None:
                    key = step_keys[step_hash, step] = self._encode_path((step_hash(step),))
                keys.append(key)
            # each array's puts run in C (map over prefix + key and the encoded column), not in a
            # Python loop: four puts per value are most of the writer's work
            encode, put = self._encode, batch.put
            for view, column in zip(views, columns, strict=True):
                prefix = _flatten(view.tree.container)[1]
                collections.deque(map(put, map(prefix.__add__, keys), map(encode, column)), maxlen=0)
        if self._remote and self._sender is not None:
            self._sender.drain()  # the points are on the server before their meta keys are queued
        try:
            self.settle()  # the batch before: its commit, then its meta keys, before this one's
        finally:
            if batch is not None and not wait:
                if self._committer is None:
                    self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracelet-commit")
                future = self._committer.submit(owner.commit, batch)
                self._pending = _Pending(future.result, meta_updates, scalars)
            else:
                commit = functools.partial(owner.commit, batch) if batch is not None else _nothing
                self._pending = _Pending(commit, meta_updates, scalars)
                self.settle()

    def settle(self) -> None:
        """Wait until the last batch written is committed, then write its meta keys (the points
        first, then the meta keys that point at them). A failure goes to ``settled``."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.commit()
            for key, value in pending.meta_updates:
                self._meta[key] = value
        except Exception as exc:
            if self._settled is None:
                raise
            self._settled(pending.scalars, exc)
            return
        if self._settled is not None:
            self._settled(pending.scalars, None)

    def idle(self) -> None:
        """Nothing waits to be written: a large series memtable goes to disk now, on a thread of its
        own, rather than at the run's close (see :class:`~.rocks.IdleFlush`)."""
        self._idle_flush.start(self._owner)

    def close(self) -> None:
        """Settle the last batch and end the committer thread. The batcher can write again later."""
        try:
            self.settle()
        finally:
            self._idle_flush.wait()  # the database must not close under it
            committer, self._committer = self._committer, None
            if committer is not None:
                committer.shutdown(wait=True)
            sender, self._sender = self._sender, None
            if sender is not None:
                sender.close()

    def _known(self, groups: dict[tuple[str, tuple], list[rec.Scalar]]) -> bool:
        """Whether every series of a batch (and its context) was written before, as floats, so that
        writing it touches no storage until its commit (aim's own bookkeeping does otherwise)."""
        tracker = self._tracker
        for (name, _), points in groups.items():
            ctx = self._context(points[0].context)
            info = tracker.sequence_infos.get((ctx.idx, name))
            if ctx not in tracker.contexts or info is None or not _plain_series(info):
                return False
        return True

    def _points(
        self, info: Any, ctx_idx: int, name: str, points: list[rec.Scalar]
    ) -> tuple[list[Any], list[int], list[list], list[tuple[tuple, float]]]:
        """The series' array views, its steps, one column of values per view (in view order) and
        the meta keys to write once the points are committed."""
        views = (info.val_view, info.step_view, info.epoch_view, info.time_view)
        views = [view for view in views if view is not None]  # (an array view with no items is falsy)
        has_step = info.step_view is not None
        steps: list[int] = []
        rest = points
        if not _plain_series(info):
            # a new series (or another dtype) goes through aim's own bookkeeping: dtype, first value,
            # the meta keys, written now
            step = points[0].step if points[0].step is not None else info.count
            self._tracker._update_sequence_info(ctx_idx, name, points[0].value, step)
            steps.append(step)
            rest = points[1:]
        # the rest as Run.track would, in memory: its meta keys are written once, after the commit
        last_value = None
        moved = False  # whether max / min changed (NaN never moves them)
        for point in rest:
            value = point.value
            step = point.step if point.step is not None else info.count
            if step >= info.count:  # the same rule Run.track uses for "last"
                info.count = step + 1
                last_value = value
            if value > info.max:
                info.max = value
                moved = True
            if value < info.min:
                info.min = value
                moved = True
            steps.append(step)
        now = time.time()
        values = [point.value for point in points]
        epochs = [point.epoch for point in points]
        stamps = [point.timestamp if point.timestamp is not None else now for point in points]
        columns = [values, steps, epochs, stamps] if has_step else [values, epochs, stamps]
        trace = ("traces", ctx_idx, name)
        updates: list[tuple[tuple, float]] = []
        if last_value is not None:
            updates += [((*trace, "last_step"), info.count - 1), ((*trace, "last"), last_value)]
        if moved:
            updates += [((*trace, "max"), info.max), ((*trace, "min"), info.min)]
        return views, steps, columns, updates


class _Pending(NamedTuple):
    """A written batch not settled yet: what waits for its commit, its meta keys, its scalars."""

    commit: Callable[[], Any]
    meta_updates: list[tuple[tuple, float]]
    scalars: Sequence[rec.Scalar]


#: ``settled(scalars, error)``: a batch is committed (``error`` is ``None``) or failed.
Settled = Callable[[Sequence[rec.Scalar], "BaseException | None"], None]


def _nothing() -> None:
    return None


def _plain_series(info: Any) -> bool:
    """Whether a series has points and holds floats: aim's ``_update_sequence_info`` then only moves
    ``last`` / ``last_step`` / ``max`` / ``min``, which ``_points`` does in memory."""
    return info.initialized and info.count and info.dtype == "float"


def _flatten(container: Any) -> tuple[Any, bytes]:
    """The RocksDB container under a chain of prefix views, and the whole prefix."""
    prefix = b""
    while getattr(container, "parent", None) is not None:
        prefix = container.prefix + prefix
        container = container.parent
    return container, prefix
