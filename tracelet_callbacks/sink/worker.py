"""The writer process: reads batches from the training process through a pipe and writes them to AIM.

Started by :class:`~tracelet_callbacks.sink.writer.ProcessSink` as
``python -m tracelet_callbacks.sink.worker READ_FD WRITE_FD``. It owns the ``aim.Run`` (through
:class:`~tracelet_callbacks.sink.run.AimSink`), so aim's storage work never takes the training
process's GIL.

Messages are pickled tuples, each framed by an 8-byte length:

* in: ``("open", config, origin)`` (the trainer's ``cwd``, ``environ`` and ``argv``),
  ``("batch", seq, records)``, ``("get", seq, key)``, ``("close", seq, status)``;
* out: ``("opened", hash, artifacts_uri)`` or ``("error", text)``, ``("ack", seq, failures, error)`` once a
  batch is durable, ``("reply", seq, ok, value)``, ``("closed", seq, index_error)``.

After ``closed`` the worker waits for the next ``open``: the training process keeps it as a spare for
its next run, so aim is imported once per training process, not once per run. When the training
process goes away without ``close`` (SIGKILL, a crash of the interpreter) the pipe ends; the worker
writes what it already received, records status ``killed``, closes and indexes the run. Between runs
it simply exits.
It ignores SIGINT and runs in its own session, so Ctrl-C or a SIGTERM sent to the trainer's process
group reaches the trainer (which then closes the run with ``interrupted``), not the writer.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import select
import signal
import struct
import sys
import threading
import warnings
from typing import Any

__all__ = ["FrameReader", "decode_frame", "encode_frame", "main", "pack", "send_frame", "unpack"]

_HEADER = struct.Struct("!Q")
_POLL_SECS = 1.0


def encode_frame(message: Any) -> bytes:
    """One message as the bytes :func:`send_frame` writes (length, then the pickle)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def decode_frame(frame: bytes) -> Any:
    return pickle.loads(frame[_HEADER.size :])


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

    def __init__(self, fd: int, alive: Any = None) -> None:
        self._fd = fd
        self._alive = alive
        self._buffer = bytearray()
        self._ended = False

    def read(self) -> Any:
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                end = _HEADER.size + size
                if len(self._buffer) >= end:
                    message = pickle.loads(self._buffer[_HEADER.size : end])
                    del self._buffer[:end]
                    return message
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


def pack(records: list[Any]) -> list[Any]:
    """Scalars as plain tuples (pickled far faster than a class instance); the rest as they are."""
    from ..core.records import Scalar

    if set(map(type, records)) == {Scalar}:
        return list(map(tuple, records))  # the common batch, converted in C
    return [tuple(r) if type(r) is Scalar else r for r in records]


def unpack(payload: list[Any]) -> list[Any]:
    from ..core.records import Scalar

    make = Scalar._make
    return [make(item) if type(item) is tuple else item for item in payload]


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the training process reports what goes wrong here (it gets each error with the batch's ack)
    warnings.simplefilter("ignore")
    logging.getLogger("tracelet_callbacks").propagate = False
    logging.getLogger("tracelet_callbacks").addHandler(logging.NullHandler())
    read_fd, write_fd = int(argv[1]), int(argv[2])
    parent = os.getppid()
    reader = FrameReader(read_fd, alive=lambda: os.getppid() == parent)

    def reply(message: Any) -> None:
        try:
            send_frame(write_fd, message)
        except OSError:  # the trainer is gone; keep writing what it sent
            pass

    # a reader thread keeps the pipe drained while this thread is inside aim, so the trainer rarely
    # finds the pipe full; the queue is bounded, so memory is too
    inbox: queue.Queue = queue.Queue(maxsize=16)

    def pump() -> None:
        try:
            while (message := reader.read()) is not None:
                inbox.put(message)
        finally:
            inbox.put(None)

    threading.Thread(target=pump, name="tracelet-worker-reader", daemon=True).start()
    from .run import AimSink  # aim's import takes a second: done while the trainer gets ready

    # one run after another: a writer whose run closed cleanly waits for the trainer's next run
    while (message := inbox.get()) is not None:
        if message[0] != "open":
            continue  # sent for a run that could not be opened, before the trainer heard so
        _, config, origin = message
        os.chdir(origin["cwd"])  # relative repo paths and aim's settings as the trainer has them now
        os.environ.clear()
        os.environ.update(origin["environ"])
        sink = AimSink(config, argv=origin["argv"])
        try:
            sink.open()
        except Exception as exc:
            reply(("error", str(exc)))
            continue
        reply(("opened", sink.hash, sink.artifacts_uri))
        if not _serve(sink, inbox, reply):
            return 0
    return 0  # the trainer went away between runs: nothing to close


def _serve(sink: Any, inbox: queue.Queue, reply: Any) -> bool:
    """Write one run's messages until it is closed (``True``) or the trainer vanished (``False``)."""
    while True:
        message = inbox.get()
        if message is None:  # the trainer vanished without closing: keep what it sent, end the run
            sink.close("killed")
            return False
        kind, seq = message[0], message[1]
        if kind == "batch":
            error = None
            try:
                sink.submit(unpack(message[2]))
                if inbox.empty():  # caught up: make it durable before saying so (a server's queue)
                    sink.flush()
            except Exception as exc:  # an artifact that could not be stored: the caller is waiting
                error = str(exc)
            reply(("ack", seq, sink.failures, error or sink.last_error))
        elif kind == "get":
            try:
                reply(("reply", seq, True, sink.get(message[2])))
            except Exception as exc:
                reply(("reply", seq, False, repr(exc)))
        elif kind == "close":
            sink.close(message[2])
            reply(("closed", seq, sink.index_error))  # the trainer says it if indexing failed
            return True


if __name__ == "__main__":
    code = main(sys.argv)
    # Every run this process served is closed, flushed and indexed by now. Skip the interpreter's
    # teardown: aim's exit handlers would try to release what earlier runs left behind, and for a
    # run on an `aim server` that has since stopped they wait for it forever.
    os._exit(code)
