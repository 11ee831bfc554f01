"""The spool: a local AIM repo that holds a server's runs while the server cannot take them.

A run logged with ``remote_uri`` is written here first and forwarded to the server from there (see
:mod:`~tracelet_callbacks.sink.forward`); with ``offline=True`` it is only written here. Either way the
spool run has the hash the server's run has (or will have), so :func:`copy_run` can bring the server
up to date at any time: after an outage, from ``python -m tracelet_callbacks sync``, or twice.

Copying is by storage key, not by replaying values: every point of a series sits at a key made from
its step, so a copy made twice, or after an interrupted one, leaves each point once. The target's
series and its meta data (params, series bookkeeping, end time) are replaced as a whole by the
spool's, which always holds everything (points a resumed run rewound are gone from both). aim 3.29
has no public call for either (``Run.track`` can only append), so this uses its tree views
(``request_tree``, ``items``, ``update``, ``make_array``, ``del``; pinned by ``aim<4`` and by
tests/test_team.py against a live ``aim server``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from .series import new_run_with_hash

__all__ = ["SYNC_JOURNAL", "copy_run", "open_run", "spooled_runs", "sync_spool"]

#: The file, inside the spool folder, that records which finished runs a server has whole.
SYNC_JOURNAL = "tracelet-sync.json"
#: Points sent to a server per request.
_CHUNK = 2000
#: The arrays a series is made of, in aim's layout.
_ARRAYS = ("val", "step", "epoch", "time")


def open_run(repo: Any, run_hash: str, experiment: str | None = None) -> Any:
    """``aim.Run`` ``run_hash`` in ``repo`` (a path, an ``aim://`` address or an ``aim.Repo``), created
    with that hash when it is not there yet. A lock left by a writer that is gone is taken over."""
    import aim

    settings = {
        "repo": repo,
        "system_tracking_interval": None,
        "log_system_params": False,
        "capture_terminal_logs": False,
    }
    target = aim.Repo.from_path(repo) if isinstance(repo, str) else repo
    if target.run_exists(run_hash):
        return aim.Run(run_hash=run_hash, force_resume=True, **settings)
    with new_run_with_hash(run_hash):
        run = aim.Run(experiment=experiment, **settings)
    # aim (a server's, too) caches the list of runs for 0.5 s: the next aim.Run(run_hash) must find it
    deadline = time.monotonic() + 5.0
    while not target.run_exists(run_hash) and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


def copy_run(
    source: Any,
    run_hash: str,
    target: Any,
    progress: Callable[[int], None] | None = None,
    drain: Callable[[Any], None] | None = None,
) -> int:
    """Make ``run_hash`` in ``target`` equal to the same run in ``source`` (both ``aim.Repo``).

    Structured fields (name, experiment, description, tags) through ``aim.Run``; every series point
    by its key; then the run's meta data as a whole; then the run is indexed. Returns the number of
    points sent. ``progress`` is called with each chunk's count; ``drain(target)`` waits until a
    server has taken what aim's client queued (default: aim's own wait).
    """
    import aim

    from .run import index_run, release_storage

    spooled = aim.Run(run_hash, repo=source, read_only=True)
    run = open_run(target, run_hash, spooled.experiment)
    try:
        run.props  # noqa: B018 - a server killed as the run began may lack its props: made here
        if spooled.name:
            run.name = spooled.name
        if spooled.experiment:
            run.experiment = spooled.experiment
        if spooled.description:
            run.description = spooled.description
        for tag in spooled.tags:
            if tag not in run.tags:
                run.add_tag(tag)
    finally:
        run.close()  # releases the run's lock; the end time it writes is replaced below
    sent = 0
    seqs = source.request_tree("seqs", run_hash, read_only=True)
    remote_seqs = target.request_tree("seqs", run_hash, read_only=False)
    # the target's points go first: what the source no longer has (a rewound resume) must go there too
    for layout in (("seqs", "v2", "chunks", run_hash), ("seqs", "chunks", run_hash)):
        del remote_seqs[layout]
    for path in _series_paths(source, run_hash):
        for array in _ARRAYS:
            items = seqs.subtree((*path, array))
            keys = iter(items.items())  # a server's tree answers with a list
            first = next(keys, None)
            if first is None:
                continue
            remote_seqs.make_array((*path, array))
            chunk = [first]
            for item in keys:
                chunk.append(item)
                if len(chunk) == _CHUNK:
                    remote_seqs.subtree((*path, array)).update((), chunk)
                    sent += _count(array, chunk, progress)
                    chunk = []
            remote_seqs.subtree((*path, array)).update((), chunk)
            sent += _count(array, chunk, progress)
    meta = source.request_tree("meta", run_hash, read_only=True).collect()
    target.request_tree("meta", run_hash, read_only=False).set((), meta, strict=False)
    if target.is_remote_repo:  # aim's client sends from a queue: the copy is done once it is empty
        (drain or (lambda repo: repo._client.get_queue().wait_for_finish()))(target)
    release_storage(target, run_hash)
    error = index_run(target, run_hash)
    if error:
        raise RuntimeError(error)
    return sent


def _count(array: str, chunk: list, progress: Callable[[int], None] | None) -> int:
    """Points are counted once, by their values."""
    if array != "val":
        return 0
    if progress is not None:
        progress(len(chunk))
    return len(chunk)


def _series_paths(repo: Any, run_hash: str) -> list[tuple]:
    """Where each series of the run keeps its arrays (aim writes metrics in its "v2" layout)."""
    traces = repo.request_tree("meta", run_hash, read_only=True).subtree(("meta", "chunks", run_hash))
    try:
        found = traces.collect("traces")
    except KeyError:
        return []
    paths = []
    for ctx, series in found.items():
        for name, info in series.items():
            version = info.get("version", 1) if isinstance(info, dict) else 1
            base = ("seqs", "v2", "chunks") if version == 2 else ("seqs", "chunks")
            paths.append((*base, run_hash, ctx, name))
    return paths


def series_points(repo: Any, run_hash: str) -> int:
    """How many points the run's series hold (what a copy sends)."""
    seqs = repo.request_tree("seqs", run_hash, read_only=True)
    # counted through items(): keys() of a series' array view fails in aim 3.29
    return sum(sum(1 for _ in seqs.subtree((*path, "val")).items()) for path in _series_paths(repo, run_hash))


def spooled_runs(spool: str) -> list[str]:
    """The hashes of the runs in the spool folder (none when it holds no AIM repo)."""
    import aim

    if not aim.Repo.exists(spool):
        return []
    return sorted(aim.Repo.from_path(spool).list_all_runs())


def finished_mark(repo: Any, run_hash: str) -> float | None:
    """The spooled run's end time, or ``None`` while it is still being written."""
    tree = repo.request_tree("meta", run_hash, read_only=True).subtree(("meta", "chunks", run_hash))
    try:
        return tree["end_time"]
    except KeyError:
        return None


class Journal:
    """Which finished spooled runs each server already has whole (``tracelet-sync.json``)."""

    def __init__(self, spool: str) -> None:
        self.path = os.path.join(spool, SYNC_JOURNAL)
        try:
            with open(self.path, encoding="utf-8") as handle:
                self._data: dict[str, dict[str, float]] = json.load(handle)
        except (OSError, ValueError):
            self._data = {}

    def done(self, target: str, run_hash: str, mark: float | None) -> bool:
        return mark is not None and self._data.get(target, {}).get(run_hash) == mark

    def record(self, target: str, run_hash: str, mark: float | None) -> None:
        if mark is None:
            return
        self._data.setdefault(target, {})[run_hash] = mark
        scratch = self.path + ".tmp"
        with open(scratch, "w", encoding="utf-8") as handle:
            json.dump(self._data, handle, indent=1, sort_keys=True)
        os.replace(scratch, self.path)


def sync_spool(
    spool: str,
    target_uri: str,
    runs: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> list[tuple[str, str]]:
    """Copy every spooled run (or ``runs``) the server at ``target_uri`` does not have whole yet.

    Returns ``(hash, outcome)`` pairs, outcome one of ``"copied"``, ``"copied (still running)"``,
    ``"up to date"``. Raises on the first run that cannot be copied; the runs before it are recorded,
    so running it again goes on from there.
    """
    import aim

    source = aim.Repo.from_path(spool)
    target = aim.Repo.from_path(target_uri)
    journal = Journal(spool)
    plan = []
    for run_hash in runs if runs is not None else spooled_runs(spool):
        mark = finished_mark(source, run_hash)
        plan.append((run_hash, mark, journal.done(target_uri, run_hash, mark)))
    if on_total is not None:
        on_total(sum(series_points(source, run_hash) for run_hash, _, done in plan if not done))
    outcomes = []
    for run_hash, mark, done in plan:
        if done:
            outcomes.append((run_hash, "up to date"))
            continue
        copy_run(source, run_hash, target, progress)
        journal.record(target_uri, run_hash, mark)
        outcomes.append((run_hash, "copied" if mark is not None else "copied (still running)"))
    return outcomes
