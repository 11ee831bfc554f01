"""Test doubles for code built on tracelet: an in-memory sink that records what it is given.

Hand it to any entry point through ``sink_factory=``; nothing touches AIM or the disk:

>>> from tracelet_callbacks import Experiment
>>> sinks = []
>>> exp = Experiment(sink_factory=lambda config: sinks.append(RecordingSink(config)) or sinks[-1])
>>> exp.log_metric("val_loss", 0.25, iteration=3)
>>> exp.close()
>>> sinks[0].series("loss", subset="val"), sinks[0].status
([(3, 0.25)], 'finished')
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

from .core import records as rec
from .sink.contract import Sink

__all__ = ["RecordingSink"]

_numbers = itertools.count(1)


class RecordingSink(Sink):
    """A sink that keeps every record in ``self.records`` (in order) and what happened to it.

    Args:
        config: the resolved settings; its ``run_hash`` (a resume) becomes this sink's hash.
        events: a list shared with the test, to which ``("open", hash)``, ``("flush", hash)`` and
            ``("close", hash, status)`` are appended as they happen (for asserting hook order).
    """

    def __init__(self, config: Any = None, events: list[tuple] | None = None) -> None:
        self.config = config
        self.events = events if events is not None else []
        self.records: list[rec.Record] = []
        self.flushes = 0
        self.opened = False
        self.closed_with: str | None = None
        resumed = getattr(config, "run_hash", None)
        self._hash = resumed or f"recorded{os.getpid()}x{next(_numbers)}"

    def open(self) -> None:
        if not self.opened:
            self.opened = True
            self.events.append(("open", self._hash))

    def submit(self, records: Iterable[rec.Record]) -> None:
        if self.closed_with is not None:
            raise RuntimeError("submit after close")
        self.records.extend(records)

    def flush(self) -> None:
        self.flushes += 1
        self.events.append(("flush", self._hash))

    def close(self, status: str = "finished") -> None:
        if self.closed_with is None:
            self.closed_with = self.status = rec.normalise_status(status)
            self.events.append(("close", self._hash, self.status))

    def get(self, key: str) -> Any:
        found: Any = None
        for record in self.of(rec.Params):
            if record.key == key:
                both = isinstance(found, dict) and isinstance(record.values, dict) and record.merge
                found = {**found, **record.values} if both else record.values
        if found is None:
            raise KeyError(key)
        return found

    def of(self, kind: type) -> list[Any]:
        """The records of one type, in order."""
        return [record for record in self.records if isinstance(record, kind)]

    def scalars(self) -> list[rec.Scalar]:
        return self.of(rec.Scalar)

    def series(self, name: str, **context: Any) -> list[tuple[int | None, float]]:
        """``(step, value)`` pairs of one metric in exactly one context."""
        return [(r.step, r.value) for r in self.scalars() if r.name == name and r.context == context]
