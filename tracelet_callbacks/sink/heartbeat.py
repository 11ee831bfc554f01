"""A run's heartbeat: while a writer has a run open it stores ``{"time", "pid", "host"}`` under
:data:`HEARTBEAT_KEY` every :data:`HEARTBEAT_SECS`, so a run whose writer died with its trainer can be
told from one still being written (see :mod:`~tracelet_callbacks.sink.stale`).

Our bookkeeping lives under ``run["__system_params"]["tracelet"]`` (:data:`BOOKKEEPING`): aim's UI
leaves ``__system_params`` out of a run's params and of the runs table, so it never sits among the
user's hyperparameters, and ``run["__system_params"]`` still reads it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core import records as rec

__all__ = ["BOOKKEEPING", "HEARTBEAT_KEY", "HEARTBEAT_SECS", "LEGACY_HEARTBEAT_KEY", "Heartbeat"]

log = logging.getLogger("tracelet_callbacks")

#: Where our bookkeeping is kept on a run: beside aim's own environment info, out of the UI's params.
BOOKKEEPING = ("__system_params", "tracelet")
#: The path of the heartbeat in a run's params.
HEARTBEAT_KEY = (*BOOKKEEPING, "heartbeat")
#: Where runs written by earlier releases keep it (still read by ``runs ls`` and ``close-stale``).
LEGACY_HEARTBEAT_KEY = ("__tracelet_heartbeat",)
#: Seconds between two heartbeats.
HEARTBEAT_SECS = 2.0


class Heartbeat:
    """Submits the heartbeat record through ``sink`` every :data:`HEARTBEAT_SECS` until stopped."""

    def __init__(self, sink: Any, tick: Callable[[], None] | None = None) -> None:
        self._sink = sink
        self._tick = tick  # also called at every beat, from this thread (a sink's own watchdog)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._beat()
        self._thread = threading.Thread(target=self._run, name="tracelet-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECS):
            if self._tick is not None:
                try:
                    self._tick()
                except Exception as exc:
                    log.debug("tracelet: %r", exc)
            self._beat()

    def _beat(self) -> None:
        beat = {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
        try:
            self._sink.submit([rec.Params(HEARTBEAT_KEY, beat, merge=False)])
        except Exception as exc:  # the sink reports its own failures; a heartbeat never adds one
            log.debug("tracelet: heartbeat not written: %r", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
