"""``capture_terminal_logs=True``: what the trainer prints goes to the run's Logs tab as well.

``sys.stdout`` and ``sys.stderr`` are wrapped so that every write still reaches the terminal first,
then is appended, in the order it was written, to one bounded buffer. A background thread turns the
buffer into lines and hands them to the run's sink like any other record, so the capture works with
the writer process (aim's own capture lives in the process that holds the ``aim.Run``, the writer,
and would see the writer's output). The trainer never waits for the writer: when the buffer holds
:data:`MAX_PENDING` characters, later writes are dropped for the run (never for the terminal) and
counted; the count is stored as the run param ``terminal_logs_dropped`` and said once.

Lines are what a terminal would show: a carriage return (progress bars) keeps the text after it, and
secrets are redacted as in every other text we store.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ..core import records as rec
from ..core.params import redact_text
from ..errors import TraceletWarning

__all__ = ["MAX_PENDING", "TerminalCapture"]

log = logging.getLogger("tracelet_callbacks")

#: Writes waiting to be handed on before further output is dropped for the run.
MAX_PENDING = 100_000
_INTERVAL = 1.0  # seconds between hand-ons while output trickles in
_EAGER = 1_000  # hand on sooner when this many writes wait


class _Tee:
    """A stream that writes through to ``stream`` and copies to the capture while it is on."""

    def __init__(self, stream: Any, capture: TerminalCapture) -> None:
        self._stream = stream
        self._capture: TerminalCapture | None = capture
        self._pid = os.getpid()

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        capture = self._capture
        # a forked DataLoader worker inherits the tee but not the thread that empties it
        if capture is not None and type(text) is str and text and os.getpid() == self._pid:
            capture._take(text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding ...: the real stream's
        return getattr(self._stream, name)


class TerminalCapture:
    """Copies this process's stdout / stderr lines into a run.

    Args:
        submit: hands a list of records to the run's sink (called on the capture's thread).
    """

    def __init__(self, submit: Callable[[list[rec.Record]], None]) -> None:
        self._submit = submit
        self._chunks: collections.deque[str] = collections.deque()
        self.dropped = 0  # lines dropped for the run because the buffer was full
        self._dropping = False  # dropping until a line ends with room in the buffer again
        self._open_line = False  # the last write kept did not end its line
        self._partial = ""  # the unfinished last line
        self._line = 0  # the step of the next line in the run's ``logs`` sequence
        self._tees: list[tuple[str, _Tee]] = []
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one hand-on at a time
        self._thread: threading.Thread | None = None

    def start(self) -> TerminalCapture:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None:  # pythonw, some daemons
                continue
            tee = _Tee(stream, self)
            setattr(sys, name, tee)
            self._tees.append((name, tee))
        self._thread = threading.Thread(target=self._loop, name="tracelet-terminal", daemon=True)
        self._thread.start()
        return self

    def _take(self, text: str) -> None:
        """On the writing thread: an append, or a drop when the buffer is full."""
        chunks = self._chunks
        if self._dropping or len(chunks) >= MAX_PENDING:
            if not self._dropping:
                self._dropping = True
                if self._open_line:  # the line being written is cut here and kept as far as it got
                    chunks.append("\n")
                    self.dropped -= 1  # its own newline is among the dropped writes
            self.dropped += text.count("\n")
            if text.endswith("\n") and len(chunks) < MAX_PENDING:
                self._dropping = self._open_line = False  # the next write starts a line: take it
            return
        chunks.append(text)
        self._open_line = not text.endswith("\n")
        if len(chunks) > _EAGER:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.wait(_INTERVAL)
            self._wake.clear()
            try:
                self._hand_on(final=False)
            except Exception as exc:  # the capture must never die silently nor reach the trainer
                log.warning("tracelet: terminal lines could not be written: %r", exc)

    def _hand_on(self, final: bool) -> None:
        with self._lock:
            chunks = self._chunks
            taken = [chunks.popleft() for _ in range(len(chunks))]  # popleft is atomic: no write is lost
            text = self._partial + "".join(taken)
            lines = text.split("\n")
            self._partial = "" if final else lines.pop()
            if final and lines and lines[-1] == "":
                lines.pop()
            records: list[rec.Record] = []
            for line in lines:
                shown = line.rsplit("\r", 1)[-1]  # what a terminal leaves after a carriage return
                records.append(rec.LogLine(redact_text(shown), step=self._line))
                self._line += 1
            if records:
                self._submit(records)

    def stop(self) -> None:
        """Restore the streams (where nothing else replaced them since) and hand on the rest."""
        for name, tee in self._tees:
            tee._capture = None
            if getattr(sys, name) is tee:
                setattr(sys, name, tee._stream)
        self._tees = []
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._hand_on(final=True)
        if self.dropped:
            message = (
                f"tracelet: {self.dropped} lines of terminal output were not stored in the run "
                "(the writer fell behind); they were printed as usual"
            )
            warnings.warn(message, TraceletWarning, stacklevel=3)
            self._submit([rec.Params("terminal_logs_dropped", self.dropped, merge=False)])
