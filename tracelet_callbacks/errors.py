"""The exceptions and warnings tracelet raises, so callers can catch ours apart from the frameworks'."""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["TraceletError", "TraceletValueError", "TraceletWarning", "WarnOnce", "say"]


class TraceletError(Exception):
    """A tracking backend failed (the AIM repo cannot be opened or written, the server is down ...)."""


class TraceletValueError(TraceletError, ValueError):
    """A logged value cannot be stored. Raised only with ``strict=True``; otherwise a warning."""


class TraceletWarning(UserWarning):
    """Something was logged that we skipped or could only store in part; training goes on."""


class WarnOnce:
    """Issues each warning once per key for its owner (one per run, per callback ...).

    >>> import warnings
    >>> once = WarnOnce()
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     said = [once("disk", "tracelet: the disk is full"), once("disk", "tracelet: again")]
    >>> said, len(caught)
    ([True, False], 1)
    """

    def __init__(self) -> None:
        self._said: set = set()

    def __call__(self, key: object, message: str, stacklevel: int = 2) -> bool:
        """Warn ``message`` (a :class:`TraceletWarning`) unless ``key`` was warned about before."""
        if key in self._said:
            return False
        self._said.add(key)
        warnings.warn(message, TraceletWarning, stacklevel=stacklevel + 1)
        return True

    def guard(self, what: str, action: Callable[..., Any], *args: Any) -> None:
        """Run ``action(*args)``; a failure (the artifact store cannot be written ...) is one warning
        per ``what`` and training goes on. ``strict=True``'s own error passes through."""
        try:
            action(*args)
        except TraceletValueError:
            raise
        except Exception as exc:
            self(what, f"tracelet: {what} failed ({exc}); training goes on", stacklevel=2)


def say(text: str) -> None:
    """Tell the user ``text`` once, as a :class:`TraceletWarning` at the line of their code that called
    into this package, from any thread: news about a run (the server went away, a rewind, a forked
    child's values dropped).

    A warning and no log line besides, as Lightning's ``rank_zero_warn`` does: one notice, shown once
    per line by Python's warning filters. News that arrives on one of our threads (the writer's
    replies, the flush timer) has no caller of its own: it is told at the line the main thread is at,
    the call into this package it waits in (``flush``, ``close``, a logged value) when there is one.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     say("tracelet: the server went away")
    >>> [str(w.message) for w in caught]
    ['tracelet: the server went away']
    """
    frame = _caller_of_package(sys._getframe(1))
    background = frame is None or frame.f_globals.get("__name__") == "threading"  # one of our threads
    if background:
        main = sys._current_frames().get(threading.main_thread().ident)
        frame = _caller_of_package(main) or _innermost_own_code(main)
    try:
        if frame is None:  # the interpreter is ending: no line of the user's runs any more
            warnings.warn(text, TraceletWarning, stacklevel=2)
            return
        module = frame.f_globals
        warnings.warn_explicit(
            text,
            TraceletWarning,
            frame.f_code.co_filename,
            frame.f_lineno,
            module=module.get("__name__"),
            # no module_globals: a loader asked for the source (``python -c``'s) may raise instead
            registry=module.setdefault("__warningregistry__", {}),
        )
    except Exception:  # ``-W error``: raised on our thread it would end it (the writer's replies)
        if not background:
            raise
        logging.getLogger(__package__).error("%s", text)


def _ours(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__") or ""
    return name == __package__ or name.startswith(f"{__package__}.")


def _caller_of_package(frame: FrameType | None) -> FrameType | None:
    """The frame that called into this package on ``frame``'s stack (past whatever the package was
    calling itself, a lock's wait), ``None`` when the stack holds none of our frames."""
    while frame is not None and not _ours(frame):
        frame = frame.f_back
    while frame is not None and _ours(frame):
        frame = frame.f_back
    return frame


# Where installed libraries and the standard library live: a line there is not the user's own.
_LIBRARIES = tuple(
    {os.path.join(sysconfig.get_paths()[key], "") for key in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def _innermost_own_code(frame: FrameType | None) -> FrameType | None:
    """The innermost frame of the user's own code on ``frame``'s stack: a training loop rather than the
    torch function it is in (``None`` when there is none: the interpreter is running ``atexit``)."""
    while frame is not None and (frame.f_code.co_filename.startswith(_LIBRARIES) or _ours(frame)):
        frame = frame.f_back
    return frame
