"""System metrics and step times of every rank, sampled on a background thread of the trainer.

One :class:`SystemMonitor` per process (:func:`monitor`), started by the first run that wants it:

* **Rank 0** (or a single process) samples itself at ``system_tracking_interval`` and writes the
  readings to each attached run's sink, beside its own points.
* **Other ranks** sample themselves the same way and hand each sample to rank 0 through the process
  group's rendezvous store (what ``init_process_group`` made; no new port). Rank 0 takes them at its
  next sample and writes them with ``{"rank": r}``; the host and pid of each rank land in the run
  param ``ranks``. A rank never waits for another: every store call happens on the sampling thread,
  and a rank whose samples are not taken keeps at most :data:`BACKLOG` of them.
* **Step time** (``system/step_time_s``, seconds per step over the last interval) comes from the
  step each rank has reached at each sample: the run's last logged step on rank 0, the steps adapters
  note on the others (:meth:`SystemMonitor.note_step`, one assignment). A straggling rank shows as one
  slower line.

In a distributed job every reading gets ``{"rank": r}``; in a single process contexts stay as they
are (``{}``, ``{"gpu": i}``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from .ranks import global_rank
from .system import GpuSampler, ProcessSampler, Reading, system_name

__all__ = ["BACKLOG", "SystemMonitor", "monitor"]

log = logging.getLogger("tracelet_callbacks")

#: Samples a rank keeps in the store while rank 0 does not take them; later ones are dropped.
BACKLOG = 256
_KEY = "tracelet/system/{rank}/{number}"
_ACK = "tracelet/system/{rank}/taken"


class SystemMonitor:
    """Samples this process (and its GPUs) every ``interval`` seconds; see the module docstring."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.disk_path = "."  # the repo's disk, set by :func:`monitor` for each run
        self._sinks: list[Any] = []
        self._lock = threading.RLock()  # one sample at a time; a sink is never written after detach
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samplers: tuple[ProcessSampler, GpuSampler] | None = None
        self._step: int | None = None  # the last step noted
        self._step_sources: list[tuple[Any, Callable[[], int | None]]] = []
        self._last_mark: tuple[int, float] | None = None  # (step, time) at the previous sample
        self._exchange = _RankExchange()
        self.dropped = 0  # samples a rank could not hand on (rank 0 did not take them)
        self.samples = 0  # samples taken so far (tests wait on it)
        self._said = False  # a failing sampler is logged once

    # -- what adapters call ---------------------------------------------------------------------------

    def note_step(self, step: int | None) -> None:
        """A training step was reached (one assignment: cheap enough for every logged value)."""
        self._step = step
        if self._thread is None and step is not None and global_rank_now()[0] != 0:
            self._start()  # a rank > 0 samples from its first step; rank 0 once a run is attached

    def attach(self, sink: Any, steps: Callable[[], int | None] | None = None) -> None:
        """Write samples (this rank's and the other ranks') to ``sink`` from now on; ``steps`` tells
        the step the run has reached (the translator's last one)."""
        with self._lock:
            if not self._sinks:  # samples other ranks left while no run was open belong to none
                self._exchange.collect(global_rank_now()[1])
            self._sinks.append(sink)
            if steps is not None:
                self._step_sources.append((sink, steps))
            self._exchange.introduced.clear()  # each run gets the ``ranks`` param
        self._start()

    def detach(self, sink: Any) -> None:
        """Stop writing to ``sink``, after a last sample (and the other ranks' waiting samples)."""
        with self._lock:
            if not any(known is sink for known in self._sinks):
                return
            self._safe_tick()
            self._sinks = [known for known in self._sinks if known is not sink]
            self._step_sources = [pair for pair in self._step_sources if pair[0] is not sink]
            if not self._sinks and global_rank_now()[0] == 0:
                self._stop.set()  # rank 0 samples only for a run; a later run starts it again
                self._thread = None

    def flush(self) -> None:
        """Take a sample now and hand it on. On a rank > 0 this is its last sample of the run (its
        training ended): sampling stops until its next step, so no sample lands in a later run."""
        with self._lock:
            self._safe_tick()
            if global_rank_now()[0] != 0:
                self._stop.set()
                self._thread = None

    # -- the sampling thread --------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and not self._stop.is_set():
                return
            self._stop = threading.Event()
            thread = threading.Thread(
                target=self._loop, args=(self._stop,), name="tracelet-system", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # no more threads: training goes on without system metrics
                self._say(f"tracelet: no system metrics: the sampling thread could not start ({exc})")
                return
            self._thread = thread

    def _loop(self, stop: threading.Event) -> None:
        while True:
            began = time.monotonic()
            with self._lock:
                if stop.is_set():
                    return
                self._safe_tick()
            # one sample per interval, however long a sample took (a busy trainer slows it down)
            if stop.wait(max(self.interval - (time.monotonic() - began), self.interval / 10)):
                return

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # a sampler must never take the trainer down, nor die silently
            self._say(f"tracelet: a system metrics sample failed: {exc!r}")

    def _say(self, message: str) -> None:
        if not self._said:
            self._said = True
            log.warning(message)

    def _tick(self) -> None:
        rank, world = global_rank_now()
        readings = self._sample()
        self.samples += 1
        if world > 1:
            readings = [(name, value, {**context, "rank": rank}) for name, value, context in readings]
        now = time.time()
        if rank != 0:
            if not self._exchange.publish(rank, now, readings):
                self.dropped += 1
            return
        if not self._sinks:
            return
        records: list[rec.Record] = [
            rec.Scalar(name, value, None, None, context, now) for name, value, context in readings
        ]
        if world > 1:
            records += self._exchange.collect(world)
        for sink in self._sinks:
            try:
                sink.submit(records)
            except Exception as exc:
                log.warning("tracelet: system metrics could not be written: %r", exc)

    def _sample(self) -> list[Reading]:
        if self._samplers is None:
            self._samplers = (ProcessSampler(), GpuSampler())
        self._samplers[0].disk_path = self.disk_path
        process = sys.modules.get("tracelet_callbacks.sink.process")  # loaded once a writer was started
        writers = process.writer_pids() if process is not None else frozenset()
        readings = self._samplers[0].sample(exclude=writers)
        try:
            readings += self._samplers[1].sample()
        except Exception as exc:  # NVML can fail in ways no field check foresees; CPU readings stay
            log.debug("tracelet: GPU sample failed: %r", exc)
        step = _as_int(self._step)
        for _, source in self._step_sources:
            try:
                found = _as_int(source())
            except Exception:  # a step we cannot read gives no step time, nothing worse
                continue
            if found is not None and (step is None or found > step):
                step = found
        if step is not None:
            now, previous = time.monotonic(), self._last_mark
            if previous is not None and step > previous[0]:
                per_step = (now - previous[1]) / (step - previous[0])
                readings.append((system_name("step_time"), round(per_step, 6), {}))
            if previous is None or step != previous[0]:
                self._last_mark = (step, now)
        return readings


def _as_int(step: Any) -> int | None:
    try:
        return None if step is None else int(step)
    except (TypeError, ValueError):  # whatever a script passed as its step
        return None


def _process_group() -> Any:
    """``torch.distributed`` while a process group runs (never imported here), else ``None``."""
    dist = sys.modules.get("torch.distributed")
    try:
        return dist if dist is not None and dist.is_available() and dist.is_initialized() else None
    except Exception:  # a group being torn down
        return None


def global_rank_now() -> tuple[int, int]:
    """``(rank, world size)``: the process group's when one is running, else the launcher's variables."""
    if (dist := _process_group()) is not None:
        try:
            return dist.get_rank(), dist.get_world_size()
        except Exception:  # a group being torn down
            pass
    world = os.environ.get("WORLD_SIZE", "1")
    return global_rank(), int(world) if world.isdigit() else 1


class _RankExchange:
    """Samples of ranks > 0 travel to rank 0 as numbered keys of the rendezvous store."""

    def __init__(self) -> None:
        self._published = 0  # this rank's next sample number
        self._taken = 0  # how many of them rank 0 has taken (as last read)
        self._cursors: dict[int, int] = {}  # rank 0: the next sample number of each rank
        self.introduced: set[int] = set()  # ranks whose host is in the run's params
        self._host = socket.gethostname()

    @staticmethod
    def _store() -> Any:
        if (dist := _process_group()) is None:
            return None
        try:
            return dist.distributed_c10d._get_default_store()
        except Exception:  # another torch, or a group being torn down
            return None

    def publish(self, rank: int, when: float, readings: list[Reading]) -> bool:
        """Hand one sample to rank 0; ``False`` when it had to be dropped."""
        store = self._store()
        if store is None:
            return True  # not distributed yet (or any more): nothing to hand on, nothing lost
        try:
            if self._published - self._taken >= BACKLOG:
                ack = _ACK.format(rank=rank)
                if store.check([ack]):
                    self._taken = int(store.get(ack))
                if self._published - self._taken >= BACKLOG:
                    return False
            payload = {"time": when, "host": self._host, "pid": os.getpid(), "readings": readings}
            store.set(_KEY.format(rank=rank, number=self._published), json.dumps(payload))
            self._published += 1
            return True
        except Exception as exc:
            log.debug("tracelet: could not hand a system sample to rank 0: %r", exc)
            return False

    def collect(self, world: int) -> list[rec.Record]:
        """Rank 0: every sample the other ranks handed on since the last call, as records."""
        store = self._store()
        if store is None:
            return []
        records: list[rec.Record] = []
        if 0 not in self.introduced:
            self.introduced.add(0)
            records.append(rec.Params("ranks", {"0": {"host": self._host, "pid": os.getpid()}}))
        for rank in range(1, world):
            cursor = start = self._cursors.get(rank, 0)
            try:
                while store.check([key := _KEY.format(rank=rank, number=cursor)]):
                    sample = json.loads(store.get(key))
                    store.delete_key(key)
                    cursor += 1
                    records += [
                        rec.Scalar(name, value, None, None, context, sample["time"])
                        for name, value, context in sample["readings"]
                    ]
                    if rank not in self.introduced:
                        self.introduced.add(rank)
                        where = {str(rank): {"host": sample["host"], "pid": sample["pid"]}}
                        records.append(rec.Params("ranks", where))
                if cursor != start:
                    store.set(_ACK.format(rank=rank), str(cursor))
            except Exception as exc:
                log.debug("tracelet: could not take rank %d's system samples: %r", rank, exc)
            self._cursors[rank] = cursor
        return records


_monitor: SystemMonitor | None = None
_monitor_lock = threading.Lock()


def monitor(config: TraceletConfig) -> SystemMonitor | None:
    """This process's monitor (made on first call), or ``None`` when ``config`` turns sampling off."""
    global _monitor
    if not config.system_tracking_interval:
        return None
    found = _monitor
    if found is None:
        with _monitor_lock:
            if _monitor is None:
                _monitor = SystemMonitor(config.system_tracking_interval)
            found = _monitor
    # the latest run's settings: the interval is read at each wait, the disk at each sample
    found.interval = config.system_tracking_interval
    found.disk_path = _existing(config.repo_path if not config.remote_uri else ".")
    return found


def _existing(path: str) -> str:
    """``path`` or the nearest folder above it that exists (the repo may not be made yet)."""
    path = os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path
