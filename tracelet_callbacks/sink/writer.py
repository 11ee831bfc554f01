"""The non-blocking pipeline: the training loop appends, a background writer batches into AIM.

Two writers sit behind the same :class:`~tracelet_callbacks.sink.contract.Sink` contract as the
synchronous :class:`~tracelet_callbacks.sink.run.AimSink`:

* :class:`ProcessSink` (the default, here) hands the run to a ``python -m tracelet_callbacks.sink.worker``
  process (:mod:`~tracelet_callbacks.sink.process` starts it and keeps one ready) and feeds it pickled
  batches through a pipe. aim's storage work happens in that process, so it never takes the training
  process's GIL; the trainer pays an append per value and a pickle per batch.
* :class:`~tracelet_callbacks.sink.threaded.ThreadSink` writes from a thread in this process (for
  places that cannot start a process).

Both hold at most ``buffer_size`` records before they hand a batch on, hand on whatever is waiting
every ``flush_secs`` (so a killed trainer loses at most that much), and apply back-pressure instead of
growing: a caller that outruns the writer waits. ``flush()`` returns when everything submitted is
durable. A writer that dies is reported once; logging then goes on in this process through an
``AimSink`` on the same run, starting with every batch the writer had not acknowledged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..errors import TraceletError, say
from . import wire
from .buffered import CLOSE_GRACE, CLOSE_TIMEOUT, BufferedSink, Unavailable
from .contract import Sink
from .ownership import hold
from .process import Worker, keep_worker, take_worker, warm_up
from .threaded import ThreadSink

__all__ = ["ProcessSink", "ThreadSink", "check_address", "check_target", "open_sink", "prepare"]

log = logging.getLogger("tracelet_callbacks")

_START_TIMEOUT = 120.0


def open_sink(config: TraceletConfig, *, new_run: bool = False) -> Sink:
    """The sink ``config`` asks for (``sink_factory``, else AIM through ``config.writer``), opened.

    A repo folder that cannot be written or a server that does not answer raises here, in the
    training process, whichever writer is used. ``new_run``: ``config.run_hash`` was just chosen for a
    run that does not exist yet, so there is nothing to wait for before the hash is known (a failure to
    make the run is told when it happens).
    """
    if config.sink_factory is not None:
        sink: Sink = config.sink_factory(config)
        sink.open()
        return sink
    check_target(config)
    if config.writer == "sync":
        from .forward import aim_sink

        sink = aim_sink(config, new_run=new_run)
    elif config.writer == "thread":
        sink = ThreadSink(config, new_run=new_run)
    else:
        sink = ProcessSink(config, new_run=new_run)
    try:
        sink.open()
    except OSError as exc:  # no way to start a process here (a sandbox, an embedded interpreter)
        say(f"tracelet: could not start the writer process ({exc}); writing from a thread instead")
        sink = ThreadSink(config, new_run=new_run)
        sink.open()
    return hold(sink)  # a child forked from here lets go of it (see ownership)


def prepare(config: TraceletConfig) -> None:
    """What making a logger, callback, tracker, writer or ``Experiment`` does besides checking its
    settings: a ``remote_uri`` that names something other than an AIM server fails now
    (:func:`check_address`), and this process's writer starts importing aim
    (:func:`~tracelet_callbacks.sink.process.warm_up`). No aim import here, and no file is made."""
    check_address(config)
    warm_up(config)


def check_address(config: TraceletConfig) -> None:
    """At construction: ``ValueError`` when ``remote_uri`` names something that is not an AIM server
    (see :func:`~tracelet_callbacks.sink.repo.check_address`); a server that is down passes."""
    if config.remote_uri and not config.offline and config.sink_factory is None:
        from .repo import check_address as check

        check(config.remote_uri)


def check_target(config: TraceletConfig) -> None:
    """Fail now, in the training process, if the repo folder cannot be written or the server does not
    answer (no run is made; aim is not imported)."""
    if config.sink_factory is not None:
        return
    from .repo import check_repo_path, check_server

    if config.remote_uri and not config.offline:
        check_server(config.remote_uri)
    check_repo_path(config.spool_path if config.remote_uri else config.repo_path)


class ProcessSink(BufferedSink):
    """Writes through ``python -m tracelet_callbacks.sink.worker`` (see the module docstring)."""

    def __init__(self, config: TraceletConfig, *, new_run: bool = False) -> None:
        super().__init__(config)
        self._worker: Worker | None = None
        # a new run's hash is known now; a resumed one is the writer's to confirm (it may not exist)
        self._new_run = new_run
        self._hash = config.run_hash if new_run else None
        self._made = False  # the writer said it opened the run
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()

    @property
    def _proc(self) -> subprocess.Popen | None:
        """The writer process while this sink uses it."""
        worker = self._worker
        return worker.proc if worker is not None else None

    def open(self) -> None:
        """Check the repo or server here (errors belong to the caller), then hand the run to a writer.

        The writer (a spare one started when the logger was made, or kept from this process's last
        run) opens the run in the background. A new run's hash is known already; resuming a run waits
        here for the writer to have found it, so a run that is not there fails the caller now.
        """
        worker = self._worker = take_worker()
        # the routing table and a test's sink factory stay here: the writer only writes
        config = self.config.replace(routing=None, sink_factory=None)
        self._send(wire.Open(config, list(sys.argv), self._new_run))
        self._reader = threading.Thread(
            target=self._read_replies, args=(worker,), name="tracelet-acks", daemon=True
        )
        self._reader.start()
        self._start_timer()
        if self.config.run_hash and not self._new_run:
            try:
                self._opened_run()  # resuming a run that is not there is the caller's error, now
            except TraceletError:
                self._closed = True  # nothing to take over: there is no run
                self._stop.set()
                raise

    def _opened_run(self) -> None:
        """Wait for the writer to have opened the run; its failure to do so is the caller's error."""
        if not self._opened.wait(_START_TIMEOUT):
            raise TraceletError(
                f"tracelet: the AIM writer did not open the run within {_START_TIMEOUT:.0f} s"
            )
        if self._open_error is not None:
            error = self._open_error
            message = str(error) if isinstance(error, TraceletError) else f"tracelet: {error}"
            raise TraceletError(message) from error

    @property
    def hash(self) -> str | None:
        if self._hash is None and self._fallback is None:
            self._opened_run()
        return self._hash or getattr(self._fallback, "hash", None)

    @property
    def artifacts_uri(self) -> str | None:
        if self._artifacts_uri is None and self._fallback is None:
            self._opened_run()
        return self._artifacts_uri

    def _send(self, message: Any) -> None:
        with self._send_lock:
            worker = self._worker
            if worker is None or worker.out < 0:
                raise BrokenPipeError("the writer was let go")
            wire.send_frame(worker.out, message)

    def _read_replies(self, worker: Worker) -> None:
        """Route the writer's replies until this run is closed, or the writer's pipe ends."""
        inbox = wire.FrameReader(worker.inp)
        handed_back = False  # the worker is done with this run and fine: it may serve another
        answered = False
        try:
            answer = inbox.read()
            while type(answer) is wire.Notice:
                say(answer.text)
                answer = inbox.read()
            answered = answer is not None
            if answer is None:  # it died before opening the run: open it from this process instead
                self._writer_gone("it stopped before opening the run")
                self._died_safely(self._gone_reason)
            elif type(answer) is wire.Opened:
                self._hash, self._artifacts_uri = answer.hash, answer.artifacts_uri
                self._made = True
            else:  # it could not open the run, and this process would fail the same way
                self._open_error = answer.error
                handed_back = True
            self._opened.set()
            while answered and not handed_back and (message := inbox.read()) is not None:
                if type(message) is wire.Ack:
                    self._acknowledge(*message)
                    continue
                if type(message) is wire.Notice:
                    say(message.text)
                    continue
                if type(message) is wire.Stalled:
                    self._storage_stalled(message.reason)
                    continue
                with self._acked:
                    if type(message) is wire.Closed:  # the last reply of this run
                        self._replies[message.seq] = (True, message.index_error)
                        handed_back = True
                    else:
                        self._replies[message.seq] = (message.ok, message.value)
                    self._acked.notify_all()
        except Exception as exc:
            log.debug("tracelet: reading the writer's replies failed: %r", exc)
        finally:
            self._opened.set()
            if not handed_back:
                os.close(worker.inp)
                worker.inp = -1
        if self._open_error is not None:
            # said however early the run was closed (unless open() raises it), and a close() waiting
            # for its answer ends now too
            if self._new_run or not self.config.run_hash:
                error = str(self._open_error)
                say(
                    f"{error if error.startswith('tracelet:') else 'tracelet: ' + error}; values logged to "
                    "this run are dropped"
                )
            with self._acked:
                if self._fallback is None:
                    self._fallback = Unavailable(str(self._open_error))
                self._acked.notify_all()
            self._let_go(keep=True)
        elif answered and not handed_back and not self._closed:
            self._writer_gone("its pipe closed")
            threading.Thread(target=self._died_safely, args=("its pipe closed",), daemon=True).start()

    def _died_safely(self, reason: str) -> None:
        try:
            self._died(reason)
        except Exception as exc:
            log.error("tracelet: could not take over from the AIM writer: %r", exc)

    def _deliver(self, seq: int, batch: list) -> Any:
        # what is kept for a takeover is the frame itself: one bytes object instead of a thousand
        # records the garbage collector would walk over and over while they wait for their ack
        frame = wire.encode_frame(wire.Batch(seq, wire.pack(batch)))
        try:
            self._send(frame)
        except OSError as exc:
            self._writer_gone(f"writing to it failed: {exc}")
            self._died(self._gone_reason)
        return frame

    def _replay(self, kept: Any) -> list:
        return wire.unpack(wire.decode_frame(kept).records) if isinstance(kept, bytes) else kept

    def _request(self, kind: type, *args: Any, timeout: float = CLOSE_TIMEOUT, grace: float = 0.0) -> tuple:
        """Send a request and wait for its reply: ``(ok, value)``. Storage that stalls meanwhile gets
        ``grace`` more seconds, then the answer is ``(False, why)``."""
        with self._acked:
            self._seq += 1
            seq = self._seq
        try:
            self._send(kind(seq, *args))
        except OSError as exc:
            self._writer_gone(f"writing to it failed: {exc}")

        def answered() -> bool:
            return seq in self._replies

        if not self._wait_for(answered, f"answer {kind.__name__}", timeout, give_way=True) and grace:
            with self._acked:
                self._acked.wait_for(answered, grace)
        with self._acked:
            return self._replies.pop(seq, (False, self._stall or "the writer stopped"))

    def get(self, key: str) -> Any:
        if self._closed:
            raise KeyError(key)
        self.flush()
        if self._fallback is not None:
            return self._fallback.get(key)
        ok, value = self._request(wire.Get, key)
        if not ok and self._fallback is not None:
            return self._fallback.get(key)
        if not ok:
            raise KeyError(key) from value if isinstance(value, BaseException) else None
        return value

    def _store_artifact(self, record: rec.Artifact) -> None:
        # sent as a batch of its own; its acknowledgement carries the error, if any
        with self._acked:
            self._seq += 1
            seq = self._seq
            self._in_flight[seq] = [record]
            self._watched.add(seq)
        self._deliver(seq, [record])
        self._wait_for(lambda: seq in self._replies, "store an artifact", give_way=True)
        with self._acked:
            self._watched.discard(seq)
            stalled = seq not in self._replies and self._fallback is None and self._stall is not None
            (error,) = self._replies.pop(seq, (None,))  # after a takeover the fallback stored it
        if stalled:
            raise TraceletError(f"tracelet: could not store artifact {record.name!r}: {self._stall}")
        if error is not None:
            raise TraceletError(f"tracelet: could not store artifact {record.name!r}: {error}") from error

    def _poll_writer(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._writer_gone(f"exit code {proc.returncode}")

    def _close_writer(self, status: str) -> None:
        # answered once the run is closed and indexed
        ok, index_error = self._request(wire.Close, status, grace=CLOSE_GRACE)
        if not ok and self._stall is not None and self._fallback is None:
            # storage is stuck: the writer cannot close the run, and it must not outlive the trainer
            say(
                f"tracelet: run {self._hash} was not closed ({self._stall}); its writer was stopped "
                "and the run stays 'active' until `python -m tracelet_callbacks runs close-stale`"
            )
            self._let_go(keep=False, wait=5.0, kill=True)
            return
        if ok and index_error:
            say(f"tracelet: {index_error}")
        if self._reader is not None:
            self._reader.join(5.0)
        self._let_go(keep=ok and self._reader is not None and not self._reader.is_alive())

    def _let_go(self, keep: bool, wait: float | None = None, kill: bool = False) -> None:
        """Stop using the writer: keep it for this process's next run, or let it exit (reaped within
        ``wait`` seconds when given, else in the background)."""
        with self._send_lock:  # never under a message being written
            worker, self._worker = self._worker, None
        if worker is None:
            return
        if keep:
            keep_worker(worker)
        else:
            if kill and worker.owner == os.getpid():
                worker.proc.kill()
            # a reply thread still reading owns the reply pipe: it closes it when the stream ends
            worker.release(close_input=not (self._reader and self._reader.is_alive()), wait=wait)

    def _take_over(self) -> Any:
        from .forward import aim_sink

        self._let_go(keep=False, wait=10.0)
        if not self._made:
            # it died before opening the run: this process opens it (a new run's hash comes with
            # resume="allow", so a run the writer got as far as making is continued, not made twice)
            sink = aim_sink(self.config)
        else:
            # the run's lock names the dead writer's pid; aim treats it as stale once that pid is reaped
            sink = aim_sink(self.config.replace(run_hash=self._hash, run_name=None, tags=None), takeover=True)
        sink.open()
        return sink
