"""The non-blocking pipeline: the training loop appends, a background writer batches into AIM.

Two writers sit behind the same :class:`~tracelet_callbacks.core.translator.Sink` interface as the
synchronous :class:`~tracelet_callbacks.sink.run.AimSink`:

* :class:`ProcessSink` (the default) starts ``python -m tracelet_callbacks.sink.worker`` and feeds it
  pickled batches through a pipe. aim's storage work happens in that process, so it never takes the
  training process's GIL; the trainer pays an append per value and a pickle per batch.
* :class:`ThreadSink` writes from a thread in this process (for places that cannot start a process).

Both hold at most ``buffer_size`` records before they hand a batch on, hand on whatever is waiting
every ``flush_secs`` (so a killed trainer loses at most that much), and apply back-pressure instead of
growing: a caller that outruns the writer waits. ``flush()`` returns when everything submitted is
durable. A writer that dies is reported once; logging then goes on in this process through an
``AimSink`` on the same run, starting with every batch the writer had not acknowledged.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..core.values import resolve_deferred
from ..errors import TraceletError, TraceletWarning
from .worker import FrameReader, pack, send_frame

__all__ = ["ProcessSink", "ThreadSink", "open_sink"]

log = logging.getLogger("tracelet_callbacks")

#: How many batches may be handed on but not yet durable before the caller waits.
_IN_FLIGHT_BATCHES = 32
_START_TIMEOUT = 120.0
_CLOSE_TIMEOUT = 300.0
_F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe holds a whole batch, so a busy writer rarely blocks the trainer


def open_sink(config: TraceletConfig) -> Any:
    """The sink for ``config.writer``, opened (a bad repo or an unreachable server raises here)."""
    if config.writer == "sync":
        from .run import AimSink

        sink: Any = AimSink(config)
    elif config.writer == "thread" or config.capture_terminal_logs:
        # terminal capture must run in the process whose output it captures
        sink = ThreadSink(config)
    else:
        sink = ProcessSink(config)
    try:
        sink.open()
    except OSError as exc:  # no way to start a process here (a sandbox, an embedded interpreter)
        warnings.warn(
            f"tracelet: could not start the writer process ({exc}); writing from a thread instead",
            TraceletWarning,
            stacklevel=3,
        )
        sink = ThreadSink(config)
        sink.open()
    return sink


class _Buffered:
    """What both writers share: the caller-side buffer, the timer, back-pressure and the fallback."""

    def __init__(self, config: TraceletConfig) -> None:
        self.config = config
        self._pending: collections.deque = collections.deque()
        self._limit = config.buffer_size
        self._ship_lock = threading.RLock()
        self._acked = threading.Condition()
        self._in_flight: dict[int, list] = {}  # batches handed on, not yet durable
        self._watched: set[int] = set()
        self._replies: dict[int, tuple] = {}
        self._gone = False
        self._gone_reason = ""
        self._seq = 0
        self._fallback: Any = None  # an in-process AimSink once the writer died
        self._closed = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._failures = 0
        self._reported = False
        self._hash: str | None = None
        self._artifacts_uri: str | None = None
        self.status: str | None = None

    # -- what the translator and the run handle see -------------------------------------------------

    @property
    def hash(self) -> str | None:
        return self._hash

    @property
    def artifacts_uri(self) -> str | None:
        return self._artifacts_uri

    @property
    def failures(self) -> int:
        """How many records AIM refused (each batch's count comes back with its acknowledgement)."""
        return self._fallback.failures if self._fallback is not None else self._failures

    def submit(self, records: Iterable[rec.Record]) -> None:
        if self._closed:
            warnings.warn(
                "tracelet: a value was logged after the run was closed; it is dropped",
                TraceletWarning,
                stacklevel=3,
            )
            return
        if self._fallback is not None:
            self._fallback.submit(records)
            return
        pending = self._pending
        for record in records:
            if type(record) is rec.Artifact:  # an explicit call: wait for it and answer it
                self._ship()
                self._store_artifact(record)
                continue
            pending.append(record)
        if len(pending) >= self._limit:
            self._ship()

    def _start_timer(self) -> None:
        def tick() -> None:
            while not self._stop.wait(self.config.flush_secs):
                try:
                    self._ship()
                    self._check_alive()
                except Exception as exc:  # never let the timer die silently
                    log.debug("tracelet: periodic flush failed: %r", exc)

        self._timer = threading.Thread(target=tick, name="tracelet-flush", daemon=True)
        self._timer.start()

    def _take_pending(self) -> list:
        pending = self._pending
        # popleft is atomic, so a caller appending from another thread never loses a record
        return [pending.popleft() for _ in range(len(pending))]

    def _ship(self) -> None:
        """Hand everything pending to the writer as batches of at most ``buffer_size`` records."""
        with self._ship_lock:
            if self._fallback is not None:
                if self._pending:
                    self._fallback.submit(self._take_pending())
                return
            while self._pending:
                batch = self._take_pending()
                for start in range(0, len(batch), self._limit):
                    chunk = _resolved(batch[start : start + self._limit])
                    if self._fallback is not None:  # the writer died while this batch was handed on
                        self._fallback.submit(chunk)
                    else:
                        self._hand_on(chunk)

    def _wait_for(self, ready: Any, what: str, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Wait until ``ready()``; if the writer is gone meanwhile, take over from it instead."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while not ready() and self._fallback is None and not self._gone:
                if time.monotonic() > deadline:
                    raise TraceletError(f"tracelet: the AIM writer did not {what} within {timeout:.0f} s")
                if not self._acked.wait(0.5):
                    self._poll_writer()
            gone = self._gone and self._fallback is None and not ready()
        if gone:
            self._died(self._gone_reason)

    def _check_alive(self) -> None:
        self._poll_writer()
        if self._gone and self._fallback is None and not self._closed:
            self._died(self._gone_reason)

    def _writer_gone(self, reason: str) -> None:
        with self._acked:
            if not self._gone:
                self._gone, self._gone_reason = True, reason
            self._acked.notify_all()

    def _hand_on(self, batch: list) -> None:
        self._wait_for(lambda: len(self._in_flight) < _IN_FLIGHT_BATCHES, "take a batch")
        with self._acked:
            if self._fallback is not None:
                self._fallback.submit(batch)
                return
            self._seq += 1
            seq = self._seq
            self._in_flight[seq] = batch
        self._deliver(seq, batch)

    def _acknowledge(self, seq: int, failures: int, error: str | None) -> None:
        with self._acked:
            self._in_flight.pop(seq, None)
            self._failures = max(self._failures, failures)
            if seq in self._watched:  # someone waits for this one's outcome (an artifact)
                self._replies[seq] = (error,)
                error = None
            self._acked.notify_all()
        if failures and not self._reported:
            self._reported = True
            log.error("tracelet: writing to AIM failed: %s (training goes on)", error)
            warnings.warn(
                f"tracelet: writing to AIM failed ({error}); training goes on", TraceletWarning, stacklevel=2
            )

    def _wait_durable(self, timeout: float) -> None:
        self._wait_for(lambda: not self._in_flight, "confirm a write", timeout)

    def flush(self) -> None:
        """Return once everything submitted so far is durable."""
        if self._closed:
            return
        self._ship()
        if self._fallback is None:
            self._wait_durable(_CLOSE_TIMEOUT)
        if self._fallback is not None:
            self._fallback.flush()

    def _died(self, reason: str) -> None:
        """The writer is gone: say so once and continue in this process on the same run."""
        with self._ship_lock, self._acked:
            if self._fallback is not None or (self._closed and self.status is not None):
                return
            log.error("tracelet: the AIM writer stopped (%s); writing from the training process now", reason)
            warnings.warn(
                f"tracelet: the AIM writer stopped ({reason}); logging goes on from this process, "
                "nothing acknowledged or pending is lost",
                TraceletWarning,
                stacklevel=2,
            )
            try:
                sink = self._take_over()
            except Exception as exc:
                log.error(
                    "tracelet: cannot write to AIM from this process either (%s); values are dropped", exc
                )
                sink = _Unavailable(str(exc))
            for seq in sorted(self._in_flight):
                sink.submit(self._in_flight[seq])
            self._in_flight.clear()
            self._fallback = sink
            self._acked.notify_all()

    def close(self, status: str = "finished") -> None:
        status = rec.normalise_status(status)
        with self._ship_lock:
            if self._closed:
                return
            try:
                self._ship()
            finally:
                self._closed = True
                self._stop.set()
            if self._fallback is None:
                try:
                    self._close_writer(status)
                except Exception as exc:
                    self._died(f"{exc}")
            if self._fallback is not None:
                self._fallback.close(status)
            self.status = status

    # -- what each writer provides ------------------------------------------------------------------

    def _deliver(self, seq: int, batch: list) -> None:
        raise NotImplementedError

    def _store_artifact(self, record: rec.Artifact) -> None:
        raise NotImplementedError

    def _poll_writer(self) -> None:
        """Call ``_writer_gone`` if the writer is no longer there."""
        raise NotImplementedError

    def _close_writer(self, status: str) -> None:
        raise NotImplementedError

    def _take_over(self) -> Any:
        """An in-process ``AimSink`` writing to the same run."""
        raise NotImplementedError


class _Unavailable:
    """Where records go when neither the writer nor this process can write to AIM: nowhere, counted."""

    hash = artifacts_uri = None

    def __init__(self, error: str) -> None:
        self.error = error
        self.failures = 0

    def submit(self, records: Iterable[rec.Record]) -> None:
        self.failures += sum(1 for _ in records)

    def flush(self) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass

    def get(self, key: str) -> Any:
        raise KeyError(key)


def _resolved(batch: list) -> list:
    """Values left on their device when logged (``Deferred``) become floats now, in one copy."""
    waiting = [i for i, r in enumerate(batch) if type(r) is rec.Scalar and type(r.value) is not float]
    if not waiting:
        return batch
    try:
        numbers = resolve_deferred([batch[i].value for i in waiting])
    except Exception as exc:  # a device error: these values cannot be read; say so and keep the rest
        log.error(
            "tracelet: could not read %d values from their device: %r; they are dropped", len(waiting), exc
        )
        lost = set(waiting)
        return [record for i, record in enumerate(batch) if i not in lost]
    out = list(batch)
    for i, number in zip(waiting, numbers, strict=True):
        out[i] = batch[i]._replace(value=number)
    return out


class ProcessSink(_Buffered):
    """Writes through ``python -m tracelet_callbacks.sink.worker`` (see the module docstring)."""

    def __init__(self, config: TraceletConfig) -> None:
        super().__init__(config)
        self._proc: subprocess.Popen | None = None
        self._out = -1  # our end of the pipe to the worker
        self._opened = threading.Event()
        self._open_error: str | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()

    def open(self) -> None:
        """Check the repo or server here (errors belong to the caller), then start the writer.

        The writer imports aim and opens the run while training starts; only what needs the run
        itself (its hash) waits for that.
        """
        from .run import check_repo_path, check_server  # neither imports aim

        if self.config.remote_uri:
            check_server(self.config.remote_uri)
        else:
            check_repo_path(self.config.repo_path)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        try:
            fcntl.fcntl(to_worker_w, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tracelet_callbacks.sink.worker",
                    str(to_worker_r),
                    str(from_worker_w),
                ],
                pass_fds=(to_worker_r, from_worker_w),
                start_new_session=True,  # Ctrl-C and process-group signals are for the trainer
                env=env,
                cwd=os.getcwd(),
            )
        except BaseException:
            os.close(to_worker_w)
            os.close(from_worker_r)
            raise
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        self._out = to_worker_w
        self._send(("open", self.config.replace(routing=None)))
        self._reader = threading.Thread(
            target=self._read_replies, args=(from_worker_r,), name="tracelet-acks", daemon=True
        )
        self._reader.start()
        self._start_timer()
        if self.config.run_hash:
            try:
                self._opened_run()  # resuming a run that is not there is the caller's error, now
            except TraceletError:
                self._closed = True  # nothing to take over: there is no run
                self._stop.set()
                self._release_writer()
                raise

    def _opened_run(self) -> None:
        """Wait for the writer to have opened the run; its failure to do so is the caller's error."""
        if not self._opened.wait(_START_TIMEOUT):
            raise TraceletError(
                f"tracelet: the AIM writer did not open the run within {_START_TIMEOUT:.0f} s"
            )
        if self._open_error is not None:
            raise TraceletError(self._open_error)

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
            send_frame(self._out, message)

    def _read_replies(self, fd: int) -> None:
        inbox = FrameReader(fd)
        try:
            answer = inbox.read()
            if answer is not None and answer[0] == "opened":
                _, self._hash, self._artifacts_uri = answer
            else:
                detail = answer[1] if answer else "it stopped before opening the run"
                self._open_error = detail if str(detail).startswith("tracelet:") else f"tracelet: {detail}"
            self._opened.set()
            while (message := inbox.read()) is not None:
                if message[0] == "ack":
                    self._acknowledge(*message[1:])
                else:
                    with self._acked:
                        self._replies[message[1]] = message[2:]
                        self._acked.notify_all()
        except Exception as exc:
            log.debug("tracelet: reading the writer's replies failed: %r", exc)
        finally:
            self._opened.set()
            os.close(fd)
        if self._open_error is not None and not self._closed:
            # the writer could not open the run; this process would fail the same way
            log.error("%s; values logged to this run are dropped", self._open_error)
            with self._acked:
                self._fallback = _Unavailable(self._open_error)
                self._acked.notify_all()
        elif not self._closed:
            self._writer_gone("its pipe closed")
            threading.Thread(target=self._died_safely, args=("its pipe closed",), daemon=True).start()

    def _died_safely(self, reason: str) -> None:
        try:
            self._died(reason)
        except Exception as exc:
            log.error("tracelet: could not take over from the AIM writer: %r", exc)

    def _deliver(self, seq: int, batch: list) -> None:
        try:
            self._send(("batch", seq, pack(batch)))
        except OSError as exc:
            self._writer_gone(f"writing to it failed: {exc}")
            self._died(self._gone_reason)

    def _request(self, kind: str, *args: Any, timeout: float = _CLOSE_TIMEOUT) -> tuple:
        with self._acked:
            self._seq += 1
            seq = self._seq
        try:
            self._send((kind, seq, *args))
        except OSError as exc:
            self._writer_gone(f"writing to it failed: {exc}")
        self._wait_for(lambda: seq in self._replies, f"answer {kind!r}", timeout)
        with self._acked:
            return self._replies.pop(seq, (False, "the writer stopped"))

    def get(self, key: str) -> Any:
        self.flush()
        if self._fallback is not None:
            return self._fallback.get(key)
        ok, value = self._request("get", key)
        if not ok and self._fallback is not None:
            return self._fallback.get(key)
        if not ok:
            raise KeyError(key)
        return value

    def _store_artifact(self, record: rec.Artifact) -> None:
        # sent as a batch of its own; its acknowledgement carries the error, if any
        with self._acked:
            self._seq += 1
            seq = self._seq
            self._in_flight[seq] = [record]
            self._watched.add(seq)
        self._deliver(seq, [record])
        self._wait_for(lambda: seq in self._replies, "store an artifact")
        with self._acked:
            self._watched.discard(seq)
            (error,) = self._replies.pop(seq, (None,))  # after a takeover the fallback stored it
        if error:
            raise TraceletError(error)

    def _poll_writer(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._writer_gone(f"exit code {proc.returncode}")

    def _close_writer(self, status: str) -> None:
        self._request("close", status)  # answered once the run is closed and indexed
        proc = self._proc
        with self._send_lock:
            os.close(self._out)
            self._out = -1
        # the writer's own exit (interpreter teardown) need not delay the training script
        threading.Thread(target=proc.wait, name="tracelet-reap", daemon=True).start()

    def _take_over(self) -> Any:
        from .run import AimSink

        self._release_writer()
        # the run's lock names the dead writer's pid; aim treats it as stale once that pid is reaped
        sink = AimSink(self.config.replace(run_hash=self._hash, run_name=None, tags=None), takeover=True)
        sink.open()
        return sink

    def _release_writer(self, wait: float = 10.0) -> None:
        with self._send_lock:  # never close the pipe under a message being written
            if self._out >= 0:
                try:
                    os.close(self._out)
                except OSError:
                    pass
                self._out = -1
        if self._proc is not None:
            try:
                self._proc.wait(timeout=wait)  # reaped, so aim sees its run lock as stale
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class ThreadSink(_Buffered):
    """Writes from a thread in this process, through an ``AimSink``."""

    def __init__(self, config: TraceletConfig) -> None:
        super().__init__(config)
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: Any = None
        self._error: BaseException | None = None

    def open(self) -> None:
        from .run import AimSink

        self._sink = AimSink(self.config)
        self._sink.open()
        self._hash, self._artifacts_uri = self._sink.hash, self._sink.artifacts_uri
        self._thread = threading.Thread(target=self._work, name="tracelet-writer", daemon=True)
        self._thread.start()
        self._start_timer()

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                seq, batch = self._queue.popleft()
                if seq is None:
                    return
                try:
                    self._sink.submit(batch)
                except Exception as exc:
                    self._error = exc
                    self._acknowledge(seq, max(self._sink.failures, 1), repr(exc))
                    return
                self._acknowledge(seq, self._sink.failures, None)

    def _deliver(self, seq: int, batch: list) -> None:
        self._queue.append((seq, batch))
        self._wake.set()

    def get(self, key: str) -> Any:
        self.flush()
        return (self._fallback or self._sink).get(key)

    def _store_artifact(self, record: rec.Artifact) -> None:
        self.flush()
        (self._fallback or self._sink).submit([record])

    def _poll_writer(self) -> None:
        thread = self._thread
        if thread is not None and not thread.is_alive():
            self._writer_gone(f"{self._error!r}" if self._error else "its thread ended")

    def _close_writer(self, status: str) -> None:
        self._deliver(None, [])  # type: ignore[arg-type]
        if self._thread is not None:
            self._thread.join(_CLOSE_TIMEOUT)
        self._sink.close(status)

    def _take_over(self) -> Any:
        return self._sink  # the thread is gone; its sink is still open in this process
