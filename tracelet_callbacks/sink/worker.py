"""The writer process: reads batches from the training process through a pipe and writes them to AIM.

Started by :class:`~tracelet_callbacks.sink.writer.ProcessSink` as
``python -m tracelet_callbacks.sink.worker READ_FD WRITE_FD``. It owns the ``aim.Run`` (through
:class:`~tracelet_callbacks.sink.run.AimSink`), so aim's storage work never takes the training
process's GIL. What crosses the pipes is defined in :mod:`~tracelet_callbacks.sink.wire`.

After ``Closed`` the worker waits for the next ``Open``: the training process keeps it as a spare for
its next run, so aim is imported once per training process, not once per run. When the training
process goes away without ``Close`` (SIGKILL, a crash of the interpreter) the pipe ends; the worker
writes what it already received, records status ``killed``, closes and indexes the run. Between runs
it simply exits.
It ignores SIGINT and runs in its own session, so Ctrl-C or a SIGTERM sent to the trainer's process
group reaches the trainer (which then closes the run with ``interrupted``), not the writer.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import signal
import sys
import threading
import warnings
from typing import Any

from . import wire
from .watchdog import Watchdog

__all__ = ["main"]


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the training process reports what goes wrong here (it gets each error with the batch's ack)
    warnings.simplefilter("ignore")
    logging.getLogger("tracelet_callbacks").propagate = False
    logging.getLogger("tracelet_callbacks").addHandler(logging.NullHandler())
    # aim's client logs and prints tracebacks (from finalizers, too) while a server is away; the
    # trainer hears about that once, from us (wire.Notice)
    logging.getLogger("aim").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda unraisable: None
    default_hook = threading.excepthook
    threading.excepthook = lambda args: (
        default_hook(args) if args.thread is not None and args.thread.name.startswith("tracelet") else None
    )
    read_fd, write_fd = int(argv[1]), int(argv[2])
    parent = os.getppid()
    reader = wire.FrameReader(read_fd, alive=lambda: os.getppid() == parent)

    sending = threading.Lock()  # a forwarder thread may send a notice while this thread acks

    def reply(message: Any) -> None:
        try:
            with sending:
                wire.send_frame(write_fd, message)
        except OSError:  # the trainer is gone; keep writing what it sent
            pass

    # a reader thread keeps the pipe drained while this thread is inside aim (stuck there, too), so
    # the trainer never waits on a full pipe. The queue needs no bound of its own: the trainer never
    # has more than its in-flight limit of batches unacknowledged.
    inbox = _Inbox()

    def pump() -> None:
        try:
            while (payload := reader.read_pickled()) is not None:
                inbox.put(payload)
        finally:
            inbox.put(None)

    threading.Thread(target=pump, name="tracelet-worker-reader", daemon=True).start()
    # Importing aim makes some 800 modules' worth of objects and almost no garbage: the collector's
    # passes over them meanwhile cost about 8 % of the import's CPU (measured), spent while the
    # training has just started on the other core. It runs again once they are frozen below.
    gc.disable()
    _defer_web_framework()
    from .forward import aim_sink
    from .repo import migrate_in_this_process
    from .run import AimSink

    migrate_in_this_process()
    # aim's import takes about a second: a writer started early (warm_up) does it while the trainer is
    # still being set up, not after the run was asked for
    import aim.storage.encoding  # noqa: F401  (aim itself, and what sink/series.py writes with)

    # What is here now (aim, its dependencies: most of this process's objects) lives as long as the
    # process. Out of the collector's sight, the collections that each batch's thousand new records
    # start cost a tenth of what they did (about 1 µs a value otherwise).
    gc.freeze()
    gc.enable()

    # one run after another: a writer whose run closed cleanly waits for the trainer's next run
    while (message := inbox.get()) is not None:
        if type(message) is not wire.Open:
            continue  # sent for a run that could not be opened, before the trainer heard so
        sink = aim_sink(message.config, argv=message.argv, new_run=message.new_run)
        if isinstance(sink, AimSink):  # a local run: a batch commits while the next one is read
            sink.pipelined = True
        if hasattr(sink, "notify"):  # news about the server goes to the trainer, who shows it
            sink.notify = lambda text: reply(wire.Notice(text))
        try:
            sink.open()
        except Exception as exc:
            reply(wire.OpenFailed(wire.portable(exc)))
            continue
        reply(wire.Opened(sink.hash, sink.artifacts_uri))
        config = message.config
        watchdog = Watchdog(
            config.spool_path if config.remote_uri else config.repo_path,
            on_stall=lambda reason: reply(wire.Stalled(reason)),
            orphaned=lambda: os.getppid() != parent,
        ).start()
        try:
            if not _serve(sink, inbox, reply, watchdog):
                return 0
        finally:
            watchdog.stop()
    return 0  # the trainer went away between runs: nothing to close


class _Inbox:
    """The messages the reader thread took off the pipe, unpickled only when this thread takes them.

    Unpickling a batch may import aim (an ``aim.Image`` logged through ``exp.run``). Done on the reader
    thread while this one was still importing aim, that made two threads import aim at once, and one
    of them failed halfway (``cannot import name decode_int64``): the reader died and the trainer
    had to take the run over. Only this thread imports aim now.
    """

    def __init__(self) -> None:
        self._payloads: queue.Queue = queue.Queue()

    def put(self, payload: bytearray | None) -> None:
        self._payloads.put(payload)

    def get(self) -> Any:
        payload = self._payloads.get()
        return None if payload is None else wire.loads(payload)

    def empty(self) -> bool:
        return self._payloads.empty()


def _defer_web_framework() -> None:
    """Keep FastAPI out of this process's start: a fifth of ``import aim``'s CPU, on the trainer's cores.

    ``aim.sdk.run`` imports ``aim.ext.utils``, whose ``from fastapi.responses import JSONResponse``
    is for the exception handlers of aim's web server, which a writer never runs, and it pulls in all
    of FastAPI (about 0.2 s of CPU on this 2-core machine, measured with ``-X importtime``). Until
    something here reads more of it, ``fastapi.responses`` is a stand-in whose ``JSONResponse`` makes
    the real one when called; any other name loads the real module in its place.
    """
    import importlib
    import types

    if "fastapi.responses" in sys.modules:
        return

    def real() -> Any:
        if sys.modules.get("fastapi.responses") is stand_in:
            del sys.modules["fastapi.responses"]
        return importlib.import_module("fastapi.responses")

    def json_response(*args: Any, **kwargs: Any) -> Any:
        return real().JSONResponse(*args, **kwargs)

    def attribute(name: str) -> Any:
        if name.startswith("__"):  # the import system's questions (``__path__``): a plain module
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in = types.ModuleType("fastapi.responses", "stand-in until the real module is needed")
    stand_in.JSONResponse = json_response  # type: ignore[attr-defined]
    stand_in.__getattr__ = attribute  # type: ignore[method-assign]
    sys.modules["fastapi.responses"] = stand_in


def _serve(sink: Any, inbox: _Inbox, reply: Any, watchdog: Watchdog) -> bool:
    """Write one run's messages until it is closed (``True``), or until the trainer vanished or the run
    could not be closed (``False``: this writer then ends).

    A pipelined sink may still be committing a batch when ``submit`` returns. Its ``Ack`` says the
    batch is durable, and the trainer forgets a batch once acknowledged (it replays the others if
    this process dies), so that ``Ack`` is held back until the batch has settled: by the next
    ``submit`` (which settles the batch before it first), or by a ``flush`` once nothing waits in
    the inbox or before a ``Get`` or ``Close``. Its failures are the ones counted when it settled.
    """
    reported = None  # a failure the sink recorded is told once, not with every later ack
    held: int | None = None  # the batch whose commit may still be running

    def acknowledge(seq: int, failures: int, last_error: str | None, error: BaseException | None) -> None:
        nonlocal reported
        if error is None and last_error not in (None, reported):
            error = wire.RemoteError(last_error)
        reported = last_error
        reply(wire.Ack(seq, failures, error))

    def release() -> None:
        """Make everything written durable, then acknowledge the held batch."""
        nonlocal held
        error = None
        try:
            with watchdog.busy("writing values"):
                sink.flush()
        except Exception as exc:
            error = wire.portable(exc)
        seq, held = held, None
        acknowledge(seq, *sink.settled, error)  # type: ignore[arg-type]

    while True:
        message = inbox.get()
        if message is None:  # the trainer vanished without closing: keep what it sent, end the run
            with watchdog.busy("closing the run"), contextlib.suppress(Exception):
                sink.close("killed")
            return False
        kind = type(message)
        if kind is wire.Batch:
            error: BaseException | None = None
            try:
                with watchdog.busy("writing values"):
                    sink.submit(wire.unpack(message.records))  # the held batch settles first
            except Exception as exc:  # an artifact that could not be stored: the caller is waiting
                error = wire.portable(exc)
            if held is not None and error is not None:
                release()  # whatever went wrong, nothing is acknowledged before it is durable
            elif held is not None:  # settled by that submit
                seq, held = held, None
                acknowledge(seq, *sink.settled, None)
            if error is None and not inbox.empty() and getattr(sink, "committing", False):
                held = message.seq  # more waits: read it while this batch commits
                continue
            if (error is None and inbox.empty()) or getattr(sink, "committing", False):
                # caught up: make it durable before saying so (a server's queue, a commit in flight)
                try:
                    with watchdog.busy("writing values"):
                        sink.flush()
                except Exception as exc:
                    error = error or wire.portable(exc)
            acknowledge(message.seq, sink.failures, sink.last_error, error)
        elif kind is wire.Get:
            if held is not None:
                release()
            try:
                with watchdog.busy("reading the run"):
                    value = sink.get(message.key)
                reply(wire.Reply(message.seq, True, value))
            except Exception as exc:
                reply(wire.Reply(message.seq, False, wire.portable(exc)))
        elif kind is wire.Close:
            if held is not None:
                release()
            failure = None
            try:
                with watchdog.busy("closing the run"):
                    sink.close(message.status)
            except Exception as exc:  # the repo's files are gone ...: the trainer says it
                failure = f"closing run {sink.hash} failed: {exc!r}"
            reply(wire.Closed(message.seq, failure or sink.index_error))
            return failure is None  # a writer whose run broke is not kept for the next one


if __name__ == "__main__":
    code = 1
    try:
        code = main(sys.argv)
    finally:
        # Every run this process served is closed, flushed and indexed by now (or could not be).
        # Skip the interpreter's teardown: aim's exit handlers would try to release what earlier
        # runs left behind, and for a run on an `aim server` that has since stopped, or a repo whose
        # files are gone, they wait forever.
        os._exit(code)
