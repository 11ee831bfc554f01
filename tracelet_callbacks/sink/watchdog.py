"""A thread that watches a writer's calls into storage, for the faults that block instead of failing.

A full disk usually makes aim's RocksDB writes fail at once (the sink reports that); sometimes RocksDB
waits instead, for room that never comes, and closing its databases can wait forever. The writer wraps
each storage call in :meth:`Watchdog.busy`; the watchdog's own thread then

* reports a call that has made no progress for ``SLOW_SECS`` (the calling thread has neither read,
  written, used the CPU nor woken up: Linux counts that per thread) through ``on_stall(reason)``, and
  its end through ``on_stall(None)``, so the trainer stops waiting for it. A loop that sleeps between
  retries (waiting for another process's lock) wakes up, so it is not stuck. Where the counts cannot
  be read, a call that lasts ``SLOW_SECS`` on a nearly full disk counts as stalled;
* ends the writer process ``ORPHAN_SECS`` after the trainer is gone if its last call is still stuck
  (``orphaned`` tells), whatever state the storage is in: a writer that outlives its trainer holds
  the run's locks and the trainer's terminal.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["Watchdog", "disk_note", "is_disk_full"]

SLOW_SECS = 5.0
ORPHAN_SECS = 7.0
_TICK = 0.5
_NEARLY_FULL = 1 << 20  # bytes


def disk_note(path: str) -> str:
    """How much room the disk holding ``path`` has, as words ("its disk is full", "12 MiB free")."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "its disk cannot be read"
    if free < _NEARLY_FULL:
        return "its disk is full"
    return f"{free / 2**20:,.0f} MiB free on its disk"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``OSError`` or RocksDB's error, which carries only text) says the disk is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


class Watchdog:
    """Watches the storage calls of one writer (see the module docstring).

    Args:
        path: the repo (or spool) folder the writer stores into; its disk is what is looked at.
        on_stall: called from the watchdog's thread with a reason when a call stalls, and with
            ``None`` when that call has ended.
        orphaned: tells whether the trainer is gone (the writer process only).
    """

    def __init__(
        self,
        path: str,
        on_stall: Callable[[str | None], None],
        orphaned: Callable[[], bool] | None = None,
    ) -> None:
        self.path = path
        self._on_stall = on_stall
        self._orphaned = orphaned
        self._call: tuple[str, float, int] | None = None
        self._stalled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tracelet-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Around one storage call; ``what`` completes "... while {what}" ("writing values")."""
        self._call = (what, time.monotonic(), threading.get_native_id())
        try:
            yield
        finally:
            self._call = None
            if self._stalled:
                self._stalled = False
                self._on_stall(None)

    def _progress(self, call: tuple[str, float, int]) -> tuple | None:
        """What the calling thread has done so far (bytes read and written, CPU ticks, times it slept
        and woke); ``None`` where Linux's per-thread counts are not there."""
        task = f"/proc/self/task/{call[2]}"
        try:
            with open(f"{task}/io") as io, open(f"{task}/stat") as stat, open(f"{task}/status") as status:
                counts = dict(line.split(": ") for line in io.read().splitlines())
                ticks = stat.read().rsplit(")", 1)[1].split()[11:13]  # utime, stime
                woke = [line for line in status.read().splitlines() if "ctxt_switches" in line]
        except (OSError, ValueError, IndexError):
            return None
        return counts.get("rchar"), counts.get("wchar"), *ticks, *woke

    def _watch(self) -> None:
        orphaned_at: float | None = None
        seen: tuple | None = None
        moved_at = time.monotonic()
        while not self._stop.wait(_TICK):
            now = time.monotonic()
            call = self._call
            if call is not None and not self._stalled:
                what, since, _thread = call
                done = self._progress(call)
                if done is None or done != seen:
                    seen, moved_at = done, now
                still = now - max(since, moved_at)
                if now - since >= SLOW_SECS and (
                    still >= SLOW_SECS or (done is None and disk_note(self.path) == "its disk is full")
                ):
                    self._stalled = True
                    self._on_stall(
                        f"tracelet: AIM storage at {self.path} has not answered for {now - since:.0f} s "
                        f"while {what} ({disk_note(self.path)})"
                    )
            if self._orphaned is not None and self._orphaned():
                orphaned_at = orphaned_at or now
                if self._call is not None and now - orphaned_at >= ORPHAN_SECS:
                    _give_up(f"{self._call[0]} at {self.path} did not finish ({disk_note(self.path)})")


def _give_up(why: str) -> None:
    """End this process now: its trainer is gone and storage does not answer."""
    message = (
        f"tracelet: the AIM writer (pid {os.getpid()}) stops: its trainer is gone and {why}; the run "
        "stays 'active' until `python -m tracelet_callbacks runs close-stale` closes it\n"
    )
    with contextlib.suppress(OSError):
        os.write(2, message.encode())
    os._exit(3)
