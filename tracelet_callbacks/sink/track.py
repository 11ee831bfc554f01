"""Turns one record into calls on an open ``aim.Run``: a value as the aim object that shows it (a
``Distribution``, ``Image``, ``Text``, ``Audio``, ``LogLine``), params, tags, the run's name and
artifacts. Plain numbers in bulk go through :mod:`~tracelet_callbacks.sink.series` instead.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from ..core import records as rec
from ..errors import TraceletError

__all__ = ["copy_start", "write_record"]


def write_record(run: Any, record: rec.Record) -> None:
    """Store one record (anything but :class:`~tracelet_callbacks.core.records.Resumed`, which
    :class:`~tracelet_callbacks.sink.run.AimSink` handles) on an open ``aim.Run``."""
    import aim

    if isinstance(record, rec.Scalar):
        run.track(
            record.value, name=record.name, step=record.step, epoch=record.epoch, context=record.context
        )
    elif isinstance(record, rec.Histogram):
        _track_at(run, aim.Distribution(hist=record.counts, bin_range=record.bin_range), record)
    elif isinstance(record, rec.Images):
        pictures = [_aim_image(image) for image in record.images]
        _track_at(run, pictures[0] if len(pictures) == 1 else pictures, record)
    elif isinstance(record, rec.Text):
        _track_at(run, aim.Text(record.text), record)
    elif isinstance(record, rec.LogLine):
        from aim.ext.resource.log import LogLine

        _track_at(run, LogLine(record.text), record, name="logs")
    elif isinstance(record, rec.Audio):
        clip = aim.Audio(record.wav, format="wav", rate=record.sample_rate, caption=record.caption)
        _track_at(run, clip, record)
    elif isinstance(record, rec.Native):
        _track_at(run, record.value, record)
    elif isinstance(record, rec.Params):
        current = run.get(record.key) if record.merge else None
        run[record.key] = _deep_merge(current, record.values) if isinstance(current, dict) else record.values
    elif isinstance(record, rec.Tags):
        for tag in record.add:
            run.add_tag(tag)
        for tag in record.remove:
            run.remove_tag(tag)
    elif isinstance(record, rec.RunInfo):
        if record.name is not None:
            run.name = record.name
        if record.experiment is not None:
            run.experiment = record.experiment
        if record.description is not None:
            run.description = record.description
    elif isinstance(record, rec.Artifact):
        _store_artifact(run, record)
    else:
        raise TypeError(f"unknown record type {type(record).__name__}")


def _track_at(run: Any, value: Any, record: Any, name: str | None = None) -> None:
    """``run.track`` at the time the value was logged, not the time it is written (the writer may
    write it seconds later; an imported event keeps its own wall time)."""
    tracker = getattr(run, "_tracker", None)
    where = {"name": name or record.name, "step": record.step, "epoch": record.epoch}
    if tracker is not None and hasattr(tracker, "_track"):  # aim 3.x: pinned by aim<4
        tracker._track(value, record.timestamp, context=record.context, **where)
    else:
        run.track(value, context=record.context, **where)


def _store_artifact(run: Any, record: rec.Artifact) -> None:
    uri = run.artifacts_uri or ""
    if uri.startswith("file://") and record.size is not None:
        # copied here, as many bytes as the file had when it was logged (aim's copy reads to the
        # end of a file that may still be growing), then entered as aim's log_artifact does
        from aim.sdk.objects.artifact import Artifact

        stored = os.path.join(uri[len("file://") :], record.name)
        os.makedirs(os.path.dirname(stored), exist_ok=True)
        copy_start(record.path, stored, record.size)
        run.meta_run_tree.subtree("artifacts")[record.name] = Artifact(record.path, uri=uri, name=record.name)
        return
    # aim's log_artifact is wrapped in its "noexcept" guard, which only logs in safe mode: block,
    # then check that the copy landed where a file:// store keeps it.
    run.log_artifact(record.path, name=record.name, block=True)
    if uri.startswith("file://"):
        stored = os.path.join(uri[len("file://") :], record.name)
        if not os.path.isfile(stored):
            raise TraceletError(f"tracelet: artifact {record.name!r} was not stored at {stored}")


def copy_start(source: str, target: str, size: int) -> None:
    """Copy the first ``size`` bytes of ``source`` (all of it, if it has shrunk since) to ``target``."""
    left = size
    with open(source, "rb") as reading, open(target, "wb") as writing:
        while left > 0 and (chunk := reading.read(min(left, 1 << 20))):
            writing.write(chunk)
            left -= len(chunk)
    shutil.copymode(source, target)


def _aim_image(image: rec.ImageData) -> Any:
    import aim
    from PIL import Image as PILImage

    return aim.Image(PILImage.fromarray(image.pixels), caption=image.caption)


def _deep_merge(old: dict, new: Any) -> Any:
    if not isinstance(new, dict):
        return new
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(merged.get(key), dict) else value
    return merged
