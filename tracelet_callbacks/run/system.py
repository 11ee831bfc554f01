"""What one sample of system metrics reads: the training process (and its DataLoader workers), the
machine's memory and disk, and each visible NVIDIA GPU.

Readings are ``(name, value, context)`` triples. Those aim's UI knows (:data:`AIM_SYSTEM_METRICS`) keep
aim's ``__system__*`` names, so the run's System tab, the runs table and the charts label them
("CPU (%)"). The others would show under their raw ``__system__`` names, so they are named to read
well instead, together under ``system/`` (:func:`system_name`). aim's own collector is not used: it
runs inside the writer and so measures the writer, not the trainer.

* The process is found by pid, so the sampler can run on any thread of the trainer.
* CPU is the training process plus its children (DataLoader workers), in percent of one core: a
  trainer that keeps one core busy reads about 100.
* GPUs are read through NVML (``pip install "tracelet-callbacks[gpu]"``, imported on first use). Each
  field is read on its own, so a query a device does not support loses that field only; MIG slices
  are reported with ``{"gpu": i, "mig": j}``. Without NVML there are no GPU readings (one debug line).

>>> readings = ProcessSampler(disk_path=".").sample()
>>> sorted({name for name, _, _ in readings} & {"__system__cpu", "system/process_memory_mib"})
['__system__cpu', 'system/process_memory_mib']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["AIM_SYSTEM_METRICS", "SYSTEM_PREFIX", "GpuSampler", "ProcessSampler", "Reading", "system_name"]

log = logging.getLogger("tracelet_callbacks")

#: aim's prefix for system metrics.
SYSTEM_PREFIX = "__system__"
#: The system metrics aim's UI knows by name: in a run's System tab, labelled in tables and charts.
AIM_SYSTEM_METRICS = frozenset(
    {"cpu", "p_memory_percent", "memory_percent", "disk_percent"}
    | {"gpu", "gpu_memory_percent", "gpu_power_watts", "gpu_temp"}
)
# ours that aim's UI has no label for: a readable name, with the unit, rather than a raw __system__ one
_OWN_NAMES = {
    "p_memory_rss": "system/process_memory_mib",
    "p_threads": "system/process_threads",
    "gpu_memory_used": "system/gpu_memory_used_mib",
    "gpu_memory_total": "system/gpu_memory_total_mib",
    "step_time": "system/step_time_s",
}


def system_name(reading: str) -> str:
    """The series name of one reading: aim's for what its UI knows, else ours under ``system/``.

    >>> system_name("cpu"), system_name("step_time")
    ('__system__cpu', 'system/step_time_s')
    """
    return SYSTEM_PREFIX + reading if reading in AIM_SYSTEM_METRICS else _OWN_NAMES[reading]


Reading = tuple[str, float, dict]
_MIB = 1024 * 1024


class ProcessSampler:
    """CPU, memory and threads of process ``pid`` and its children; the machine's memory and disk.

    Args:
        pid: the process to measure (default: this one).
        disk_path: a folder on the disk to report (the repo's: the one a full disk would stop).
    """

    def __init__(self, pid: int | None = None, disk_path: str = ".") -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process(pid or os.getpid())
        self._children: dict[int, Any] = {}
        self.disk_path = disk_path
        self._process.cpu_percent(None)  # the first reading of a process is a baseline, always 0

    def sample(self, exclude: frozenset[int] = frozenset()) -> list[Reading]:
        """One reading of each metric; children in ``exclude`` (our writer) and theirs are left out."""
        psutil = self._psutil
        readings: list[Reading] = []
        processes = [self._process, *self._current_children(exclude)]
        cpu = rss = threads = 0.0
        for process in processes:
            try:
                with process.oneshot():
                    cpu += process.cpu_percent(None)
                    rss += process.memory_info().rss
                    threads += process.num_threads()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker that ended between listing and reading
        memory = psutil.virtual_memory()
        readings += [
            (system_name("cpu"), round(cpu, 3), {}),
            (system_name("p_memory_rss"), round(rss / _MIB, 3), {}),
            (system_name("p_memory_percent"), round(rss * 100 / memory.total, 4), {}),
            (system_name("p_threads"), threads, {}),
            (system_name("memory_percent"), round(memory.percent, 3), {}),
        ]
        try:
            readings.append((system_name("disk_percent"), psutil.disk_usage(self.disk_path).percent, {}))
        except OSError:  # the folder was removed: the other readings still count
            pass
        return readings

    def _current_children(self, exclude: frozenset[int]) -> list[Any]:
        """The children now, each kept between samples so its CPU reading covers the interval."""
        kept = {}
        for pid in _descendants(self._process, exclude, self._psutil):
            known = self._children.get(pid)
            if known is None:
                try:
                    known = self._psutil.Process(pid)
                    known.cpu_percent(None)  # its baseline: counted from the next sample on
                except self._psutil.Error:
                    continue
            kept[pid] = known
        self._children = kept
        return list(kept.values())


def _descendants(process: Any, exclude: frozenset[int], psutil: Any) -> list[int]:
    """The pids below ``process``, leaving out those in ``exclude`` and everything below them.

    On Linux each thread's ``/proc/<pid>/task/<tid>/children`` is read, a few files per process in the
    tree. psutil's ``children()`` reads every process of the machine instead, and each read hands the
    GIL back and forth: with a trainer's main thread busy in Python, one such scan of 70 processes took
    1.2 s here against 0.07 s for this walk.
    """
    found: list[int] = []
    todo = [process.pid]
    while todo:
        children = _children_of(todo.pop())
        if children is None:  # no such files (another OS, an old kernel): psutil's way
            try:
                below = process.children(recursive=True)
                parents = {child.pid: child.ppid() for child in below} if exclude else {}
            except psutil.Error:
                return []
            return [child.pid for child in below if not _descends(child.pid, parents, exclude)]
        children = [pid for pid in children if pid not in exclude]
        found += children
        todo += children
    return found


def _children_of(pid: int) -> list[int] | None:
    """Direct children of ``pid`` from procfs; ``[]`` for a process that is gone, ``None`` without procfs."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None if not os.path.isdir("/proc/self/task") else []
    except OSError:
        return []
    children: list[int] = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", "rb") as handle:
                children += [int(child) for child in handle.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{thread}"):
                continue  # a thread that ended meanwhile
            return None  # procfs without the children file
        except (OSError, ValueError):
            continue
    return children


def _descends(pid: int, parents: dict[int, int], ancestors: frozenset[int]) -> bool:
    while pid in parents:
        if pid in ancestors:
            return True
        pid = parents[pid]
    return pid in ancestors


# (reading name, how to read it from NVML, how to turn the answer into the value we store)
_GPU_FIELDS: tuple[tuple[str, str, Callable[[Any], float]], ...] = (
    ("gpu", "nvmlDeviceGetUtilizationRates", lambda rates: float(rates.gpu)),
    ("gpu_memory_used", "nvmlDeviceGetMemoryInfo", lambda mem: round(mem.used / _MIB, 3)),
    ("gpu_memory_total", "nvmlDeviceGetMemoryInfo", lambda mem: round(mem.total / _MIB, 3)),
    ("gpu_memory_percent", "nvmlDeviceGetMemoryInfo", lambda mem: round(mem.used * 100 / mem.total, 4)),
    ("gpu_power_watts", "nvmlDeviceGetPowerUsage", lambda milliwatts: milliwatts / 1000),
    ("gpu_temp", "nvmlDeviceGetTemperature", float),
)


class GpuSampler:
    """Every NVIDIA GPU this process may use, read through NVML, each field on its own.

    Args:
        nvml: the NVML module (``pynvml``); found and imported when ``None``.
        environ: the environment that says which devices are visible (``CUDA_VISIBLE_DEVICES``) and
            whether another rank on this host reports them already (``LOCAL_RANK``).
    """

    def __init__(self, nvml: Any = None, environ: dict[str, str] | None = None) -> None:
        self._nvml = nvml
        self._environ = os.environ if environ is None else environ
        self._devices: list[tuple[dict, Any]] | None = None  # (context, handle), found on first sample
        self._failed: set[tuple[str, str]] = set()

    def sample(self) -> list[Reading]:
        if self._devices is None:
            self._devices = self._find_devices()
        readings: list[Reading] = []
        for context, handle in self._devices:
            answers: dict[str, Any] = {}
            for name, query, convert in _GPU_FIELDS:
                if query not in answers:
                    try:
                        answers[query] = self._query(query, handle)
                    except Exception as exc:  # unsupported here (MIG, a passive card): its fields only
                        answers[query] = exc
                answer = answers[query]
                try:
                    if isinstance(answer, Exception):
                        raise answer
                    readings.append((system_name(name), convert(answer), context))
                except Exception as exc:
                    self._note_failure(context, name, exc)
        return readings

    def _query(self, query: str, handle: Any) -> Any:
        nvml = self._nvml
        if query == "nvmlDeviceGetTemperature":
            return nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        return getattr(nvml, query)(handle)

    def _note_failure(self, context: dict, name: str, exc: Exception) -> None:
        key = (repr(sorted(context.items())), name)
        if key not in self._failed:
            self._failed.add(key)
            log.debug("tracelet: GPU %s gives no %s: %r", context, name, exc)

    def _find_devices(self) -> list[tuple[dict, Any]]:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                log.debug('tracelet: no GPU metrics (pip install "tracelet-callbacks[gpu]" for NVML)')
                return []
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:  # no driver, no device
            log.debug("tracelet: no GPU metrics: NVML did not start (%r)", exc)
            return []
        visible = self._visible(nvml, count)
        devices: list[tuple[dict, Any]] = []
        for index in visible:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                log.debug("tracelet: GPU %d cannot be read: %r", index, exc)
                continue
            slices = self._mig_slices(nvml, handle)
            if slices:
                devices += [({"gpu": index, "mig": number}, part) for number, part in slices]
            else:
                devices.append(({"gpu": index}, handle))
        return devices

    def _visible(self, nvml: Any, count: int) -> list[int]:
        """NVML indexes of the devices ``CUDA_VISIBLE_DEVICES`` lets this process use.

        With every device visible to every rank of a host, only local rank 0 reports them, so one GPU
        is not drawn once per rank.
        """
        listed = self._environ.get("CUDA_VISIBLE_DEVICES")
        if listed is None:
            local_rank = self._environ.get("LOCAL_RANK", "0")
            return list(range(count)) if local_rank in ("", "0") else []
        chosen: list[int] = []
        uuids: dict[str, int] | None = None
        for item in (part.strip() for part in listed.split(",")):
            if not item:
                continue
            if item.lstrip("-").isdigit():
                if not 0 <= int(item) < count:
                    break  # CUDA stops at the first invalid entry
                chosen.append(int(item))
                continue
            if uuids is None:
                uuids = {}
                for index in range(count):
                    try:
                        uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))
                        uuids[uuid.decode() if isinstance(uuid, bytes) else str(uuid)] = index
                    except Exception:
                        continue
            match = [index for uuid, index in uuids.items() if uuid.startswith(item) or item.startswith(uuid)]
            if not match:
                break  # an unknown id (a MIG-... one among them) ends the list, as in CUDA
            chosen.append(match[0])
        return sorted(set(chosen))

    @staticmethod
    def _mig_slices(nvml: Any, handle: Any) -> list[tuple[int, Any]]:
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
            if not current:
                return []
            slices = []
            for number in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    slices.append((number, nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, number)))
                except Exception:
                    continue  # an empty slot
            return slices
        except Exception:  # not a MIG-capable device, or an older driver
            return []
