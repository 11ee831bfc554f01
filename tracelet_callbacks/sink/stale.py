"""Runs that will never close themselves, found by their heartbeat.

A run that is still active (no end time) and whose heartbeat (:mod:`~tracelet_callbacks.sink.heartbeat`)
is old was left by a writer that died with its trainer (both SIGKILLed, a node lost): nothing will
close it. :func:`close_stale` marks such runs ``killed``, closes and indexes them, so they stop
showing as running; ``python -m tracelet_callbacks runs close-stale`` is its command line and
``runs ls`` shows :func:`list_runs`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from .heartbeat import BOOKKEEPING, HEARTBEAT_KEY, LEGACY_HEARTBEAT_KEY
from .spool import open_run
from .storage import close_and_index

__all__ = ["RunRow", "close_stale", "list_runs", "open_repo", "stale_runs"]

log = logging.getLogger("tracelet_callbacks")


@dataclass
class RunRow:
    """One line of ``runs ls``."""

    hash: str
    name: str
    experiment: str
    status: str
    heartbeat: float | None  # time of the last heartbeat, if the run has one
    pid: int | None
    host: str | None
    active: bool


def open_repo(where: str) -> Any:
    """The ``aim.Repo`` at a folder or an ``aim://`` address."""
    import aim

    return aim.Repo.from_path(where)


def list_runs(repo: Any) -> list[RunRow]:
    """Every run in ``repo`` (an ``aim.Repo``), indexed or not, oldest heartbeat first.

    A run nothing closed is not in aim's index, whose view ``aim.Run(..., read_only=True)`` reads:
    its own meta chunk is read instead.
    """
    import aim

    rows = []
    for run_hash in repo.list_all_runs():
        try:
            meta = repo.request_tree("meta", run_hash, read_only=True).subtree(("meta", "chunks", run_hash))
            active = meta.get("end_time") is None
            beat = meta.get(("attrs", *HEARTBEAT_KEY)) or meta.get(("attrs", *LEGACY_HEARTBEAT_KEY)) or {}
            status = meta.get(("attrs", "status")) or ("running" if active else "finished")
            run = aim.Run(run_hash, repo=repo, read_only=True)
            name, experiment = run.name or "", run.experiment or ""
        except Exception as exc:  # a damaged run is listed, not fatal
            unreadable = f"unreadable ({type(exc).__name__})"
            rows.append(RunRow(run_hash, "", "", unreadable, None, None, None, False))
            continue
        beat = beat if isinstance(beat, dict) else {}
        row = RunRow(
            run_hash, name, experiment, status, beat.get("time"), beat.get("pid"), beat.get("host"), active
        )
        rows.append(row)
    return sorted(rows, key=lambda row: (row.heartbeat or 0.0, row.hash))


def _alive_here(row: RunRow) -> bool:
    """Whether the run's writer is a live process on this machine (never closed under it)."""
    if row.host != socket.gethostname() or not row.pid:
        return False
    try:
        os.kill(row.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody has reaped yet (a zombie) is dead too
        with open(f"/proc/{row.pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stale_runs(repo: Any, older_than: float, now: float | None = None) -> list[RunRow]:
    """Active runs whose heartbeat is older than ``older_than`` seconds and whose writer is not a live
    process here. Runs without a heartbeat (not written by us) are left alone."""
    now = time.time() if now is None else now
    return [
        row
        for row in list_runs(repo)
        if row.active
        and row.heartbeat is not None
        and now - row.heartbeat > older_than
        and not _alive_here(row)
    ]


def close_stale(repo: Any, older_than: float) -> list[RunRow]:
    """Mark each of :func:`stale_runs` ``killed``, close and index it; returns the runs closed."""
    closed = []
    for row in stale_runs(repo, older_than):
        run = open_run(repo, row.hash)  # the dead writer's lock is taken over
        run["status"] = "killed"
        run[(*BOOKKEEPING, "closed_stale")] = {"time": time.time(), "heartbeat": row.heartbeat}
        run.close()
        error = close_and_index(repo, row.hash)
        if error:
            log.warning("tracelet: %s", error)
        row.status, row.active = "killed", False
        closed.append(row)
    return closed
