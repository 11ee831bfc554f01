"""TensorBoard event files written earlier, imported into AIM runs as if they had been logged live.

Each folder under the log directory that holds event files is one TensorBoard run and becomes one
AIM run, named after its path relative to the log directory and tagged ``source=tensorboard``. Its
events go through the same translator as ``TraceletWriter.add_*`` (so ``train/loss`` becomes
``loss`` in ``{"subset": "train"}``), with each value's own step and wall time. What
``SummaryWriter`` puts in child folders comes back to its parent run under the live names:
``add_scalars("loss", {"train": x})`` writes ``loss`` into ``<run>/loss_train/`` and is imported as
``loss/train``; ``add_hparams`` writes into ``<run>/<timestamp>/`` and is imported as the parent's
params and metrics.

**Idempotent and incremental.** The run of a folder is found again by the folder's identity (its
real path, hashed), stored in the run param ``tensorboard`` with how far each event file was read;
a second import reads nothing twice, and a grown file is read from where the last import stopped.

**Reading.** TensorBoard's own protobuf definitions decode the events; the records around them are
read here rather than through TensorBoard's compat reader, which can start only at the beginning of
a file and checks every record's checksum in pure Python. Each record's header checksum is checked
(a damaged length could otherwise send the reader anywhere); a record that does not decode, or a
file cut short (a job killed mid-write), ends that file: everything before it is imported and one
warning names the file and the byte offset. No TensorFlow is needed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import time
import warnings
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...config import TraceletConfig
from ...core import records as rec
from ...core.translator import Translator
from ...errors import TraceletWarning
from ...run.experiment import Experiment, find_run

__all__ = ["Damage", "ImportReport", "TensorBoardImporter", "find_run_folders"]

_EVENT_FILE = re.compile(r"events\.out\.tfevents\.")
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_TEXT_SUFFIX = "/text_summary"  # SummaryWriter.add_text stores "<tag>/text_summary"


class Damage(Exception):
    """An event file cannot be read past ``offset``."""

    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(f"{path}: {why} at byte {offset}")
        self.path, self.offset, self.why = path, offset, why


def read_records(path: str, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """``(offset after the record, record bytes)`` for each whole record from ``offset`` on, to a
    clean end; :class:`Damage` for a record cut short or a header that fails its checksum."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(path, "rb", buffering=1 << 20) as stream:
        stream.seek(offset)
        while True:
            header = stream.read(12)
            if not header:
                return
            if len(header) < 12:
                raise Damage(path, offset, "a record cut short")
            length, crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != crc:
                raise Damage(path, offset, "a record header that fails its checksum")
            data = stream.read(length)
            footer = stream.read(4)
            if len(data) < length or len(footer) < 4:
                raise Damage(path, offset, "a record cut short")
            offset += 16 + length
            yield offset, data


@dataclass
class ImportReport:
    """What an import did, for the progress bar and the command's summary line."""

    runs: dict[str, str] = field(default_factory=dict)  # run folder -> run hash
    files: int = 0
    values: int = 0
    bytes_read: int = 0
    damaged: list[Damage] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # summary kind -> values left out
    seconds: float = 0.0


def find_run_folders(logdir: str) -> list[str]:
    """Every folder under ``logdir`` (itself included) holding event files, sorted."""
    found = []
    for folder, _dirs, files in os.walk(logdir):
        if any(_EVENT_FILE.search(name) for name in files):
            found.append(os.path.abspath(folder))
    return sorted(found)


def _identity(folder: str) -> str:
    return hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:24]


class _Stamped:
    """The sink seen by the import's translator: every record carries its event's wall time."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.wall_time: float | None = None

    def add(self, record: rec.Scalar) -> None:
        self._sink.add(record._replace(timestamp=self.wall_time))

    def submit(self, records: Any) -> None:
        stamped = []
        for record in records:
            if type(record) is rec.Scalar:
                record = record._replace(timestamp=self.wall_time)
            elif hasattr(record, "timestamp") and self.wall_time is not None:
                record = _with_time(record, self.wall_time)
            stamped.append(record)
        self._sink.submit(stamped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)


def _with_time(record: Any, wall_time: float) -> Any:
    import dataclasses

    return dataclasses.replace(record, timestamp=wall_time)


class TensorBoardImporter:
    """Imports the TensorBoard runs under ``logdir`` into AIM (see the module docstring).

    Args:
        logdir: the folder given to ``SummaryWriter`` (or one above several of them).
        config: where and how to write: repo or server, experiment, routing.
        on_progress: called with the report after each chunk of events (the progress bar).
    """

    def __init__(
        self,
        logdir: str,
        config: TraceletConfig,
        on_progress: Callable[[ImportReport], None] | None = None,
    ) -> None:
        self.logdir = os.path.abspath(logdir)
        self.config = config
        self.report = ImportReport()
        self._on_progress = on_progress
        self._open: dict[str, tuple[Experiment, Translator, _Stamped, dict[str, int]]] = {}
        self._warned_kinds: set[str] = set()

    # -- the folders and their runs ------------------------------------------------------------------

    def plan(self) -> dict[str, list[tuple[str, str]]]:
        """run folder -> [(event file, what it is relative to the run folder)] for every event file,
        child folders of ``add_scalars`` / ``add_hparams`` under their parent's run."""
        folders = find_run_folders(self.logdir)
        runs: dict[str, list[tuple[str, str]]] = {}
        for folder in folders:
            parent = os.path.dirname(folder)
            owner = (
                parent if folder != self.logdir and parent in runs and _written_for_parent(folder) else folder
            )
            relative = os.path.relpath(folder, owner)
            for name in sorted(name for name in os.listdir(folder) if _EVENT_FILE.search(name)):
                entry = (os.path.join(folder, name), os.path.normpath(os.path.join(relative, name)))
                runs.setdefault(owner, []).append(entry)
        return runs

    def _run_of(self, folder: str) -> tuple[Experiment, Translator, _Stamped, dict[str, int]]:
        found = self._open.get(folder)
        if found is not None:
            return found
        identity = _identity(folder)
        name = os.path.relpath(folder, self.logdir)
        name = os.path.basename(self.logdir) if name == "." else name
        existing = _find_run(self.config, identity)
        settings = self.config.replace(
            run_hash=existing,
            run_name=name if existing is None else None,
            tags={"source": "tensorboard"} if existing is None else None,
            system_tracking_interval=None,
            capture_terminal_logs=False,
            watch=None,
        )
        exp = Experiment(settings).open()
        base = exp.translator
        stamped = _Stamped(base.sink)
        translator = Translator(stamped, routing=settings.routing, strict=False)
        done: dict[str, int] = {}
        if existing is not None:
            try:
                done = dict((exp.run.get("tensorboard") or {}).get("files") or {})
            except Exception:
                done = {}
        else:
            translator.params({"folder": os.path.realpath(folder), "identity": identity}, key="tensorboard")
        self.report.runs[folder] = exp.hash
        self._open[folder] = found = (exp, translator, stamped, done)
        return found

    # -- one pass ------------------------------------------------------------------------------------

    def run_once(self, *, final: bool = True) -> ImportReport:
        """Import what is new since the last pass. ``final``: a file cut short is damage (warned);
        otherwise (``--follow``) it may still be being written, and is read again next pass."""
        started = time.perf_counter()
        for folder, files in self.plan().items():
            exp, translator, stamped, done = self._run_of(folder)
            changed = False
            for path, relative in files:
                start = done.get(relative, 0)
                try:
                    size = os.path.getsize(path)
                except OSError:
                    continue
                if size <= start:
                    continue
                end = self._import_file(path, relative, start, translator, stamped, final)
                if end > start:
                    done[relative] = end
                    changed = True
                    self.report.files += 1
            if changed:
                translator.params({"files": dict(done)}, key="tensorboard")
            exp.flush()
        self.report.seconds += time.perf_counter() - started
        return self.report

    def close(self) -> None:
        """Close every run (flushed, indexed: queryable at once)."""
        for exp, *_ in self._open.values():
            exp.close("finished")
        self._open.clear()

    def _import_file(
        self, path: str, relative: str, start: int, translator: Translator, stamped: _Stamped, final: bool
    ) -> int:
        from tensorboard.compat.proto import event_pb2

        child = os.path.dirname(relative)  # "" for the run's own files, "loss_train" for add_scalars'
        offset = start
        try:
            for end, data in read_records(path, start):
                try:
                    event = event_pb2.Event.FromString(data)
                except Exception as exc:
                    raise Damage(path, offset, f"a record that does not decode ({exc})") from None
                if event.HasField("summary"):
                    stamped.wall_time = event.wall_time
                    for value in event.summary.value:
                        self._value(translator, value, event.step, child)
                self.report.bytes_read += end - offset
                offset = end
                if self._on_progress is not None and self.report.values % 5000 == 0:
                    self._on_progress(self.report)
        except Damage as damage:
            cut_short = damage.why == "a record cut short"
            if final or not cut_short:
                self.report.damaged.append(damage)
                warnings.warn(
                    f"tracelet: {path} is damaged ({damage.why} at byte {damage.offset}); everything "
                    "before it was imported",
                    TraceletWarning,
                    stacklevel=2,
                )
        return offset

    # -- one summary value ---------------------------------------------------------------------------

    def _value(self, t: Translator, value: Any, step: int, child: str) -> None:
        tag = value.tag
        plugin = value.metadata.plugin_data.plugin_name if value.HasField("metadata") else ""
        kind = value.WhichOneof("value")
        self.report.values += 1
        if plugin == "hparams":
            self._hparams(t, value)
            return
        if kind == "simple_value" or (kind == "tensor" and plugin == "scalars"):
            number = value.simple_value if kind == "simple_value" else _tensor_number(value.tensor)
            t.scalar(_scalar_tag(tag, child), number, step)
        elif kind == "histo":
            h = value.histo
            t.histogram_raw(tag, h.min, h.max, list(h.bucket_limit), list(h.bucket), step)
        elif kind == "image":
            t.image(tag, _decode_png(value.image.encoded_image_string), step, "HWC")
        elif kind == "audio":
            samples, rate = _decode_wav(value.audio.encoded_audio_string)
            t.audio(tag, samples, step, rate)
        elif kind == "tensor" and plugin == "text":
            text = b"\n".join(value.tensor.string_val).decode("utf-8", "replace")
            t.text(tag[: -len(_TEXT_SUFFIX)] if tag.endswith(_TEXT_SUFFIX) else tag, text, step)
        else:
            what = plugin or kind or "empty value"
            self.report.values -= 1
            self.report.skipped[what] = self.report.skipped.get(what, 0) + 1
            if what not in self._warned_kinds:
                self._warned_kinds.add(what)
                t.notice(f"TensorBoard {what!r} summaries", "AIM has no matching object type; not imported")

    @staticmethod
    def _hparams(t: Translator, value: Any) -> None:
        from tensorboard.plugins.hparams import plugin_data_pb2

        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        if data.WhichOneof("data") != "session_start_info":
            return  # the experiment description and the session end say nothing add_hparams was given
        params = {}
        for name, item in data.session_start_info.hparams.items():
            kind = item.WhichOneof("kind")
            found = getattr(item, kind) if kind else None
            if kind == "number_value" and float(found).is_integer():
                found = int(found)  # TensorBoard keeps every number as a double: 32, not 32.0, was given
            params[name] = found
        t.params(params)


def _written_for_parent(folder: str) -> bool:
    """Whether ``folder`` is one that ``SummaryWriter`` made for its parent's run: ``add_hparams``'
    ``<timestamp>/``, or ``add_scalars``' ``<tag>_<key>/`` (its first scalar's tag says which)."""
    from tensorboard.compat.proto import event_pb2

    name = os.path.basename(folder)
    if re.fullmatch(r"\d+(\.\d+)?", name):
        return True
    for path in sorted(os.path.join(folder, f) for f in os.listdir(folder) if _EVENT_FILE.search(f)):
        try:
            for _end, data in read_records(path):
                event = event_pb2.Event.FromString(data)
                for value in event.summary.value:
                    return name.startswith(value.tag.replace("/", "_") + "_")
        except Exception:  # damaged: a run of its own, whose damage the import will name
            return False
    return False


def _scalar_tag(tag: str, child: str) -> str:
    """The live tag of a scalar from a child folder: ``add_scalars("loss", {"train": x})`` writes
    ``loss`` into ``loss_train/``; live, it is ``loss/train``. Other children's tags stay."""
    if child and "/" not in child:
        prefix = tag.replace("/", "_") + "_"
        if child.startswith(prefix):
            return f"{tag}/{child[len(prefix) :]}"
    return tag


def _tensor_number(tensor: Any) -> float:
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    import numpy as np

    dtype = np.float64 if tensor.dtype == 2 else np.float32  # DT_DOUBLE is 2
    return float(np.frombuffer(tensor.tensor_content, dtype=dtype)[0])


def _decode_png(data: bytes) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGBA") if image.mode == "P" else image)
    return array[:, :, None] if array.ndim == 2 else array


def _decode_wav(data: bytes) -> tuple[Any, int]:
    import numpy as np

    with wave.open(io.BytesIO(data), "rb") as clip:
        frames = clip.readframes(clip.getnframes())
        samples = np.frombuffer(frames, dtype="<i2")
        channels = clip.getnchannels()
        rate = clip.getframerate()
    return (samples.reshape(-1, channels).T if channels > 1 else samples), rate


def _find_run(config: TraceletConfig, identity: str) -> str | None:
    """The hash of the run an earlier import made for the folder ``identity``, if any."""
    return find_run(config, ("tensorboard", "identity"), identity)
