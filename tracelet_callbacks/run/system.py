"""What one sample of system metrics reads: the training process (and its DataLoader workers), the
machine's memory and disk, and each visible NVIDIA GPU.

Readings are ``(name, value, context)`` triples under aim's ``__system__*`` names, so the run's System
tab and the runs table show them. aim's own collector is not used: it runs inside the writer and so
measures the writer, not the trainer.

* The process is found by pid, so the sampler can run on any thread of the trainer.
* CPU is the training process plus its children (DataLoader workers), in percent of one core: a
  trainer that keeps one core busy reads about 100.
* GPUs are read through NVML (``pip install "tracelet-callbacks[gpu]"``, imported on first use). Each
  field is read on its own, so a query a device does not support loses that field only; MIG slices
  are reported with ``{"gpu": i, "mig": j}``. Without NVML there are no GPU readings (one debug line).

>>> readings = ProcessSampler(disk_path=".").sample()
>>> sorted({name for name, _, _ in readings} & {"__system__cpu", "__system__p_memory_rss"})
['__system__cpu', '__system__p_memory_rss']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["SYSTEM_PREFIX", "GpuSampler", "ProcessSampler", "Reading"]

log = logging.getLogger("tracelet_callbacks")

#: aim's prefix for system metrics: its UI puts these in the System tab.
SYSTEM_PREFIX = "__system__"
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
            (SYSTEM_PREFIX + "cpu", round(cpu, 3), {}),
            (SYSTEM_PREFIX + "p_memory_rss", round(rss / _MIB, 3), {}),
            (SYSTEM_PREFIX + "p_memory_percent", round(rss * 100 / memory.total, 4), {}),
            (SYSTEM_PREFIX + "p_threads", threads, {}),
            (SYSTEM_PREFIX + "memory_percent", round(memory.percent, 3), {}),
        ]
        try:
            readings.append((SYSTEM_PREFIX + "disk_percent", psutil.disk_usage(self.disk_path).percent, {}))
        except OSError:  # the folder was removed: the other readings still count
            pass
        return readings

    def _current_children(self, exclude: frozenset[int]) -> list[Any]:
        """The children now, each kept between samples so its CPU reading covers the interval."""
        try:
            now = {child.pid: child for child in self._process.children(recursive=True)}
            parents = {pid: child.ppid() for pid, child in now.items()} if exclude else {}
        except self._psutil.Error:
            return []
        kept = {}
        for pid, child in now.items():
            if exclude and _descends(pid, parents, exclude):
                continue
            known = self._children.get(pid)
            if known is None:
                known = child
                try:
                    known.cpu_percent(None)  # its baseline: counted from the next sample on
                except self._psutil.Error:
                    continue
            kept[pid] = known
        self._children = kept
        return list(kept.values())


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
                    readings.append((SYSTEM_PREFIX + name, convert(answer), context))
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
