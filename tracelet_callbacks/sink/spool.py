"""The spool: a local AIM repo that holds a server's runs while the server cannot take them.

A run logged with ``remote_uri`` is written here first and forwarded to the server from there (see
:mod:`~tracelet_callbacks.sink.forward`); with ``offline=True`` it is only written here. Either way the
spool run has the hash the server's run has (or will have), so :func:`copy_run` can bring the server
up to date at any time: after an outage, from ``python -m tracelet_callbacks sync``
(:mod:`~tracelet_callbacks.sink.sync`), or twice.

Copying is by storage key, not by replaying values: every point of a series sits at a key made from
its step, so a copy made twice, or after an interrupted one, leaves each point once.

**What the spool's copy is** decides how a copy treats the server (:func:`read_mark`, one small file
per run under ``tracelet-runs/``):

* *whole*: the run was made here, so the spool holds all of it. The server's series and meta data are
  replaced by the spool's, so the points a resumed run rewound go from the server too.
* anything else (a run resumed from the server, which may hold more than this spool; a run spooled by
  an earlier release; a mark never written because the writer died first): a copy only adds and
  overwrites points, never deletes one, and merges the meta data. A rewind the server has not seen yet
  is kept in the mark and applied to the server's run before the points are sent.

While a copy runs, the server's run is active with a heartbeat and status ``copying``: a copy cut short
never looks finished, and ``runs close-stale`` can close it.

aim 3.29 has no public call for either (``Run.track`` can only append), so this uses its tree views
(``request_tree``, ``items``, ``update``, ``make_array``, ``del``; pinned by ``aim<4`` and by
tests/test_team.py and tests/test_team_server.py against a live ``aim server``); a server gets the
points through a :class:`~tracelet_callbacks.sink.pipeline.Pipeline`, several requests at a time.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .heartbeat import HEARTBEAT_KEY, HEARTBEAT_SECS
from .pipeline import pipeline_for, send
from .rocks import new_run_with_hash

__all__ = ["copy_run", "open_run", "read_mark", "seed_from", "series_paths", "write_mark"]

#: The folder, inside the spool folder, with one file per run saying what the spool's copy is.
MARKS = "tracelet-runs"
#: Points read from the spool at a time (a server takes them in requests of ``pipeline.PAIRS``).
_CHUNK = 2000
#: The arrays a series is made of, in aim's layout.
_ARRAYS = ("val", "step", "epoch", "time")


def read_mark(spool: str, run_hash: str) -> dict[str, Any]:
    """What the spool's copy of ``run_hash`` is: ``{"server", "whole", "rewind", "seeded"}`` (``seeded``:
    ``False`` while its meta data is being fetched from the server). Without a mark (see the module
    docstring) it is not whole, and was spooled for no server in particular."""
    mark: dict[str, Any] = {"server": None, "whole": False, "rewind": None, "seeded": None}
    try:
        with open(os.path.join(spool, MARKS, f"{run_hash}.json"), encoding="utf-8") as handle:
            found = json.load(handle)
        if isinstance(found, dict):
            mark.update({key: found[key] for key in mark if key in found})
    except (OSError, ValueError):
        pass
    return mark


def write_mark(spool: str, run_hash: str, **changes: Any) -> dict[str, Any]:
    """Update the mark of ``run_hash`` (written whole, then renamed into place); returns it."""
    mark = {**read_mark(spool, run_hash), **changes}
    folder = os.path.join(spool, MARKS)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{run_hash}.json")
    scratch = f"{path}.{os.getpid()}.tmp"
    with open(scratch, "w", encoding="utf-8") as handle:
        json.dump(mark, handle)
    os.replace(scratch, path)
    return mark


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
    whole: bool = True,
    rewind_to: int | None = None,
) -> int:
    """Bring ``run_hash`` in ``target`` up to date from the same run in ``source`` (both ``aim.Repo``).

    Structured fields (name, experiment, description, tags) through ``aim.Run``; every series point
    by its key; then the run's meta data; then the run is indexed. With ``whole`` the target's series
    and meta data are replaced by the source's; without, the target's points after ``rewind_to`` go
    first (a resume's checkpoint), then points are added and meta data merged, nothing else deleted
    (see the module docstring). Returns the number of points sent. ``progress`` is called with each
    chunk's count; ``drain(target)`` waits until a server has taken what aim's client queued.
    """
    import aim

    from .rewind import rewind
    from .storage import close_and_index

    spooled = aim.Run(run_hash, repo=source, read_only=True)
    run = open_run(target, run_hash, spooled.experiment)
    try:
        run.props  # noqa: B018 - a server killed as the run began may lack its props: made here
        if spooled.name and (whole or spooled.name != f"Run: {run_hash}"):  # not over a name with aim's
            run.name = spooled.name
        if spooled.experiment and (whole or not run.experiment):  # a continued run keeps its own
            run.experiment = spooled.experiment
        if spooled.description:
            run.description = spooled.description
        for tag in spooled.tags:
            if tag not in run.tags:
                run.add_tag(tag)
        if rewind_to is not None and not whole:
            rewind(run, rewind_to)
    finally:
        run.close()  # releases the run's lock; the end time it writes goes at once
    target_meta = target.request_tree("meta", run_hash, read_only=False)
    beat = _copying(target_meta, run_hash)
    if target.is_remote_repo:  # the mark is on the server before any point: a copy cut short shows
        (drain or (lambda repo: repo._client.get_queue().wait_for_finish()))(target)
    sent = 0
    seqs = source.request_tree("seqs", run_hash, read_only=True)
    remote_seqs = target.request_tree("seqs", run_hash, read_only=False)
    if whole:  # the target's points go first: what the source no longer has must go there too
        for layout in (("seqs", "v2", "chunks", run_hash), ("seqs", "chunks", run_hash)):
            del remote_seqs[layout]
    held: set[tuple] = set()  # the series the source holds points of
    pipeline = pipeline_for(target) if target.is_remote_repo else None
    try:
        for path in series_paths(source, run_hash):
            for array in _ARRAYS:
                items = seqs.subtree((*path, array))
                keys = iter(items.items())  # a server's tree answers with a list
                first = next(keys, None)
                if first is None:
                    continue
                held.add(path[-2:])
                remote_seqs.make_array((*path, array))
                into = remote_seqs.subtree((*path, array))
                chunk = [first]
                for item in keys:
                    chunk.append(item)
                    if len(chunk) == _CHUNK:
                        send(into, chunk, pipeline)
                        sent += _count(array, chunk, progress)
                        chunk = []
                        beat = _copying(target_meta, run_hash, beat)
                send(into, chunk, pipeline)
                sent += _count(array, chunk, progress)
        if pipeline is not None:
            pipeline.drain()  # the points, then the meta data that points at them
    finally:
        if pipeline is not None:
            pipeline.close()
    meta = source.request_tree("meta", run_hash, read_only=True).collect()
    if not whole:
        meta = _merged(target_meta.collect(), meta, run_hash, held)
    target_meta.set((), meta, strict=False)
    if target.is_remote_repo:  # aim's client sends from a queue: the copy is done once it is empty
        (drain or (lambda repo: repo._client.get_queue().wait_for_finish()))(target)
    error = close_and_index(target, run_hash)
    if error:
        raise RuntimeError(error)
    return sent


def seed_from(server: Any, run_hash: str, spool: Any) -> None:
    """Make ``run_hash`` in the spool from the server's run: its name, experiment, tags and meta data
    (params, each series' bookkeeping), not its points. Resuming then costs two requests, whatever
    the run's length, and automatic steps go on from the server's last step."""
    import aim

    remote = aim.Run(run_hash, repo=server, read_only=True)
    run = open_run(spool, run_hash, remote.experiment)
    try:
        if remote.experiment:  # (a start killed after making the run may have left aim's default)
            run.experiment = remote.experiment
        if remote.name:
            run.name = remote.name
        if remote.description:
            run.description = remote.description
        for tag in remote.tags:
            run.add_tag(tag)
    finally:
        run.close()
    meta = server.request_tree("meta", run_hash, read_only=True).collect()
    spool.request_tree("meta", run_hash, read_only=False).set((), meta, strict=False)


def _copying(meta: Any, run_hash: str, last: float = 0.0) -> float:
    """Mark the target's run as being copied: active, status ``copying``, a heartbeat from this
    process (renewed every :data:`HEARTBEAT_SECS`). The copy's last step replaces it all."""
    now = time.time()
    if now - last < HEARTBEAT_SECS:
        return last
    chunk = ("meta", "chunks", run_hash)
    if not last:
        meta[(*chunk, "end_time")] = None  # aim's own mark of a run still being written
        meta[(*chunk, "attrs", "status")] = "copying"
    meta[(*chunk, "attrs", *HEARTBEAT_KEY)] = {"time": now, "pid": os.getpid(), "host": socket.gethostname()}
    return now


def _merged(target: dict, source: dict, run_hash: str, held: set[tuple]) -> dict:
    """The target's meta data with the source's laid over it. A series' bookkeeping comes from the
    source only if the source holds points of it; otherwise it stays the target's (or absent: a
    rewind on the target removed the series)."""
    merged = _overlay(target, source)
    chunk = merged.get("meta", {}).get("chunks", {}).get(run_hash, {})
    theirs = target.get("meta", {}).get("chunks", {}).get(run_hash, {})
    for ctx, series in (chunk.get("traces") or {}).items():
        for name in list(series):
            if (ctx, name) in held:
                continue
            kept = (theirs.get("traces") or {}).get(ctx, {}).get(name)
            if kept is None:
                del series[name]
            else:
                series[name] = kept
    for by_context in (chunk.get("typed_traces") or {}).values():
        for ctx, names in by_context.items():
            known = (chunk.get("traces") or {}).get(ctx, {})
            for name in [name for name in names if name not in known]:
                del names[name]
    # our bookkeeping of the copy itself is the source's (or none): not a stale "copying"
    if chunk.get("attrs", {}).get("status") == "copying":
        del chunk["attrs"]["status"]
    return merged


def _overlay(under: Any, over: Any) -> Any:
    if isinstance(under, dict) and isinstance(over, dict):
        result = dict(under)
        for key, value in over.items():
            result[key] = _overlay(under.get(key), value) if key in under else value
        return result
    return over


def _count(array: str, chunk: list, progress: Callable[[int], None] | None) -> int:
    """Points are counted once, by their values."""
    if array != "val":
        return 0
    if progress is not None:
        progress(len(chunk))
    return len(chunk)


def series_paths(repo: Any, run_hash: str) -> list[tuple]:
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
