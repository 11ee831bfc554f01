"""The exceptions and warnings tracelet raises, so callers can catch ours apart from the frameworks'."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
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
    """Tell the user ``text`` (a :class:`TraceletWarning` and a log line), from any thread: news about
    a run that no caller's line stands for (the server went away, a rewind)."""
    logging.getLogger("tracelet_callbacks").warning("%s", text)
    warnings.warn(text, TraceletWarning, stacklevel=2)
