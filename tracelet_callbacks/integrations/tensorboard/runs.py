"""The AIM run of one TensorBoard run folder, for the importer: found again or made, how far its event
files were read, and the step each of its scalars lands at.

**Found again.** A folder's run is found by the folder's identity (its real path, hashed), stored in
the run param ``tensorboard`` with how far each event file was read, so a second import reads nothing
twice. A folder with no run yet gets one only when a record of its files decodes: a file of other bytes
named like an event file makes no empty run.

**Steps are the logged steps.** A step logged twice keeps the later value, as ``Run.track`` does live
(the importer reads a folder's files in the order their writers began, so a job restarted into its
logdir imports its second attempt's values). The one exception is a tag whose every point is at step
0: ``add_scalar`` without a step writes 0 each time, and live those values count 0, 1, 2 ... So a tag's
points at step 0 are held until the tag shows another step (then the last of them is its step 0) or the
pass ends (then they count 0, 1, 2 ..., and the run remembers the tag as step-less, in
``tensorboard.stepless``, so that the next pass or import counts on from there).
"""

from __future__ import annotations

import hashlib
import os

from ...config import TraceletConfig
from ...core.translator import Translator
from ...run.experiment import Experiment, find_run
from .events import WallTimeSink

__all__ = ["FolderRun"]


class FolderRun:
    """The run of the TensorBoard run ``folder`` (named ``name``), written with ``config``.

    ``exp`` is ``None`` until :meth:`open`; an earlier import's run is opened at once (its offsets and
    step-less tags are in it).
    """

    def __init__(self, folder: str, name: str, config: TraceletConfig) -> None:
        self.folder, self.name, self.config = folder, name, config
        self.identity = hashlib.sha256(os.path.realpath(folder).encode()).hexdigest()[:24]
        self.existing = find_run(config, ("tensorboard", "identity"), self.identity)
        self.exp: Experiment | None = None
        self.translator: Translator | None = None
        self.stamped: WallTimeSink | None = None
        self.done: dict[str, int] = {}  # event file (relative to the folder) -> bytes read
        self.stepless: set[str] = set()  # tags whose every point is at step 0
        self._stored_stepless: set[str] = set()
        self._stepped: set[str] = set()  # tags seen at a step other than 0
        self._held: dict[str, list[tuple[float, float | None]]] = {}  # tag -> [(value, wall time)]
        if self.existing is not None:
            self.open()

    def open(self) -> None:
        """Make the run, or open the earlier import's again."""
        existing = self.existing
        settings = self.config.replace(
            run_hash=existing,
            run_name=self.name if existing is None else None,
            tags={"source": "tensorboard"} if existing is None else None,
            system_tracking_interval=None,
            capture_terminal_logs=False,
            watch=None,
        )
        self.exp = exp = Experiment(settings).open()
        self.stamped = WallTimeSink(exp.translator.sink)
        self.translator = Translator(self.stamped, routing=settings.routing, strict=False)
        if existing is None:
            folder = {"folder": os.path.realpath(self.folder), "identity": self.identity}
            self.translator.params(folder, key="tensorboard")
            return
        try:
            stored = exp.run.get("tensorboard") or {}
            self.done = dict(stored.get("files") or {})
            self.stepless = set(stored.get("stepless") or ())
        except Exception:  # unreadable: the files are read again, which overwrites the same points
            self.done, self.stepless = {}, set()
        self._stored_stepless = set(self.stepless)

    def scalar(self, tag: str, number: float, step: int) -> None:
        """One scalar at its logged step; step 0 waits until the tag says whether it counts steps."""
        if step == 0 and tag not in self._stepped:
            if tag in self.stepless:
                self.translator.scalar(tag, number, None)  # an earlier pass's step-less tag counts on
            else:
                self._held.setdefault(tag, []).append((number, self.stamped.wall_time))
            return
        if tag not in self._stepped:
            self._stepped.add(tag)
            self.stepless.discard(tag)  # seen at step 0 alone on an earlier pass: that was its first
            held = self._held.pop(tag, None)
            if held:  # a real step 0, logged more than once if the job restarted: the later one wins
                self._write_held(tag, held[-1:])
        self.translator.scalar(tag, number, step)

    def end_pass(self, read: bool, final: bool) -> None:
        """The pass over the folder's files is over (``read``: something new was read): the tags still
        held showed no step but 0, so they were logged without one and count 0, 1, 2 ...; then the
        offsets are stored, and the run closed (``final``) or flushed."""
        held, self._held = self._held, {}
        for tag, points in held.items():
            self.stepless.add(tag)
            self._write_held(tag, points)
        if read or self.stepless != self._stored_stepless:
            stored = {"files": dict(self.done), "stepless": sorted(self.stepless)}
            self.translator.params(stored, key="tensorboard")
            self._stored_stepless = set(self.stepless)
        if final:  # done with this folder: its writer process goes on to the next folder's run
            self.close()
        else:
            self.exp.flush()

    def close(self) -> None:
        if self.exp is not None:
            self.exp.close("finished")

    def _write_held(self, tag: str, points: list[tuple[float, float | None]]) -> None:
        """The first at step 0, the rest at the series' next steps, each with its own wall time."""
        now = self.stamped.wall_time
        for index, (number, wall_time) in enumerate(points):
            self.stamped.wall_time = wall_time
            self.translator.scalar(tag, number, 0 if index == 0 else None)
        self.stamped.wall_time = now
