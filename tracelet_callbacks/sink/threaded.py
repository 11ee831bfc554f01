"""The writer that runs as a thread in the training process, for places that cannot start a process
(see :mod:`~tracelet_callbacks.sink.writer`)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..errors import say
from .buffered import CLOSE_GRACE, CLOSE_TIMEOUT, BufferedSink
from .watchdog import Watchdog

__all__ = ["ThreadSink"]


class ThreadSink(BufferedSink):
    """Writes from a thread in this process, through an ``AimSink``."""

    def __init__(self, config: TraceletConfig, *, new_run: bool = False) -> None:
        super().__init__(config)
        self._new_run = new_run
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: Any = None
        self._error: BaseException | None = None

    def open(self) -> None:
        from .forward import aim_sink

        self._sink = aim_sink(self.config, new_run=self._new_run)
        self._sink.open()
        self._hash, self._artifacts_uri = self._sink.hash, self._sink.artifacts_uri
        config = self.config
        self._watchdog = Watchdog(
            config.spool_path if config.remote_uri else config.repo_path, on_stall=self._storage_stalled
        ).start()
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
                    with self._watchdog.busy("writing values"):
                        self._sink.submit(batch)
                        if not self._queue:  # caught up: make it durable before saying so (a server's queue)
                            self._sink.flush()
                except Exception as exc:
                    self._error = exc
                    self._acknowledge(seq, max(self._sink.failures, 1), repr(exc))
                    return
                self._acknowledge(seq, self._sink.failures, None)

    def _deliver(self, seq: int, batch: list) -> Any:
        self._queue.append((seq, batch))
        self._wake.set()
        return batch

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
        # closing happens on a thread of its own too, so storage that is stuck cannot hold the caller
        closing = threading.Thread(
            target=self._finish, args=(status,), name="tracelet-writer-close", daemon=True
        )
        closing.start()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while closing.is_alive() and time.monotonic() < deadline:
            closing.join(0.5)
            if self._stall is not None:
                closing.join(CLOSE_GRACE)
                break
        self._watchdog.stop()
        if closing.is_alive():
            say(
                f"tracelet: run {self._hash} was not closed "
                f"({self._stall or 'its storage does not answer'}); it stays 'active' until "
                "`python -m tracelet_callbacks runs close-stale`"
            )

    def _finish(self, status: str) -> None:
        if self._thread is not None:
            self._thread.join()
        with self._watchdog.busy("closing the run"):
            self._sink.close(status)

    def _take_over(self) -> Any:
        return self._sink  # the thread is gone; its sink is still open in this process
