"""The exceptions and warnings tracelet raises, so callers can catch ours apart from the frameworks'."""

from __future__ import annotations

__all__ = ["TraceletError", "TraceletValueError", "TraceletWarning"]


class TraceletError(Exception):
    """A tracking backend failed (the AIM repo cannot be opened or written, the server is down ...)."""


class TraceletValueError(TraceletError, ValueError):
    """A logged value cannot be stored. Raised only with ``strict=True``; otherwise a warning."""


class TraceletWarning(UserWarning):
    """Something was logged that we skipped or could only store in part; training goes on."""
