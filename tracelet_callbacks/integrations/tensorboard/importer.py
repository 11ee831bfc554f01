"""TensorBoard event files written earlier, imported into AIM runs as if they had been logged live.

Each folder under the log directory that holds event files is one TensorBoard run and becomes one
AIM run, named after its path relative to the log directory and tagged ``source=tensorboard``. Its
events go through the same translator as ``TraceletWriter.add_*`` (so ``train/loss`` becomes
``loss`` in ``{"subset": "train"}``), with each value's own step and wall time. The child
folders of ``add_scalars`` and ``add_hparams`` come back to their parent's run under the live names
(see :func:`.events.live_tag`).

**Idempotent and incremental.** The run of a folder is found again by the folder's identity (its
real path, hashed), stored in the run param ``tensorboard`` with how far each event file was read;
a second import reads nothing twice, and a grown file is read from where the last import stopped.

**Reading** (:mod:`.events`) needs no TensorFlow; a file cut short or a record that does not decode
ends that file: what comes before is imported, and one warning names the file and the byte offset.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...config import TraceletConfig
from ...core.translator import Translator
from ...errors import TraceletWarning
from ...run.experiment import Experiment, find_run
from .events import (
    EVENT_FILE,
    TEXT_SUFFIX,
    Damage,
    WallTimeSink,
    decode_png,
    decode_wav,
    find_run_folders,
    hparams_of,
    live_tag,
    read_records,
    tensor_number,
    written_for_parent,
)

__all__ = ["ImportReport", "TensorBoardImporter"]


@dataclass
class ImportReport:
    """What an import did, for the progress bar and the command's summary line."""

    runs: dict[str, str] = field(default_factory=dict)  # run folder -> run hash
    files: int = 0
    values: int = 0
    bytes_read: int = 0
    damaged: list[Damage] = field(default_factory=list)
    #: Files whose last record is cut short: the state a killed job leaves (TensorBoard reads it as
    #: "not written yet"), imported up to it; a note, not damage.
    cut_short: list[Damage] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # summary kind -> values left out
    seconds: float = 0.0


def _identity(folder: str) -> str:
    return hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:24]


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
        self._open: dict[str, tuple[Experiment, Translator, WallTimeSink, dict[str, int]]] = {}
        self._warned_kinds: set[str] = set()
        self._at_zero: set[str] = set()  # tags of the run being read that had a point at step 0

    # -- the folders and their runs ------------------------------------------------------------------

    def plan(self) -> dict[str, list[tuple[str, str]]]:
        """run folder -> [(event file, what it is relative to the run folder)] for every event file,
        child folders of ``add_scalars`` / ``add_hparams`` under their parent's run."""
        folders = find_run_folders(self.logdir)
        runs: dict[str, list[tuple[str, str]]] = {}
        for folder in folders:
            owner = _owner(folder, runs)
            relative = os.path.relpath(folder, owner)
            for name in sorted(name for name in os.listdir(folder) if EVENT_FILE.search(name)):
                entry = (os.path.join(folder, name), os.path.normpath(os.path.join(relative, name)))
                runs.setdefault(owner, []).append(entry)
        return runs

    def _run_of(self, folder: str) -> tuple[Experiment, Translator, WallTimeSink, dict[str, int]]:
        found = self._open.get(folder)
        if found is not None:
            return found
        identity = _identity(folder)
        name = os.path.relpath(folder, self.logdir)
        name = os.path.basename(self.logdir) if name == "." else name
        existing = find_run(self.config, ("tensorboard", "identity"), identity)  # an earlier import's
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
        stamped = WallTimeSink(base.sink)
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
            self._at_zero = set()
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
            if final:  # done with this folder: its writer process goes on to the next folder's run
                exp.close("finished")
                del self._open[folder]
            else:
                exp.flush()
        self.report.seconds += time.perf_counter() - started
        return self.report

    def close(self) -> None:
        """Close every run (flushed, indexed: queryable at once)."""
        for exp, *_ in self._open.values():
            exp.close("finished")
        self._open.clear()

    def _import_file(
        self, path: str, relative: str, start: int, translator: Translator, stamped: WallTimeSink, final: bool
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
            cut_short = damage.why == "a record cut short"  # only ever the file's end: nothing follows
            if final and cut_short:
                self.report.cut_short.append(damage)
            elif not cut_short:
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
            if (params := hparams_of(value)) is not None:
                t.params(params)
            return
        if kind == "simple_value" or (kind == "tensor" and plugin == "scalars"):
            number = value.simple_value if kind == "simple_value" else tensor_number(value.tensor)
            tag = live_tag(tag, child)
            if step == 0:  # add_scalar without a step writes 0 every time; live, they are 0, 1, 2 ...
                step = None if tag in self._at_zero else 0
                self._at_zero.add(tag)
            t.scalar(tag, number, step)
        elif kind == "histo":
            h = value.histo
            t.histogram_raw(tag, h.min, h.max, list(h.bucket_limit), list(h.bucket), step)
        elif kind == "image":
            t.image(tag, decode_png(value.image.encoded_image_string), step, "HWC")
        elif kind == "audio":
            samples, rate = decode_wav(value.audio.encoded_audio_string)
            t.audio(tag, samples, step, rate)
        elif kind == "tensor" and plugin == "text":
            text = b"\n".join(value.tensor.string_val).decode("utf-8", "replace")
            t.text(tag.removesuffix(TEXT_SUFFIX), text, step)
        else:
            what = plugin or kind or "empty value"
            self.report.values -= 1
            self.report.skipped[what] = self.report.skipped.get(what, 0) + 1
            if what not in self._warned_kinds:
                self._warned_kinds.add(what)
                t.notice(f"TensorBoard {what!r} summaries", "AIM has no matching object type; not imported")


def _owner(folder: str, runs: dict[str, Any]) -> str:
    """The run folder ``folder``'s events belong to: the nearest run above it that ``SummaryWriter``
    wrote it for (``add_scalars`` / ``add_hparams``), else its own."""
    above = os.path.dirname(folder)
    while above != os.path.dirname(above):
        if above in runs:
            return above if written_for_parent(folder, above) else folder
        above = os.path.dirname(above)
    return folder
