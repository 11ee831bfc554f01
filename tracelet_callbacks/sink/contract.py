"""The sink contract: everything the run layer asks of whatever writes a run.

:class:`~tracelet_callbacks.sink.run.AimSink` (aim on the caller's thread), the background writers in
:mod:`~tracelet_callbacks.sink.writer`, and :class:`~tracelet_callbacks.testing.RecordingSink` (an
in-memory double) all implement it, so an entry point given ``sink_factory=`` runs unchanged over any
of them. No aim import here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

from ..core import records as rec

__all__ = ["Sink", "SinkFactory"]


class Sink(abc.ABC):
    """Where one run's records go.

    The life of a sink: built from the resolved settings (nothing opened), ``open()`` (a bad repo or
    an unreachable server raises here), any number of ``add`` / ``submit`` / ``flush`` / ``get``,
    then ``close(status)`` once (idempotent). ``hash`` and ``artifacts_uri`` may wait for the run to
    be opened; both stay readable after ``close``.
    """

    #: The status the run was closed with; ``None`` while it is open.
    status: str | None = None

    @abc.abstractmethod
    def open(self) -> None:
        """Open (or resume) the run; configuration and connection errors surface here."""

    @abc.abstractmethod
    def submit(self, records: Iterable[rec.Record]) -> None:
        """Write ``records`` in order. May return before they are durable (see :meth:`flush`)."""

    def add(self, record: rec.Scalar) -> None:
        """One scalar: the path every logged value takes, so writers make it as cheap as an append."""
        self.submit((record,))

    @abc.abstractmethod
    def flush(self) -> None:
        """Return once everything submitted so far is durable."""

    @abc.abstractmethod
    def close(self, status: str = "finished") -> None:
        """Flush, record ``status``, close and index the run. A second call does nothing."""

    @abc.abstractmethod
    def get(self, key: str) -> Any:
        """The run param ``key`` as stored (``KeyError`` when there is none)."""

    @property
    @abc.abstractmethod
    def hash(self) -> str | None:
        """The run hash."""

    @property
    def artifacts_uri(self) -> str | None:
        """Where the run's artifacts are copied (``file://...``, ``s3://...``)."""
        return None

    @property
    def failures(self) -> int:
        """How many records the backend refused so far."""
        return 0


#: What ``sink_factory=`` takes: the resolved settings in, an unopened sink out.
SinkFactory = Callable[[Any], Sink]
