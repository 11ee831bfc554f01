"""``python -m tracelet_callbacks sync``: every spooled run a server lacks, copied there.

Which runs a server already has whole is recorded in ``tracelet-sync.json`` inside the spool
(:class:`Journal`), so sending twice sends nothing twice. Each run is copied by
:func:`~tracelet_callbacks.sink.spool.copy_run`, as its mark in the spool says (whole, or only adding
to the server's); a run that cannot be sent is named and the others still go.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .spool import copy_run, read_mark, series_paths

__all__ = ["SYNC_JOURNAL", "Journal", "finished_mark", "series_points", "spooled_runs", "sync_spool"]

#: The file, inside the spool folder, that records which finished runs a server has whole.
SYNC_JOURNAL = "tracelet-sync.json"


def series_points(repo: Any, run_hash: str) -> int:
    """How many points the run's series hold (what a copy sends)."""
    seqs = repo.request_tree("seqs", run_hash, read_only=True)
    # counted through items(): keys() of a series' array view fails in aim 3.29
    return sum(sum(1 for _ in seqs.subtree((*path, "val")).items()) for path in series_paths(repo, run_hash))


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
    ``"up to date"``, ``"skipped: ..."`` (spooled for another server) or ``"failed: ..."``. Every run
    is tried, whatever happened to the ones before it; a run copied is recorded, so running it again
    goes on with the rest.
    """
    import aim

    source = aim.Repo.from_path(spool)
    target = aim.Repo.from_path(target_uri)
    journal = Journal(spool)
    outcomes: list[tuple[str, str]] = []
    plan = []
    known = set(spooled_runs(spool))
    for run_hash in runs if runs is not None else sorted(known):
        if run_hash not in known:
            outcomes.append((run_hash, "failed: no such run in the spool"))
            continue
        mark = read_mark(spool, run_hash)
        elsewhere = mark["server"] and mark["server"].rstrip("/") != target_uri.rstrip("/")
        if elsewhere and runs is None:  # a run named on purpose goes where it is told
            outcomes.append(
                (run_hash, f"skipped: spooled for {mark['server']} (--run {run_hash} sends it here)")
            )
            continue
        try:
            end = finished_mark(source, run_hash)
        except Exception as exc:
            outcomes.append((run_hash, f"failed: its spooled copy cannot be read ({_reason(exc)})"))
            continue
        plan.append((run_hash, end, journal.done(target_uri, run_hash, end), mark))
    if on_total is not None:
        total = 0
        for run_hash, _, done, _ in plan:
            try:
                total += 0 if done else series_points(source, run_hash)
            except Exception:  # unreadable: it fails, named, when its turn comes
                pass
        on_total(total)
    for run_hash, end, done, mark in plan:
        if done:
            outcomes.append((run_hash, "up to date"))
            continue
        try:
            copy_run(source, run_hash, target, progress, whole=mark["whole"], rewind_to=mark["rewind"])
        except Exception as exc:
            outcomes.append((run_hash, f"failed: {_reason(exc)}"))
            continue
        journal.record(target_uri, run_hash, end)
        outcomes.append((run_hash, "copied" if end is not None else "copied (still running)"))
    return outcomes


def _reason(exc: BaseException) -> str:
    text = str(exc).removeprefix("tracelet: ").strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."
