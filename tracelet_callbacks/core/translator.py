"""The translation core: framework events in, records out to a sink.

Adapters call these methods with what the framework gave them (a tag and a value, a params object);
the translator routes the tag, converts the value, applies the skip-or-raise policy once, and hands
records to the sink. It never imports aim or torch.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import TraceletError, TraceletValueError, TraceletWarning, WarnOnce
from . import records as rec
from .params import redact, redact_text, scrubbed_config, to_params
from .routing import RoutingTable, make_table
from .values import (
    STEP_LIMIT,
    Unsupported,
    audio_to_wav,
    draw_boxes,
    figure_to_pixels,
    histogram_from_buckets,
    histogram_from_values,
    image_to_pixels,
    images_to_pixels,
    to_epoch,
    to_scalar,
    to_step,
    to_value,
)

__all__ = ["EPOCH_KEY", "Translator", "artifact_names"]

#: A key in a dict of metrics that is the epoch of all of them (Lightning's ``log_metrics``, HF's
#: ``on_log``, accelerate's ``log``), passed as AIM's epoch and never a series of its own.
EPOCH_KEY = "epoch"

_new_scalar = tuple.__new__  # builds a Scalar without its generated (Python-level) __new__
_Scalar = rec.Scalar
_SKIPPED = object()  # what _convert returns for a value that cannot be stored
_now = time.time

#: How many distinct tags keep their route cached (a tag per step would otherwise grow it forever).
_ROUTE_CACHE = 65536

log = logging.getLogger("tracelet_callbacks")


class Translator:
    """Routes, converts and submits; one per run.

    Args:
        sink: receives the records (a :class:`~tracelet_callbacks.sink.contract.Sink`).
        routing: the ``routing=`` keyword (see :func:`~tracelet_callbacks.core.routing.make_table`).
        strict: raise :class:`~tracelet_callbacks.TraceletValueError` instead of warning and skipping.
        context: context entries added to every series (``{"rank": 1}`` in per-rank logging).
    """

    def __init__(
        self,
        sink: Any,
        *,
        routing: Any = None,
        strict: bool = False,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self._add = sink.add
        self.table: RoutingTable = make_table(routing)
        self.strict = strict
        self.base_context = dict(context or {})
        self._warn = WarnOnce()
        # tag, or (tag, *context items) -> (metric name, context); contexts are shared, never changed
        self._routes: dict[Any, tuple[str, dict[str, Any]]] = {}
        #: The last step a scalar was logged at (the system monitor reads it for the step time).
        self.last_step: int | None = None
        #: Called with (name, value, step) for a NaN or infinite scalar while a model is watched.
        self.watch_loss: Callable[[str, float, Any], None] | None = None

    # -- the skip-or-raise policy -------------------------------------------------------------------

    def skip(self, tag: str, reason: str, kind: str = "value", depth: int = 0) -> None:
        """Report a value we cannot store: once per tag as a warning, or raise when strict.

        ``depth``: how many frames of ours lie between the adapter's method and this call, beyond one,
        so that the warning names the user's line."""
        message = f"tracelet: skipped {kind} for {tag!r}: {reason}"
        if self.strict:
            raise TraceletValueError(message)
        self._warn((tag, kind), message + " (reported once per tag)", stacklevel=_past_wrappers(4 + depth))

    def notice(self, feature: str, reason: str) -> None:
        """Say once that a feature is kept out of AIM (it stays wherever else it was written)."""
        self._warn(("notice", feature), f"tracelet: {feature} is not sent to AIM: {reason}", stacklevel=4)

    # -- scalars ------------------------------------------------------------------------------------

    def _where(
        self, tag: str, context: Mapping[str, Any] | None, kind: str = "value", depth: int = 1
    ) -> tuple[str, dict[str, Any]] | None:
        """``(metric name, context)`` of ``tag``; ``None`` (reported) when it cannot be stored."""
        # every logged value asks this; a tag (with the same extra context) routes the same way each time
        key: Any = tag if context is None else (tag, *context.items())
        try:
            hit = self._routes.get(key)
        except TypeError:  # an unhashable context value: route it afresh each time
            key = hit = None
        if hit is None:
            found = self.table(tag if type(tag) is str else str(tag))  # dicts' keys are named the same way
            where = {**self.base_context, **found.context, **(context or {})}
            if context:  # the user's own context: no secret goes into a series' key either
                where = redact(where)[0]
            problem = _unstorable(found.name, where)
            if problem:
                self.skip(tag, problem, kind, depth=depth)
                return None
            hit = (found.name, where)
            if key is not None and len(self._routes) < _ROUTE_CACHE:
                self._routes[key] = hit
        return hit

    def _position(self, tag: str, step: Any, epoch: Any, kind: str = "value", depth: int = 1) -> Any:
        """``(step, epoch)`` as AIM stores them, or ``_SKIPPED`` (reported) when they cannot be."""
        try:
            return to_step(step), to_epoch(epoch)
        except Unsupported as exc:
            self.skip(tag, str(exc), kind, depth=depth)
            return _SKIPPED

    def _convert(self, tag: str, value: Any) -> Any:
        """A value that is not already a float: a float, a ``Deferred`` device scalar, or ``_SKIPPED``."""
        try:
            number = to_value(value)
        except Unsupported as exc:
            self.skip(tag, str(exc), depth=1)
            return _SKIPPED
        if type(number) is not float:
            self.sink.holds_deferred = True  # before the sink can see it
        return number

    def scalar(
        self,
        tag: str,
        value: Any,
        step: Any = None,
        epoch: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """One scalar under ``tag``, routed to its metric name and context; ``False`` if skipped."""
        # This runs once per logged value on the training thread: the common case (a float, a known
        # tag, an int step) takes no function call it can avoid.
        number = value if type(value) is float else self._convert(tag, value)
        if number is _SKIPPED:
            return False
        hit = self._routes.get(tag) if context is None else None
        if hit is None and (hit := self._where(tag, context)) is None:
            return False
        if type(step) is not int or not -STEP_LIMIT <= step <= STEP_LIMIT or epoch is not None:
            position = self._position(tag, step, epoch)
            if position is _SKIPPED:
                return False
            step, epoch = position
        name, where = hit
        if step is not None:
            self.last_step = step
        if self.watch_loss is not None and type(number) is float and number - number != 0.0:
            self.watch_loss(name, number, step)  # NaN or inf, while watch() looks for them
        self._add(_new_scalar(_Scalar, (name, number, step, epoch, where, _now())))
        return True

    def scalars(
        self,
        values: Mapping[str, Any],
        step: Any = None,
        epoch: Any = None,
        context: Mapping[str, Any] | None = None,
        *,
        text: bool = False,
    ) -> None:
        """Many scalars at one step, submitted as one batch.

        An ``epoch`` key (:data:`EPOCH_KEY`) is the epoch of the batch unless ``epoch`` is given, and
        never a series. ``text=True``: string values are stored as text (accelerate's ``log``
        contract) instead of skipped.
        """
        # once per step in Lightning and Hugging Face loops: the same shortcuts as ``scalar``
        if EPOCH_KEY in values:
            if epoch is None:
                epoch = values[EPOCH_KEY]
            values = {key: value for key, value in values.items() if key != EPOCH_KEY}
        try:
            step, epoch = to_step(step), to_epoch(epoch)
        except Unsupported as exc:  # the tags are named only then: this runs once per training step
            self.skip(", ".join(map(str, values)), str(exc), "values")
            return
        now = _now()
        routes = self._routes
        watch = self.watch_loss
        batch: list[rec.Record] = []
        for tag, value in values.items():
            if type(tag) is not str:
                tag = str(tag)
            if text and type(value) is str:
                self.text(tag, value, step)
                continue
            number = value if type(value) is float else self._convert(tag, value)
            if number is _SKIPPED:
                continue
            hit = routes.get(tag) if context is None else None
            if hit is None and (hit := self._where(tag, context)) is None:
                continue
            name, where = hit
            if watch is not None and type(number) is float and number - number != 0.0:
                watch(name, number, step)
            batch.append(_new_scalar(_Scalar, (name, number, step, epoch, where, now)))
        if batch:
            if step is not None:
                self.last_step = step
            self.sink.submit(batch)

    def track(
        self,
        value: Any,
        name: str | None,
        step: Any = None,
        epoch: Any = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """``aim.Run.track``: ``name`` as given (no routing); a dict tracks each item under its key; an
        object aim built (``aim.Image`` ...) passes through as it is."""
        if isinstance(value, Mapping) and name is None:
            for key, item in value.items():
                self.track(item, str(key), step, epoch, context)
            return
        if name is None:
            raise TypeError("tracelet: track() needs a name for a single value")
        where = redact(dict(context or {}))[0]
        problem = _unstorable(name, where)
        position = _SKIPPED if problem else self._position(name, step, epoch)
        if problem:
            self.skip(name, problem)
        if position is _SKIPPED:
            return
        step, epoch = position
        try:
            number = to_value(value)
        except Unsupported as exc:
            first = value[0] if isinstance(value, list) and value else value
            if type(first).__module__.startswith("aim"):
                self.sink.submit([rec.Native(name, value, step=step, epoch=epoch, context=where)])
            else:
                self.skip(name, str(exc))
            return
        if type(number) is not float:
            self.sink.holds_deferred = True
        self.sink.submit([rec.Scalar(name, number, step, epoch, where, _now())])

    # -- rich types ---------------------------------------------------------------------------------

    def histogram(self, tag: str, values: Any, step: Any = None, epoch: Any = None, bins: int = 64) -> None:
        try:
            counts, span = histogram_from_values(values, bins=bins)
        except Unsupported as exc:
            self.skip(tag, str(exc), "histogram")
            return
        self._submit_histogram(tag, counts, span, step, epoch)

    def histogram_raw(
        self, tag: str, lo: Any, hi: Any, bucket_limits: Any, bucket_counts: Any, step: Any = None
    ) -> None:
        try:
            counts, span = histogram_from_buckets(to_scalar(lo), to_scalar(hi), bucket_limits, bucket_counts)
        except Unsupported as exc:
            self.skip(tag, str(exc), "histogram")
            return
        self._submit_histogram(tag, counts, span, step, None)

    def _submit_histogram(self, tag: str, counts: list[float], span: tuple, step: Any, epoch: Any) -> None:
        if (found := self._placed(tag, step, epoch, "histogram")) is not None:
            name, where, step, epoch = found
            self.sink.submit([rec.Histogram(name, counts, span, step=step, epoch=epoch, context=where)])

    def _placed(self, tag: str, step: Any, epoch: Any, kind: str) -> tuple | None:
        """``(name, context, step, epoch)`` of a rich value, or ``None`` (reported)."""
        hit = self._where(tag, None, kind, depth=2)
        position = self._position(tag, step, epoch, kind, depth=2) if hit is not None else _SKIPPED
        return None if position is _SKIPPED else (*hit, *position)

    def image(
        self, tag: str, image: Any, step: Any = None, dataformats: str = "CHW", caption: str = ""
    ) -> None:
        try:
            pixels = [rec.ImageData(image_to_pixels(image, dataformats), caption)]
        except Unsupported as exc:
            self.skip(tag, str(exc), "image")
            return
        self._submit_images(tag, pixels, step)

    def images(self, tag: str, images: Any, step: Any = None, dataformats: str = "NCHW") -> None:
        try:
            pixels = [rec.ImageData(array) for array in images_to_pixels(images, dataformats)]
        except Unsupported as exc:
            self.skip(tag, str(exc), "images")
            return
        if pixels:
            self._submit_images(tag, pixels, step)

    def image_with_boxes(
        self,
        tag: str,
        image: Any,
        boxes: Any,
        step: Any = None,
        dataformats: str = "CHW",
        labels: list[str] | None = None,
    ) -> None:
        try:
            pixels = image_to_pixels(image, dataformats)
            if boxes is not None:
                pixels = draw_boxes(pixels, boxes, labels)
        except Unsupported as exc:
            self.skip(tag, str(exc), "image")
            return
        self._submit_images(tag, [rec.ImageData(pixels)], step)

    def figure(self, tag: str, figure: Any, step: Any = None) -> None:
        figures = figure if isinstance(figure, (list, tuple)) else [figure]
        try:
            pixels = [rec.ImageData(figure_to_pixels(item)) for item in figures]
        except Unsupported as exc:
            self.skip(tag, str(exc), "figure")
            return
        self._submit_images(tag, pixels, step)

    def _submit_images(self, tag: str, pixels: list[rec.ImageData], step: Any) -> None:
        if (found := self._placed(tag, step, None, "image")) is not None:
            name, where, step, _epoch = found
            self.sink.submit([rec.Images(name, pixels, step=step, context=where)])

    def text(self, tag: str, text: Any, step: Any = None) -> None:
        if not isinstance(text, str):
            self.skip(tag, f"expected a string, got {type(text).__name__}", "text")
            return
        if (found := self._placed(tag, step, None, "text")) is not None:
            name, where, step, _epoch = found
            # logged text is free text: a pasted header or command line may carry a credential
            self.sink.submit([rec.Text(name, redact_text(text), step=step, context=where)])

    def audio(
        self, tag: str, samples: Any, step: Any = None, sample_rate: int = 44100, caption: str = ""
    ) -> None:
        try:
            wav = audio_to_wav(samples, sample_rate)
        except Unsupported as exc:
            self.skip(tag, str(exc), "audio")
            return
        if (found := self._placed(tag, step, None, "audio")) is not None:
            name, where, step, _epoch = found
            self.sink.submit([rec.Audio(name, wav, int(sample_rate), caption, step=step, context=where)])

    # -- run-level data -----------------------------------------------------------------------------

    def params(self, params: Any, key: str = "hparams") -> dict[str, Any]:
        """Store hyperparameters under ``run[key]`` (merged with what is there); returns what was stored."""
        try:
            converted = to_params(params)
        except Exception as exc:  # a config object whose own conversion fails must not stop training
            self.skip(key, f"could not read {type(params).__name__} as parameters: {exc!r}", "params")
            return {}
        if not isinstance(converted, dict):
            self.skip(key, f"expected a mapping of parameters, got {type(params).__name__}", "params")
            return {}
        self.sink.submit([rec.Params(key, converted)])
        return converted

    def tags(self, tags: Any) -> None:
        """A mapping becomes queryable params under ``tags`` plus ``key=value`` AIM tags; a list, AIM tags."""
        if tags is None:
            return
        if isinstance(tags, str):
            tags = [tags]
        try:
            self._tags(tags)
        except Exception as exc:
            self.skip("tags", f"could not read tags: {exc!r}", "tags")

    def _tags(self, tags: Any) -> None:
        if isinstance(tags, Mapping):
            values = to_params(dict(tags))
            self.sink.submit([rec.Params("tags", values), rec.Tags(add=tuple(_tag_labels(values)))])
        elif isinstance(tags, Iterable):
            self.sink.submit([rec.Tags(add=tuple(str(to_params(tag)) for tag in tags))])
        else:
            self.skip("tags", f"expected a mapping or a list of tags, got {type(tags).__name__}", "tags")

    def set_param(self, key: str, value: Any) -> None:
        """``run[key] = value``: replaces what is stored under ``key`` (secrets redacted)."""
        key = str(key)
        self.sink.submit([rec.Params(key, to_params({key: value})[key], merge=False)])

    def change_tags(self, add: Iterable[Any] = (), remove: Iterable[Any] = ()) -> None:
        """Add and remove AIM tags (the chips in the UI)."""
        self.sink.submit([rec.Tags(add=tuple(map(str, add)), remove=tuple(map(str, remove)))])

    def run_info(self, name: str | None = None, experiment: str | None = None) -> None:
        if name is not None or experiment is not None:
            self.sink.submit([rec.RunInfo(name=name, experiment=experiment)])

    def artifact(
        self, path: str | os.PathLike, artifact_path: str | None = None, raise_errors: bool = False
    ) -> list[str]:
        """Copy a file (or every file under a folder) into the artifact store; returns stored names.

        A store that refuses it is one warning and no names, or the ``TraceletError`` itself with
        ``strict`` or ``raise_errors`` (a caller that reports many files' failure once)."""
        outside: list[str] = []
        pairs = artifact_names(path, artifact_path, outside)
        if outside:
            warnings.warn(
                f"tracelet: {len(outside)} link(s) in {os.fspath(path)!r} point outside it and were not "
                f"stored: {', '.join(outside[:5])}",
                TraceletWarning,
                stacklevel=3,
            )
        # a JSON or YAML config goes in redacted; the sink has copied every artifact when submit returns
        with tempfile.TemporaryDirectory(prefix="tracelet-scrub-") as scratch:
            batch = []
            for i, (source, name) in enumerate(pairs):
                if source.endswith((".json", ".yaml", ".yml")):
                    source = scrubbed_config(source, os.path.join(scratch, str(i)))
                mode = os.stat(source)
                if not stat.S_ISREG(mode.st_mode):  # a pipe or a device would be read until it ends
                    self.skip(name, "not a regular file (a pipe, socket or device)", "artifact", depth=1)
                    continue
                batch.append(rec.Artifact(source, name, mode.st_size))
            try:
                self.sink.submit(batch)
            except TraceletError as exc:  # the store cannot take it (full, unreachable ...)
                if self.strict or raise_errors:
                    raise
                self._warn(("artifact", str(exc)), f"{exc}; training goes on", stacklevel=3)
                return []
        return [item.name for item in batch]

    def flush(self) -> None:
        self.sink.flush()

    def close(self, status: str = "finished") -> None:
        self.sink.close(status)


#: What a context value may be: aim keys its series by the context, and queries compare them.
_CONTEXT_TYPES = (str, int, float, bool, type(None))


def _unstorable(name: str, context: Mapping[str, Any]) -> str | None:
    """Why a series ``name`` in ``context`` cannot be stored (``None`` when it can).

    >>> _unstorable("", {}), _unstorable("loss", {"model": object()})[:44]
    ("an empty name: aim's queries fail on it", "context value 'model' is an object; contexts")
    """
    if not name or not name.strip():
        return "an empty name: aim's queries fail on it"
    for key, value in context.items():
        odd = _odd_leaf(value)
        if type(odd) is int:
            return f"context value {key!r} holds {odd}, beyond the 64-bit integers aim stores"
        if not isinstance(key, str) or odd is not None:
            kind = type(odd).__name__
            return (
                f"context value {key!r} is a{'n' if kind[0] in 'aeiou' else ''} {kind}; contexts hold "
                "strings, numbers, booleans and lists or dicts of them"
            )
    return None


def _odd_leaf(value: Any) -> Any:
    """The first value inside ``value`` that a context cannot hold (``None`` when all can)."""
    if isinstance(value, _CONTEXT_TYPES):
        return value if type(value) is int and not -(2**63) <= value < 2**63 else None
    if isinstance(value, Mapping):
        items = list(value.values()) if all(isinstance(key, str) for key in value) else [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return value
    return next((odd for item in items if (odd := _odd_leaf(item)) is not None), None)


def _past_wrappers(level: int) -> int:
    """``level`` (a ``stacklevel`` as seen from the caller of this function) moved past the frames of
    accelerate that lie between a user's ``accelerator.log`` and our tracker (``on_main_process``)."""
    frame = sys._getframe(level)
    while frame is not None and f"{os.sep}accelerate{os.sep}" in frame.f_code.co_filename:
        frame, level = frame.f_back, level + 1
    return level


def _tag_labels(values: Mapping[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def artifact_names(
    path: str | os.PathLike, artifact_path: str | None = None, outside: list[str] | None = None
) -> list[tuple[str, str]]:
    """``(source file, stored name)`` pairs for ``log_artifact``, refusing names that leave the store.

    In a folder, a link whose target lies outside the folder is left out (and added to ``outside``):
    logging a folder must not copy whatever a link inside it points to.

    >>> artifact_names(__file__, "models/")[0][1]
    'models/translator.py'
    """
    # absolute here, in the caller's folder: the writer may be a process started in another one
    source = os.path.abspath(os.fspath(path))
    if not os.path.exists(source):
        raise FileNotFoundError(f"tracelet: cannot log artifact {source!r}: no such file or folder")
    folder = _clean_store_path(artifact_path or "")
    if os.path.isdir(source):
        base = os.path.basename(os.path.normpath(source))
        inside = os.path.realpath(source) + os.sep
        pairs = []
        for root, _dirs, files in os.walk(source):
            for file in sorted(files):
                full = os.path.join(root, file)
                if os.path.islink(full) and not os.path.realpath(full).startswith(inside):
                    if outside is not None:
                        outside.append(os.path.relpath(full, source))
                    continue
                relative = os.path.relpath(full, source).replace(os.sep, "/")
                pairs.append(
                    (full, posixpath.join(folder, base, relative) if folder else f"{base}/{relative}")
                )
        return pairs
    name = os.path.basename(source)
    return [(source, posixpath.join(folder, name) if folder else name)]


def _clean_store_path(artifact_path: str) -> str:
    text = str(artifact_path).replace("\\", "/").strip()
    if not text:
        return ""
    cleaned = posixpath.normpath(text)
    if text.startswith("/") or cleaned == ".." or cleaned.startswith("../") or "://" in text:
        raise ValueError(
            f"tracelet: artifact_path {artifact_path!r} would leave the artifact store; "
            "give a relative folder such as 'models/'"
        )
    return "" if cleaned == "." else cleaned
