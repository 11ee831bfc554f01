"""What both background writers share: the caller-side buffer, the timed hand-on, back-pressure,
durability waits and the takeover when a writer dies (see :mod:`tracelet_callbacks.sink.writer`)."""

from __future__ import annotations

import collections
import itertools
import logging
import operator
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..core.values import resolve_deferred
from ..errors import TraceletError, say
from .contract import Sink
from .watchdog import is_disk_full

__all__ = ["CLOSE_TIMEOUT", "BufferedSink", "Unavailable"]

log = logging.getLogger("tracelet_callbacks")

#: How many batches may be handed on but not yet durable before the caller waits.
IN_FLIGHT_BATCHES = 32
CLOSE_TIMEOUT = 300.0
CLOSE_GRACE = 10.0  # seconds a stalled storage gets to close the run at the end of training
#: The longest a caller waits for room when the writer answers nothing at all (a frozen process); a
#: writer whose storage is stuck says so within seconds (see :mod:`.watchdog`).
SILENT_WRITER_SECS = 60.0


class BufferedSink(Sink):
    """What both writers share: the caller-side buffer, the timer, back-pressure and the fallback."""

    def __init__(self, config: TraceletConfig) -> None:
        self.config = config
        self._pending: collections.deque = collections.deque()
        self._limit = config.buffer_size
        self._ship_lock = threading.RLock()
        self._acked = threading.Condition()
        self._in_flight: dict[int, list] = {}  # batches handed on, not yet durable
        self._watched: set[int] = set()
        self._replies: dict[int, tuple] = {}
        self._gone = False
        self._gone_reason = ""
        self._seq = 0
        self._fallback: Any = None  # an in-process AimSink once the writer died
        self._closed = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._failures = 0
        self._reported = False
        self._hash: str | None = None
        self._artifacts_uri: str | None = None
        self._stall: str | None = None  # why storage does not answer, while it does not
        self._stall_told = False
        self._told_full = False
        self._dropped = 0  # values logged during a stall that there was no room to hold
        self.status: str | None = None

    # -- what the translator and the run handle see -------------------------------------------------

    @property
    def failures(self) -> int:
        """How many records AIM refused (each batch's count comes back with its acknowledgement)."""
        return self._fallback.failures if self._fallback is not None else self._failures

    def submit(self, records: Iterable[rec.Record]) -> None:
        if self._closed:
            self._dropped_after_close()
            return
        if self._fallback is not None:
            self._fallback.submit(records)
            return
        pending = self._pending
        for record in records:
            if type(record) is rec.Artifact:  # an explicit call: wait for it and answer it
                self._ship()
                self._store_artifact(record)
                continue
            pending.append(record)
        if len(pending) >= self._limit:
            self._ship()

    def add(self, record: rec.Scalar) -> None:
        """One scalar: the translator's path for every logged value, an append while the writer keeps up."""
        if self._closed or self._fallback is not None:
            self.submit((record,))
            return
        pending = self._pending
        pending.append(record)
        if len(pending) >= self._limit:
            self._ship()

    def _start_timer(self) -> None:
        def tick() -> None:
            while not self._stop.wait(self.config.flush_secs):
                try:
                    self._ship()
                    self._check_alive()
                except Exception as exc:  # never let the timer die silently
                    log.debug("tracelet: periodic flush failed: %r", exc)

        self._timer = threading.Thread(target=tick, name="tracelet-flush", daemon=True)
        self._timer.start()

    def _take_pending(self) -> list:
        # one popleft per record present now, each atomic: a caller appending from another thread
        # meanwhile never loses a record (the loop runs in C)
        return list(map(collections.deque.popleft, itertools.repeat(self._pending, len(self._pending))))

    def _ship(self) -> None:
        """Hand everything pending to the writer as batches of at most ``buffer_size`` records."""
        with self._ship_lock:
            if self._fallback is not None:
                if self._pending:
                    self._fallback.submit(self._take_pending())
                return
            while self._pending:
                batch = self._take_pending()
                for start in range(0, len(batch), self._limit):
                    chunk = batch[start : start + self._limit]
                    if self.holds_deferred:  # set before any such value was added: no race
                        chunk = _resolved(chunk)
                    if self._fallback is not None:  # the writer died while this batch was handed on
                        self._fallback.submit(chunk)
                    else:
                        self._hand_on(chunk)

    def _wait_for(
        self, ready: Any, what: str, timeout: float = CLOSE_TIMEOUT, give_way: bool = False
    ) -> bool:
        """Wait until ``ready()``; if the writer is gone meanwhile, take over from it instead.

        With ``give_way`` a stall of the writer's storage ends the wait (``False`` is returned) rather
        than the timeout, which then counts as a stall itself: the training loop waits for no storage.
        """
        deadline = time.monotonic() + timeout
        silent = False
        with self._acked:
            while not ready() and self._fallback is None and not self._gone:
                if give_way and self._stall is not None:
                    return False
                if time.monotonic() > deadline:
                    if not give_way:
                        raise TraceletError(f"tracelet: the AIM writer did not {what} within {timeout:.0f} s")
                    silent = True
                    break
                if not self._acked.wait(0.5):
                    self._poll_writer()
            gone = self._gone and self._fallback is None and not ready()
        if silent:
            self._storage_stalled(f"tracelet: the AIM writer did not {what} within {timeout:.0f} s")
            return False
        if gone:
            self._died(self._gone_reason)
        return True

    def _storage_stalled(self, reason: str | None) -> None:
        """The writer's storage stopped answering (``reason``) or answers again (``None``).

        During a stall nothing waits for it: batches that find no room are dropped (counted), and
        ``flush()`` returns without its confirmation. The first stall of a run is one warning.
        """
        with self._acked:
            stalled, self._stall = self._stall, reason
            dropped = self._dropped if reason is None else 0
            tell = reason is not None and not self._stall_told
            self._stall_told = self._stall_told or tell
            self._acked.notify_all()
        if tell:
            say(
                f"{reason}; values logged until it answers are dropped when there is no room to hold "
                "them; training goes on"
            )
        elif reason is None and stalled is not None:
            log.warning(
                "tracelet: AIM storage answers again (%d values logged meanwhile were dropped)", dropped
            )

    def _check_alive(self) -> None:
        self._poll_writer()
        if self._gone and self._fallback is None and not self._closed:
            self._died(self._gone_reason)

    def _writer_gone(self, reason: str) -> None:
        with self._acked:
            if not self._gone:
                self._gone, self._gone_reason = True, reason
            self._acked.notify_all()

    def _hand_on(self, batch: list) -> None:
        room = self._wait_for(
            lambda: len(self._in_flight) < IN_FLIGHT_BATCHES,
            "take a batch",
            SILENT_WRITER_SECS,
            give_way=True,
        )
        with self._acked:
            if self._fallback is not None:
                self._fallback.submit(batch)
                return
            if not room and len(self._in_flight) >= IN_FLIGHT_BATCHES:  # storage is stuck: no waiting
                self._dropped += len(batch)
                return
            self._seq += 1
            seq = self._seq
            self._in_flight[seq] = batch
        kept = self._deliver(seq, batch)
        if kept is not batch:
            with self._acked:  # unless it was acknowledged meanwhile
                if seq in self._in_flight:
                    self._in_flight[seq] = kept

    def _acknowledge(self, seq: int, failures: int, error: BaseException | str | None) -> None:
        with self._acked:
            watched = seq in self._watched  # someone waits for this one's outcome (an artifact)
            # The first failure is told, and a full disk however late (it ends all storing). An
            # artifact's error goes to its caller instead; a writer thread's sink has told its own.
            full = error is not None and is_disk_full(error) and not self._told_full
            report = (failures and not self._reported and error is not None and not watched) or full
            self._reported = self._reported or bool(report)
            self._told_full = self._told_full or full
        if report:  # said before the batch counts as done, so a flush() that waited for it has seen it
            say(f"tracelet: writing to AIM failed ({error}); training goes on")
        with self._acked:
            self._in_flight.pop(seq, None)
            self._failures = max(self._failures, failures)
            if watched:
                self._replies[seq] = (error,)
            self._acked.notify_all()
            answering = self._stall is not None
        if answering:  # an acknowledgement ends a stall
            self._storage_stalled(None)

    def _wait_durable(self, timeout: float) -> None:
        self._wait_for(lambda: not self._in_flight, "confirm a write", timeout, give_way=True)

    def flush(self) -> None:
        """Return once everything submitted so far is durable."""
        if self._closed:
            return
        self._ship()
        if self._fallback is None:
            self._wait_durable(CLOSE_TIMEOUT)
        if self._fallback is not None:
            self._fallback.flush()

    def _died(self, reason: str) -> None:
        """The writer is gone: say so once and continue in this process on the same run."""
        with self._ship_lock, self._acked:
            if self._fallback is not None or (self._closed and self.status is not None):
                return
            say(
                f"tracelet: the AIM writer stopped ({reason}); logging goes on from this process, "
                "nothing acknowledged or pending is lost"
            )
            try:
                sink = self._take_over()
            except Exception as exc:
                say(f"tracelet: cannot write to AIM from this process either ({exc}); values are dropped")
                sink = Unavailable(str(exc))
            for seq in sorted(self._in_flight):
                sink.submit(self._replay(self._in_flight[seq]))
            self._in_flight.clear()
            self._fallback = sink
            self._acked.notify_all()

    def close(self, status: str = "finished") -> None:
        status = rec.normalise_status(status)
        with self._ship_lock:
            if self._closed:
                return
            try:
                self._ship()
            finally:
                self._closed = True
                self._stop.set()
            if self._fallback is None:
                try:
                    self._close_writer(status)
                except Exception as exc:
                    self._died(f"{exc}")
            if self._fallback is not None:
                self._fallback.close(status)
            self.status = status

    # -- what each writer provides ------------------------------------------------------------------

    def _deliver(self, seq: int, batch: list) -> Any:
        """Hand ``batch`` to the writer; returns what to keep until it is acknowledged."""
        raise NotImplementedError

    def _replay(self, kept: Any) -> list:
        """The records of something ``_deliver`` returned, for the takeover."""
        return kept

    def _store_artifact(self, record: rec.Artifact) -> None:
        raise NotImplementedError

    def _poll_writer(self) -> None:
        """Call ``_writer_gone`` if the writer is no longer there."""
        raise NotImplementedError

    def _close_writer(self, status: str) -> None:
        raise NotImplementedError

    def _take_over(self) -> Any:
        """An in-process ``AimSink`` writing to the same run."""
        raise NotImplementedError


class Unavailable(Sink):
    """Where records go when neither the writer nor this process can write to AIM: nowhere, counted."""

    def __init__(self, error: str) -> None:
        self.error = error

    def open(self) -> None:
        pass

    def submit(self, records: Iterable[rec.Record]) -> None:
        records = list(records)
        self._failures += len(records)
        names = [r.name for r in records if type(r) is rec.Artifact]
        if names:  # an explicit call, answered: it must not look stored
            raise TraceletError(f"tracelet: could not store artifact {names[0]!r}: {self.error}")

    def flush(self) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass

    def get(self, key: str) -> Any:
        raise KeyError(key)


_value = operator.itemgetter(1)  # a Scalar's value


def _resolved(batch: list) -> list:
    """Values left on their device when logged (``Deferred``) become floats now, in one copy."""
    if set(map(type, batch)) == {rec.Scalar} and set(map(type, map(_value, batch))) == {float}:
        return batch  # the common batch: plain numbers only, checked without a Python-level loop
    waiting = [i for i, r in enumerate(batch) if type(r) is rec.Scalar and type(r.value) is not float]
    if not waiting:
        return batch
    try:
        numbers = resolve_deferred([batch[i].value for i in waiting])
    except Exception as exc:  # a device error: these values cannot be read; say so and keep the rest
        log.error(
            "tracelet: could not read %d values from their device: %r; they are dropped", len(waiting), exc
        )
        lost = set(waiting)
        return [record for i, record in enumerate(batch) if i not in lost]
    out = list(batch)
    for i, number in zip(waiting, numbers, strict=True):
        out[i] = batch[i]._replace(value=number)
    return out
