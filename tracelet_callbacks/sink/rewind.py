"""Rewinding a resumed run: the points an interrupted attempt logged after its checkpoint go.

A job killed at step 30 whose last checkpoint was taken at step 20 logs steps 21..30 again when it
resumes. Points at the same step are simply overwritten (a series point's key is made from its step),
but whatever only the first attempt logged after step 20 (an evaluation at step 25, a series the
second attempt logs less often) would stay and mislead. :func:`rewind` removes every point after the
checkpoint's step from every series of the run, fixes each series' bookkeeping (last step, last value,
min, max) and lets the open ``aim.Run`` reload it, so automatic steps go on from the checkpoint.

aim 3.29 has no call for this; it uses the run's tree views (``request_tree``, ``items``, ``del``) and
``RunTracker.sequence_infos`` / ``_preload_sequence_infos`` (pinned by ``aim<4`` and by
tests/test_resume.py, which reads every series back through aim's public API).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["hold_steps", "rewind"]

_ARRAYS = ("val", "step", "epoch", "time")


def rewind(run: Any, step: int) -> int:
    """Remove the points after ``step`` from every series of the open, writable ``run``; their count."""
    repo, run_hash = run.repo, run.hash
    seqs = repo.request_tree("seqs", run_hash, read_only=False)
    traces = run.meta_run_tree.get("traces", {}) or {}
    removed = 0
    for ctx, series in traces.items():
        for name, info in series.items():
            version = info.get("version", 1) if isinstance(info, dict) else 1
            base = ("seqs", "v2", "chunks") if version == 2 else ("seqs", "chunks")
            path = (*base, run_hash, ctx, name)
            if version == 2:
                found = dict(seqs.subtree((*path, "step")).items())
            else:  # the first layout keys each point by its step
                found = {key: key for key, _ in seqs.subtree((*path, "val")).items()}
            doomed = [key for key, at in found.items() if at > step]
            for key in doomed:
                for array in _ARRAYS:
                    try:
                        del seqs[(*path, array, key)]
                    except KeyError:
                        pass
            removed += len(doomed)
            if doomed:
                kept = {key: at for key, at in found.items() if at <= step}
                _fix_bookkeeping(run, seqs, path, ctx, name, kept, version)
    tracker = run._tracker
    tracker.sequence_infos.clear()  # what is loaded next reads the fixed bookkeeping
    tracker._preload_sequence_infos()
    return removed


def hold_steps(run: Any, step: int) -> None:
    """Make every series of ``run`` go on after ``step``: its last step is ``step`` at most.

    For a run whose points after ``step`` are not here to remove (a spool that holds a server run's
    meta data but not its points, see :mod:`~tracelet_callbacks.sink.spool`): the server's run is
    rewound on the server, and the next automatic step here must be the one after the checkpoint.
    """
    meta = run.meta_run_tree
    for ctx, series in (meta.get("traces", {}) or {}).items():
        for name, info in series.items():
            last = info.get("last_step") if isinstance(info, dict) else None
            if isinstance(last, int) and last > step:
                meta[("traces", ctx, name, "last_step")] = step
    tracker = run._tracker
    tracker.sequence_infos.clear()
    tracker._preload_sequence_infos()


def _fix_bookkeeping(run: Any, seqs: Any, path: tuple, ctx: int, name: str, kept: dict, version: int) -> None:
    meta = run.meta_run_tree
    if not kept:  # a series that began after the checkpoint: it goes as a whole
        del meta[("traces", ctx, name)]
        for kind, by_context in (meta.get("typed_traces", {}) or {}).items():
            if name in (by_context.get(ctx) or {}):
                del meta[("typed_traces", kind, ctx, name)]
        return
    last_key = max(kept, key=kept.get)
    trace = ("traces", ctx, name)
    meta[(*trace, "last_step")] = kept[last_key]
    meta[(*trace, "last")] = seqs[(*path, "val", last_key)]
    if version == 2:
        values = [value for key, value in seqs.subtree((*path, "val")).items() if key in kept]
        numbers = [value for value in values if isinstance(value, (int, float)) and not math.isnan(value)]
        if numbers:
            meta[(*trace, "max")] = max(numbers)
            meta[(*trace, "min")] = min(numbers)
