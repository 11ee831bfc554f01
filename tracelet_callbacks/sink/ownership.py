"""A run is written by the process that opened it, never by a child forked from that process.

A forked child (a DataLoader worker, a forked evaluation) starts with a copy of everything its parent
held: the ends of the pipes to the writer process, the records waiting to be handed on, aim's run
objects with their close-at-exit hooks. Used from the child they would end or corrupt the parent's run:
two processes writing frames to one pipe interleave them, a ``close`` sent from the child closes the
parent's run, and aim's exit hooks running in the child write the run's end time and close its
databases under the parent's writer.

So right after a fork the child lets go of every sink its parent opened (:func:`disown`): it closes
its own copies of the pipe ends (the writer still sees the end of its input when the parent goes),
forgets the parent's waiting records and takes aim's exit hooks off its copies of the run. The sink
then drops whatever reaches it in the child; :class:`~tracelet_callbacks.Experiment` says so once, at
the user's line. A run the child opens itself is the child's own.

With the ``thread`` or ``sync`` writer aim's RocksDB lives in the training process, and a child forked
from it cannot end normally at all: RocksDB's static destructors, run by the C library's ``exit``,
wait on condition variables whose waiters were the parent's threads (it hangs, or crashes). Such a
child ends with ``_exit`` once Python's own teardown is done (:func:`_end_without_native_teardown`).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import weakref
from typing import Any

from .buffered import BufferedSink, Unavailable
from .contract import Sink
from .storage import abandon_storage, forget_at_exit  # aim itself only when a run is abandoned

__all__ = ["disown", "hold"]

# The sinks opened in this process (and not yet let go of by a fork): what a forked child disowns.
_held: weakref.WeakSet[Sink] = weakref.WeakSet()

_FORKED = "this process was forked from the one that opened the run, which alone writes it"


def hold(sink: Sink) -> Sink:
    """Note that ``sink`` was opened in this process, so that a child forked from it lets go of it."""
    _held.add(sink)
    return sink


def disown(sink: Any) -> None:
    """Make ``sink``, inherited through a fork, inert in this process without touching the parent's
    run or writer: nothing is sent, flushed or closed from here, and values reaching it are dropped."""
    worker = getattr(sink, "_worker", None)
    if worker is not None:  # a ProcessSink: this process's copies of the pipe ends are closed
        sink._worker = None
        worker.release()  # a forked copy only closes its pipe ends: the writer is the parent's
    for part in ("_sink", "_spool", "_fallback"):  # a ThreadSink's AimSink, the spool, a takeover's
        inner = getattr(sink, part, None)
        if isinstance(inner, Sink):
            disown(inner)
    run = getattr(sink, "_run", None)
    if run is not None:  # an AimSink's aim.Run: aim's exit hooks would close it from here
        abandon_storage(run)
        forget_at_exit(getattr(run, "repo", None))  # a server's client would disconnect the parent's
    forget_at_exit(getattr(sink, "_server", None))  # the forwarder's client of the server
    if isinstance(sink, BufferedSink):
        # a parent's thread may have held these at the fork: a copy of a held lock is never released
        sink._ship_lock = threading.RLock()
        sink._acked = threading.Condition()
        if hasattr(sink, "_send_lock"):
            sink._send_lock = threading.Lock()
        sink._hash = sink._hash or sink.config.run_hash  # known without asking the parent's writer
        sink._pending, sink._in_flight = collections.deque(), {}
        sink._fallback = Unavailable(_FORKED)  # ends every wait for the parent's writer at once
        sink._closed = True
    elif hasattr(sink, "_closed") and run is not None:
        sink._closed = True


_ends_with_exit = False


def _end_without_native_teardown() -> None:
    """Make this forked child end with ``_exit(status)`` after Python's teardown (see the module
    docstring). glibc's ``on_exit`` handlers run last registered, first run: this one, registered after
    the fork, runs before RocksDB's destructors, which were registered when the library was loaded."""
    global _ends_with_exit
    if _ends_with_exit:
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        on_exit, leave = libc.on_exit, libc._exit
    except (OSError, AttributeError):  # not glibc: there is no such hook to use
        return
    on_exit.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
    # the handler is called as handler(status, arg): _exit reads the status and ignores the argument
    on_exit(ctypes.cast(leave, ctypes.c_void_p), None)
    _ends_with_exit = True


def _after_fork_in_child() -> None:
    inherited = list(_held)
    _held.clear()
    for sink in inherited:
        try:
            disown(sink)
        except Exception:  # a fork hook has nobody to raise to; the run layer drops the values anyway
            pass
    if "aimrocks" in sys.modules:  # RocksDB was loaded here, by a writer or a read of the repo
        try:
            _end_without_native_teardown()
        except Exception:  # as above: the child then may hang at its exit, as it did before
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)
