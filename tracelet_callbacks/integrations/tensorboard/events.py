"""Reading TensorBoard event files without TensorFlow: the records, the run folders, the order a
folder's files were written in, and what a summary value holds (PNG images, WAV clips, tensors).

TensorBoard's own protobuf definitions decode the events; the records around them are read here
rather than through TensorBoard's compat reader, which can start only at the beginning of a file and
checks every record's checksum in pure Python. Each record's header checksum is checked (a damaged
length could otherwise send the reader anywhere); data checksums are not (see
docs/migrate-from-tensorboard.md): a damaged record is caught when it does not decode.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import wave
from collections.abc import Iterator
from typing import Any

from ...core.records import Scalar

__all__ = [
    "EVENT_FILE",
    "TEXT_SUFFIX",
    "Damage",
    "WallTimeSink",
    "decode_png",
    "decode_wav",
    "find_run_folders",
    "hparams_of",
    "in_written_order",
    "live_tag",
    "read_records",
    "tensor_number",
    "written_at",
    "written_for_parent",
]

EVENT_FILE = re.compile(r"events\.out\.tfevents\.")
_HEADER = struct.Struct("<QI")
#: ``SummaryWriter.add_text`` stores ``<tag>/text_summary``.
TEXT_SUFFIX = "/text_summary"


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


def find_run_folders(logdir: str) -> list[str]:
    """Every folder under ``logdir`` (itself included) holding event files, sorted."""
    found = []
    for folder, _dirs, files in os.walk(logdir):
        if any(EVENT_FILE.search(name) for name in files):
            found.append(os.path.abspath(folder))
    return sorted(found)


def written_at(path: str) -> float | None:
    """When the writer of the event file ``path`` began: the wall time of its first record (the file
    version every writer starts with); ``None`` while that cannot be read (not written yet, damaged,
    not an event file). It orders the files of a folder, which names alone do not within a second.

    >>> written_at("/nonexistent/events.out.tfevents.1700000000.host") is None
    True
    """
    from tensorboard.compat.proto import event_pb2

    if not os.path.isfile(path):  # a named pipe would block the open
        return None
    try:
        for _end, data in read_records(path):
            return event_pb2.Event.FromString(data).wall_time
    except Exception:
        return None
    return None


def in_written_order(paths: list[str], known: dict[str, float]) -> list[str]:
    """``paths`` (event files of one run), the one whose writer began first first (:func:`written_at`;
    a file not readable yet by the seconds in its name). ``known`` keeps each file's time once read.

    >>> in_written_order(["a/events.out.tfevents.1700000009.x", "a/events.out.tfevents.1700000001.y"], {})
    ['a/events.out.tfevents.1700000001.y', 'a/events.out.tfevents.1700000009.x']
    """
    if len(paths) < 2:
        return paths
    order = {}
    for path in paths:
        when = known.get(path)
        if when is None:
            when = written_at(path)
            if when is None:
                stamp = re.search(r"tfevents\.(\d+)", os.path.basename(path))
                when = float(stamp[1]) if stamp else 0.0
            else:
                known[path] = when  # a file's first record never changes
        order[path] = when
    return sorted(paths, key=lambda path: (order[path], path))


def written_for_parent(folder: str, owner: str) -> bool:
    """Whether ``folder`` is one that ``SummaryWriter`` made for the run in ``owner`` (an ancestor):
    ``add_hparams``' ``<timestamp>/``, or ``add_scalars``' ``<tag>_<key>/`` (its first scalar's tag
    says which; a key holding ``/`` makes a deeper folder)."""
    from tensorboard.compat.proto import event_pb2

    name = os.path.relpath(folder, owner)
    if re.fullmatch(r"\d+(\.\d+)?", name):
        return True
    for path in sorted(os.path.join(folder, f) for f in os.listdir(folder) if EVENT_FILE.search(f)):
        try:
            for _end, data in read_records(path):
                event = event_pb2.Event.FromString(data)
                for value in event.summary.value:
                    return name.startswith(value.tag.replace("/", "_") + "_")
        except Exception:  # damaged: a run of its own, whose damage the import will name
            return False
    return False


def tensor_number(tensor: Any) -> float:
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    import numpy as np

    dtype = np.float64 if tensor.dtype == 2 else np.float32  # DT_DOUBLE is 2
    return float(np.frombuffer(tensor.tensor_content, dtype=dtype)[0])


def decode_png(data: bytes) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGBA") if image.mode == "P" else image)
    return array[:, :, None] if array.ndim == 2 else array


def decode_wav(data: bytes) -> tuple[Any, int]:
    import numpy as np

    with wave.open(io.BytesIO(data), "rb") as clip:
        frames = clip.readframes(clip.getnframes())
        samples = np.frombuffer(frames, dtype="<i2")
        channels = clip.getnchannels()
        rate = clip.getframerate()
    return (samples.reshape(-1, channels).T if channels > 1 else samples), rate


def live_tag(tag: str, child: str) -> str:
    """The live tag of a scalar from a child folder: ``add_scalars("loss", {"train": x})`` writes
    ``loss`` into ``loss_train/``; live, it is ``loss/train``. Other children's tags stay."""
    if child:
        prefix = tag.replace("/", "_") + "_"
        if child.startswith(prefix):
            return f"{tag}/{child[len(prefix) :]}"
    return tag


def hparams_of(value: Any) -> dict[str, Any] | None:
    """The hyperparameters ``add_hparams`` was given, from its HParams plugin value (``None`` for the
    plugin's other values: the experiment description and the session's end)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    if data.WhichOneof("data") != "session_start_info":
        return None
    params = {}
    for name, item in data.session_start_info.hparams.items():
        kind = item.WhichOneof("kind")
        found = getattr(item, kind) if kind else None
        if kind == "number_value" and float(found).is_integer():
            found = int(found)  # TensorBoard keeps every number as a double: 32 was given, not 32.0
        params[name] = found
    return params


class WallTimeSink:
    """The sink an import's translator writes to: every record carries its event's wall time
    (``wall_time``, set before each event), not the time of the import."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._add = sink.add
        self.wall_time: float | None = None

    def add(self, record: Scalar) -> None:
        # once per imported scalar: a tuple built directly costs a third of NamedTuple._replace
        self._add(tuple.__new__(Scalar, (*record[:5], self.wall_time)))

    def submit(self, records: Any) -> None:
        stamped = []
        for record in records:
            if type(record) is Scalar:
                record = record._replace(timestamp=self.wall_time)
            elif hasattr(record, "timestamp") and self.wall_time is not None:
                record = dataclasses.replace(record, timestamp=self.wall_time)
            stamped.append(record)
        self._sink.submit(stamped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sink, name)
