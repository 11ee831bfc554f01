"""Test doubles for code built on tracelet: an in-memory sink that records what it is given.

>>> from tracelet_callbacks.core.translator import Translator
>>> sink = RecordingSink()
>>> Translator(sink).scalar("val_loss", 0.25, step=3)
True
>>> sink.series("loss", subset="val")
[(3, 0.25)]
"""

from __future__ import annotations

from typing import Any

from .core import records as rec

__all__ = ["RecordingSink"]


class RecordingSink:
    """A sink that keeps every record in ``self.records`` (in order) and remembers flush / close calls."""

    def __init__(self) -> None:
        self.records: list[rec.Record] = []
        self.flushes = 0
        self.closed_with: str | None = None

    def submit(self, records: list[rec.Record]) -> None:
        if self.closed_with is not None:
            raise RuntimeError("submit after close")
        self.records.extend(records)

    def flush(self) -> None:
        self.flushes += 1

    def close(self, status: str = "finished") -> None:
        if self.closed_with is None:
            self.closed_with = status

    def of(self, kind: type) -> list[Any]:
        """The records of one type, in order."""
        return [record for record in self.records if isinstance(record, kind)]

    def scalars(self) -> list[rec.Scalar]:
        return self.of(rec.Scalar)

    def series(self, name: str, **context: Any) -> list[tuple[int | None, float]]:
        """``(step, value)`` pairs of one metric in exactly one context."""
        return [(r.step, r.value) for r in self.scalars() if r.name == name and r.context == context]
