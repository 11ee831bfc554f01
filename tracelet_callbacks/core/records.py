"""The small, plain records that cross from the translation core to a sink.

Records hold only Python builtins and numpy arrays, so a sink can write them in this process, hand
them to a thread, or pickle them to another process without knowing where they came from.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Union

Context = dict[str, Any]

#: The statuses a run can end with (DESIGN.md, "Run status").
RunStatus = Literal["finished", "failed", "interrupted", "killed"]
RUN_STATUSES: tuple[str, ...] = ("finished", "failed", "interrupted", "killed")

#: What frameworks call the same endings (Lightning's ``finalize("success")`` ...).
_STATUS_ALIASES = {"success": "finished", "completed": "finished", "complete": "finished", "error": "failed"}


def normalise_status(status: str) -> str:
    """One of :data:`RUN_STATUSES`, or ``ValueError`` naming them."""
    value = _STATUS_ALIASES.get(str(status).lower(), str(status).lower())
    if value not in RUN_STATUSES:
        raise ValueError(f"tracelet: status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    return value


def new_run_hash() -> str:
    """A hash for a run that does not exist yet, in aim's own form (24 random hex digits), so the run's
    identity is known before any writer has made it."""
    return uuid.uuid4().hex[:24]


def _now() -> float:
    return time.time()


class Scalar(NamedTuple):
    """One point of a metric series.

    A named tuple rather than a dataclass: one is built for every logged value, on the training
    loop's thread, and a tuple is the cheapest thing Python builds and pickles. ``context`` is shared
    between records of the same tag and must not be changed; ``timestamp`` ``None`` means "now".
    """

    name: str
    value: float
    step: int | None = None
    epoch: int | None = None
    context: Context = {}
    timestamp: float | None = None


@dataclass(frozen=True, kw_only=True)
class _Tracked:
    """Where a tracked object sits in its series: step, epoch, context, and when it was logged."""

    step: int | None = None
    epoch: int | float | None = None
    context: Context = field(default_factory=dict)
    timestamp: float = field(default_factory=_now)


@dataclass(frozen=True)
class Histogram(_Tracked):
    """A distribution: ``counts`` over evenly spaced bins spanning ``bin_range``."""

    name: str
    counts: list[float]
    bin_range: tuple[float, float]


@dataclass(frozen=True)
class ImageData:
    """One image as an ``uint8`` array of shape ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``."""

    pixels: Any
    caption: str = ""


@dataclass(frozen=True)
class Images(_Tracked):
    """One or more images tracked together at one step."""

    name: str
    images: list[ImageData]


@dataclass(frozen=True)
class Text(_Tracked):
    name: str
    text: str


@dataclass(frozen=True)
class LogLine(_Tracked):
    """One line of the trainer's terminal output; ``step`` is its line number (the run's Logs tab)."""

    text: str


@dataclass(frozen=True)
class Audio(_Tracked):
    """A clip encoded as WAV bytes."""

    name: str
    wav: bytes
    sample_rate: int
    caption: str = ""


@dataclass(frozen=True)
class Params:
    """JSON-safe values merged into the run under ``key`` (``run[key]``; a tuple is a path into it).

    ``merge=True`` updates the nested dict already stored there instead of replacing it.
    """

    key: str | tuple[str, ...]
    values: Any
    merge: bool = True


@dataclass(frozen=True)
class Tags:
    """AIM tags (the chips in the UI) to add to or remove from the run."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunInfo:
    """Run-level attributes: name, experiment, description."""

    name: str | None = None
    experiment: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Artifact:
    """A file to copy into the run's artifact store under ``name`` (already checked to stay inside).

    ``size``: its length when it was logged; no more than that is copied, so a file that is still
    being written is stored as it was then, not followed while it grows.
    """

    path: str
    name: str
    size: int | None = None


@dataclass(frozen=True)
class Native(_Tracked):
    """A value already built as an AIM object (``aim.Image`` ...) by the user through the run handle."""

    name: str
    value: Any


@dataclass(frozen=True)
class Resumed:
    """The run is continued from a checkpoint taken at ``step`` (``None``: step unknown).

    Unless ``keep``, points an interrupted attempt logged after ``step`` are removed from every series
    (the new attempt logs those steps again). Either way ``(time, step)`` is added to ``run["resumed"]``.
    """

    step: int | None
    keep: bool = False
    timestamp: float = field(default_factory=_now)


Record = Union[  # noqa: UP007
    Scalar, Histogram, Images, Text, LogLine, Audio, Params, Tags, RunInfo, Artifact, Native, Resumed
]
