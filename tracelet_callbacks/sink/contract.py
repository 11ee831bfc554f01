"""The sink contract: everything the run layer asks of whatever writes a run.

:class:`~tracelet_callbacks.sink.run.AimSink` (aim on the caller's thread), the background writers in
:mod:`~tracelet_callbacks.sink.writer`, and :class:`~tracelet_callbacks.testing.RecordingSink` (an
in-memory double) all implement it, so an entry point given ``sink_factory=`` runs unchanged over any
of them. No aim import here.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ..core import records as rec
from ..errors import TraceletWarning

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
    #: Set by the translator before it hands on its first value still on its device (a ``Deferred``,
    #: read back later): until then a writer need not look through its batches for such values.
    holds_deferred = False

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

    # What a sink has learnt of its run; subclasses set these (or override the properties below).
    _hash: str | None = None
    _artifacts_uri: str | None = None
    _failures = 0

    @property
    def hash(self) -> str | None:
        """The run hash."""
        return self._hash

    @property
    def artifacts_uri(self) -> str | None:
        """Where the run's artifacts are copied (``file://...``, ``s3://...``)."""
        return self._artifacts_uri

    @property
    def failures(self) -> int:
        """How many records the backend refused so far."""
        return self._failures

    def _dropped_after_close(self) -> None:
        """Say that records came after ``close`` (and are dropped), at the line that logged them."""
        warnings.warn(
            "tracelet: a value was logged after the run was closed; it is dropped",
            TraceletWarning,
            stacklevel=4,
        )


#: What ``sink_factory=`` takes: the resolved settings in, an unopened sink out.
SinkFactory = Callable[[Any], Sink]
