"""TensorBoard event files written earlier, imported into AIM runs as if they had been logged live.

Each folder under the log directory that holds event files is one TensorBoard run and becomes one
AIM run, named after its path relative to the log directory and tagged ``source=tensorboard``. Its
events go through the same translator as ``TraceletWriter.add_*`` (so ``train/loss`` becomes
``loss`` in ``{"subset": "train"}``), with each value's own step and wall time. The child
folders of ``add_scalars`` and ``add_hparams`` come back to their parent's run under the live names
(see :func:`.events.live_tag`).

**Idempotent and incremental.** The run of a folder is found again by the folder's identity (see
:mod:`.runs`, which also places each scalar at its logged step); a second import reads nothing twice,
and a grown file is read from where the last import stopped.

**Reading** (:mod:`.events`) needs no TensorFlow; a file cut short or a record that does not decode
ends that file: what comes before is imported, and one warning names the file and the byte offset (a
file of other bytes named like an event file is named the same way; alone in its folder, it makes no
run).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...config import TraceletConfig
from ...errors import TraceletWarning
from .events import (
    EVENT_FILE,
    TEXT_SUFFIX,
    Damage,
    decode_png,
    decode_wav,
    find_run_folders,
    hparams_of,
    in_written_order,
    live_tag,
    read_records,
    tensor_number,
    written_for_parent,
)
from .runs import FolderRun

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
        self._open: dict[str, FolderRun] = {}
        self._warned_kinds: set[str] = set()
        self._written_at: dict[str, float] = {}  # event file -> when its writer began, once read

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

    def _run_of(self, folder: str) -> FolderRun:
        found = self._open.get(folder)
        if found is None:
            name = os.path.relpath(folder, self.logdir)
            name = os.path.basename(self.logdir) if name == "." else name
            found = self._open[folder] = FolderRun(folder, name, self.config)
            if found.exp is not None:  # an earlier import's
                self.report.runs[folder] = found.exp.hash
        return found

    # -- one pass ------------------------------------------------------------------------------------

    def run_once(self, *, final: bool = True) -> ImportReport:
        """Import what is new since the last pass. ``final``: a file cut short is damage (warned);
        otherwise (``--follow``) it may still be being written, and is read again next pass."""
        started = time.perf_counter()
        for folder, files in self.plan().items():
            run = self._run_of(folder)
            changed = False
            relative_of = dict(files)
            for path in in_written_order(list(relative_of), self._written_at):
                relative = relative_of[path]
                start = run.done.get(relative, 0)
                try:
                    size = os.path.getsize(path)
                except OSError:
                    continue
                if size <= start:
                    continue
                end = self._import_file(path, relative, start, run, final)
                if end > start:
                    run.done[relative] = end
                    changed = True
                    self.report.files += 1
            if run.exp is not None:  # else nothing of its files decodes (each one named): no run
                run.end_pass(changed, final)
            if final:
                del self._open[folder]
        self.report.seconds += time.perf_counter() - started
        return self.report

    def close(self) -> None:
        """Close every run (flushed, indexed: queryable at once)."""
        for run in self._open.values():
            run.close()
        self._open.clear()

    def _import_file(self, path: str, relative: str, start: int, run: FolderRun, final: bool) -> int:
        from tensorboard.compat.proto import event_pb2

        child = os.path.dirname(relative)  # "" for the run's own files, "loss_train" for add_scalars'
        offset = start
        try:
            for end, data in read_records(path, start):
                try:
                    event = event_pb2.Event.FromString(data)
                except Exception as exc:
                    raise Damage(path, offset, f"a record that does not decode ({exc})") from None
                if run.exp is None:  # the folder's first record that is one: its run is made now
                    run.open()
                    self.report.runs[run.folder] = run.exp.hash
                if event.HasField("summary"):
                    run.stamped.wall_time = event.wall_time
                    for value in event.summary.value:
                        self._value(run, value, event.step, child)
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
                kept = "nothing of it was" if damage.offset == 0 else "everything before it was"
                warnings.warn(
                    f"tracelet: {path} is damaged ({damage.why} at byte {damage.offset}); {kept} imported",
                    TraceletWarning,
                    stacklevel=2,
                )
        return offset

    # -- one summary value ---------------------------------------------------------------------------

    def _value(self, run: FolderRun, value: Any, step: int, child: str) -> None:
        t = run.translator
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
            run.scalar(live_tag(tag, child), number, step)
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
