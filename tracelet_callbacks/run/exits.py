"""Process-exit handling: open runs end with the right status however the process ends.

Normal exit -> ``finished``; an uncaught exception, or ``sys.exit(n)`` / ``exit(n)`` with ``n`` not 0
that nothing caught -> ``failed``; Ctrl-C or SIGTERM -> ``interrupted``.
The exit handler is registered on the first run opened. ``sys.excepthook``, ``sys.exit`` (with the
``exit`` / ``quit`` builtins) and the SIGTERM handler (which tell a failure from a normal end) are
chained onto what was there before, once, on the first run opened with ``exit_handlers=True``; with
``exit_handlers=False`` they are left alone, as Lightning leaves them to its ``Trainer``, and a run
open at exit is closed ``finished``.

An exit code never reaches ``atexit``. The ``SystemExit`` that ``sys.exit`` raises here is one of
ours, whose ``code`` notices when the interpreter itself reads it: that happens only when nothing
caught it and the process is ending. A ``raise SystemExit(n)`` written out in the script is not
seen (it ends ``finished``).
"""

from __future__ import annotations

import atexit
import builtins
import logging
import os
import signal
import sys
import threading
from typing import Any, Protocol

log = logging.getLogger("tracelet_callbacks")


class _Closable(Protocol):
    def close(self, status: str = "finished") -> None: ...


# Strong references on purpose: a writer dropped without close() must still be closed at exit,
# or its run stays "active" and unindexed. close() removes it.
_open: set[Any] = set()
_installed = False
_hooked = False
_owner_pid = os.getpid()
_exit_status = "finished"
_lock = threading.Lock()


def watch(item: _Closable, hooks: bool = True) -> None:
    """Close ``item`` with the process's final status if it is still open at exit; with ``hooks``,
    learn that status from ``sys.excepthook`` and SIGTERM."""
    global _installed, _hooked, _owner_pid
    with _lock:
        _open.add(item)
        register = not _installed
        hook = hooks and not _hooked
        _installed = True
        _hooked = _hooked or hooks
        if register:
            _owner_pid = os.getpid()
    if register:
        atexit.register(_close_all_at_exit)
    if hook:
        _install_hooks()


def _install_hooks() -> None:
    previous_hook, previous_exit = sys.excepthook, sys.exit

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        global _exit_status
        _exit_status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        previous_hook(kind, value, tb)

    def exit(status: Any = None) -> None:
        # SystemExit never reaches sys.excepthook, and atexit cannot see the exit code: the exception
        # is swapped for one that tells us if it ends the process (a caught one does not)
        try:
            previous_exit(status)
        except SystemExit as exc:
            if type(exc) is SystemExit and threading.current_thread() is threading.main_thread():
                raise _Exit(*exc.args).with_traceback(exc.__traceback__) from None
            raise

    sys.excepthook = excepthook
    sys.exit = exit
    for name in ("exit", "quit"):  # the REPL-style builtins a script may call too
        builtin = getattr(builtins, name, None)
        if builtin is not None and not isinstance(builtin, _Quitter):
            setattr(builtins, name, _Quitter(builtin))
    _install_sigterm()


class _Exit(SystemExit):
    """The ``SystemExit`` of ``sys.exit`` once our hooks are in: the interpreter reads its ``code``
    only when nothing caught it, with no Python frame left (the run's status comes from that)."""

    @property
    def code(self) -> Any:
        code = _EXIT_CODE.__get__(self, SystemExit)
        try:
            sys._getframe(1)
        except ValueError:  # no caller: the interpreter is ending the process with this code
            global _exit_status
            _exit_status = "finished" if code in (None, 0) else "failed"
        return code


_EXIT_CODE = SystemExit.__dict__["code"]


class _Quitter:
    """``exit`` / ``quit`` as the ``site`` module made them, raising :class:`_Exit`."""

    def __init__(self, builtin: Any) -> None:
        self._builtin = builtin

    def __repr__(self) -> str:
        return repr(self._builtin)

    def __call__(self, code: Any = None) -> None:
        try:
            self._builtin(code)
        except SystemExit as exc:
            if type(exc) is not SystemExit or threading.current_thread() is not threading.main_thread():
                raise
            raise _Exit(*exc.args).with_traceback(exc.__traceback__) from None


def forget(item: _Closable) -> None:
    with _lock:
        _open.discard(item)


def _after_fork_in_child() -> None:
    """A forked child closes at its exit only the runs it opens itself: its parent's are the parent's
    (:mod:`~tracelet_callbacks.sink.ownership`), and a run of its own is not left to end ``killed``."""
    global _owner_pid, _lock, _exit_status
    _lock = threading.Lock()  # a parent's thread may have held it at the fork
    _open.clear()
    _owner_pid = os.getpid()
    _exit_status = "finished"


os.register_at_fork(after_in_child=_after_fork_in_child)


def close_all(status: str) -> None:
    if os.getpid() != _owner_pid:
        return  # forked by native code, past Python's fork hooks: the runs are the parent's
    for item in list(_open):
        try:
            item.close(status)
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("tracelet: could not close a run cleanly: %s", exc)


def _close_all_at_exit() -> None:
    close_all(_exit_status)


def _install_sigterm() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return
    if previous is signal.SIG_IGN:
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        close_all("interrupted")  # a no-op in forked children, which inherit this handler
        if callable(previous):
            previous(signum, frame)
            return
        # Default action: die of SIGTERM as the process would have without us.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        pass
