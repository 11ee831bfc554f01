"""What the training process and its writer process say to each other, and how it is framed.

Each message is one of the small named tuples below, pickled and preceded by an 8-byte length. The
trainer sends :class:`Open`, then any number of :class:`Batch` / :class:`Get`, then :class:`Close`;
the writer answers :class:`Opened` or :class:`OpenFailed`, an :class:`Ack` per batch once it is
durable, a :class:`Reply` per ``Get`` and :class:`Closed` last. Errors travel as exceptions (their
type and message kept, see :func:`portable`), so the trainer re-raises them ``from`` the original.
Both sides import this module; neither imports the other.
"""

from __future__ import annotations

import functools
import os
import pickle
import select
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from ..core.records import Scalar

__all__ = [
    "Ack",
    "Batch",
    "Close",
    "Closed",
    "FrameReader",
    "Get",
    "Notice",
    "Open",
    "OpenFailed",
    "Opened",
    "RemoteError",
    "Reply",
    "Stalled",
    "decode_frame",
    "encode_frame",
    "pack",
    "portable",
    "send_frame",
    "unpack",
]

_HEADER = struct.Struct("!Q")
_POLL_SECS = 1.0


# -- trainer -> writer --------------------------------------------------------------------------------


class Open(NamedTuple):
    """Open (or resume) the run of ``config``; ``argv`` is the trainer's command line, for the run's
    environment params (the writer's own would name the worker module). ``new_run``: ``config.run_hash``
    was just chosen by the trainer for a run to make (nothing to look for)."""

    config: Any
    argv: list[str]
    new_run: bool = False


class Batch(NamedTuple):
    seq: int
    records: tuple | list  # as :func:`pack` made them


class Get(NamedTuple):
    seq: int
    key: str


class Close(NamedTuple):
    seq: int
    status: str


# -- writer -> trainer --------------------------------------------------------------------------------


class Opened(NamedTuple):
    hash: str
    artifacts_uri: str | None


class OpenFailed(NamedTuple):
    error: BaseException


class Ack(NamedTuple):
    """``seq`` is durable. ``failures`` counts every record refused so far; ``error`` is this
    batch's failure (or the last one the sink reported), ``None`` when there was none."""

    seq: int
    failures: int
    error: BaseException | None


class Reply(NamedTuple):
    seq: int
    ok: bool
    value: Any  # the answer, or the exception when not ok


class Notice(NamedTuple):
    """Something the user should hear about the run (the server went away, came back ...)."""

    text: str


class Stalled(NamedTuple):
    """Storage stopped answering (``reason``), or answers again (``None``): see :mod:`.watchdog`."""

    reason: str | None


class Closed(NamedTuple):
    seq: int
    index_error: str | None


class RemoteError(Exception):
    """An exception from the writer process that could not be pickled, as its type name and message."""


def portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling, else a :class:`RemoteError` naming its type.

    >>> portable(ValueError("bad")).args
    ('bad',)
    >>> class Local(Exception): pass
    >>> portable(Local("x"))
    RemoteError('Local: x')
    """
    try:
        pickle.loads(pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return RemoteError(f"{type(exc).__name__}: {exc}")
    return exc


# -- framing ------------------------------------------------------------------------------------------


def encode_frame(message: Any) -> bytes:
    """One message as the bytes :func:`send_frame` writes (length, then the pickle)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def decode_frame(frame: bytes) -> Any:
    return pickle.loads(frame[_HEADER.size :])


def loads(payload: bytes | bytearray) -> Any:
    """A message :meth:`FrameReader.read_pickled` returned."""
    return pickle.loads(payload)


def send_frame(fd: int, message: Any) -> None:
    """Write one framed message (or the bytes of one); a full pipe blocks: that is the back-pressure."""
    data = memoryview(message if isinstance(message, bytes) else encode_frame(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class FrameReader:
    """Reads framed messages from a pipe; ``read()`` returns ``None`` at the end of the stream.

    Args:
        fd: the pipe's read end.
        alive: called while the pipe is idle; when it returns ``False`` whatever is still buffered is
            read and then the stream counts as ended (a forked child of a dead trainer may still hold
            the pipe's write end open, so the end of the stream alone cannot be relied on).
    """

    def __init__(self, fd: int, alive: Callable[[], bool] | None = None) -> None:
        self._fd = fd
        self._alive = alive
        self._buffer = bytearray()
        self._ended = False

    def read(self) -> Any:
        payload = self.read_pickled()
        return None if payload is None else loads(payload)

    def read_pickled(self) -> bytearray | None:
        """The next message still pickled (for :func:`loads`), or ``None`` at the end of the stream."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                end = _HEADER.size + size
                if len(self._buffer) >= end:
                    payload = self._buffer[_HEADER.size : end]
                    del self._buffer[:end]
                    return payload
            if self._ended:
                return None
            self._fill()

    def _fill(self) -> None:
        if self._alive is not None:
            ready, _, _ = select.select([self._fd], [], [], _POLL_SECS)
            if not ready:
                if not self._alive():
                    self._ended = True
                return
        try:
            chunk = os.read(self._fd, 1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            self._ended = True
        else:
            self._buffer += chunk


def pack(records: list[Any]) -> tuple | list[Any]:
    """A batch of scalars only as six columns (names, values, steps ...), which pickle faster than
    rows; any other batch as a list, its scalars as plain tuples (a class instance pickles slowly)."""
    if set(map(type, records)) == {Scalar}:
        return tuple(zip(*records, strict=True))  # the common batch, transposed in C
    return [tuple(r) if type(r) is Scalar else r for r in records]


def unpack(payload: tuple | list[Any]) -> list[Any]:
    """What :func:`pack` packed, as records again."""
    if type(payload) is tuple:
        return list(map(_scalar, zip(*payload, strict=True)))  # the common batch, made in C
    return [_scalar(item) if type(item) is tuple else item for item in payload]


_scalar = functools.partial(tuple.__new__, Scalar)
