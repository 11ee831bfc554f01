"""``TraceletAimTracker``: an ``accelerate`` tracker whose run is an AIM run written through our core.

Accelerate builds the tracker in the user's script, then calls ``start()`` (main process only) from
``Accelerator.init_trackers``; construction therefore touches nothing. Every writing method carries
accelerate's own ``on_main_process`` policy, so other ranks do nothing. ``finish()`` closes the run;
a later ``start()`` (another ``init_trackers``) opens a new one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ..config import TraceletConfig, coerce
from ..core.params import to_params
from ..run.experiment import Experiment, RunHandle
from ..run.lifecycle import RunLifecycle
from ..run.resume import find_resume_point

try:
    from accelerate.tracking import GeneralTracker, on_main_process
except ImportError as exc:
    raise ModuleNotFoundError(
        'TraceletAimTracker needs accelerate: pip install "tracelet-callbacks[accelerate]"'
    ) from exc

__all__ = ["TraceletAimTracker"]


class TraceletAimTracker(GeneralTracker):
    """An ``accelerate.tracking.GeneralTracker`` that logs into an AIM run.

    Args:
        run_name: the run's display name (also the ``run_name`` setting).
        config: a settings dict (or :class:`~tracelet_callbacks.TraceletConfig`), below keywords.
        **settings: any setting keyword (``repo_path``, ``experiment_name``, ``tags``, ``remote_uri``,
            ``run_hash``, ``strict``, ``routing`` ...).

    Example::

        from accelerate import Accelerator
        from tracelet_callbacks import TraceletAimTracker

        accelerator = Accelerator(log_with=[TraceletAimTracker("baseline", repo_path="./aim_repo")])
        accelerator.init_trackers("my_project", config={"lr": 1e-3})   # params under "hparams"
        accelerator.log({"train_loss": 0.5, "val_loss": 0.7}, step=1)  # "loss", subsets train / val
        accelerator.end_training()                                     # closes the run: "finished"
    """

    name = "tracelet"
    requires_logging_directory = False
    main_process_only = True

    def __init__(
        self,
        run_name: str | None = None,
        config: Mapping[str, Any] | TraceletConfig | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self._config = coerce(config, {"run_name": run_name, **settings})
        self.run_name = self._config.run_name
        # made here, used by start() on the main process only (accelerate's policy decides the rank)
        self._runs = RunLifecycle(self._config)
        self._begun = False  # start() was called: the run is made on first use
        self._params: list[Any] = []  # init_trackers' configs as given then, stored once the run is known
        self._hooked: set[int] = set()  # the accelerators whose save_state / load_state we follow

    @property
    def tracker(self) -> RunHandle:
        """``aim.Run``'s writing surface over this run; a do-nothing stand-in before ``start()`` and on
        other processes."""
        if not self._begun and not self._runs.started:
            return self._runs.stand_in.run
        if self._begun:
            self._current()
        return self._runs.handle  # after end_training() too: the run it was

    @property
    def experiment(self) -> Experiment | None:
        """The :class:`~tracelet_callbacks.Experiment` behind the tracker: ``None`` until started, and
        after ``end_training()`` the run's, closed (its ``hash`` and ``status`` can still be read)."""
        if self._begun and not self._runs.finished:
            return self._current()
        return self._runs.latest

    @on_main_process
    def start(self) -> None:
        if self._runs.finished:  # init_trackers() again after end_training(): a new run
            self._runs.next_run(self.run_name)
        # a bad repo or a server that is down fails here; the run is made on first use, after a
        # load_state() that may name the run to continue
        self._runs.check()
        self._begun = True
        self._follow_checkpoints()

    def _current(self) -> Experiment:
        exp = self._runs.current()
        while self._params:  # each merged into the run's hparams, as a later call does
            exp.log_params(self._params.pop(0))
        return exp

    def _follow_checkpoints(self) -> None:
        """``save_state`` marks its folder with this run; ``load_state`` of a marked folder continues
        that run, rewound to the step it was saved at (``resume`` setting). The accelerator is the
        ``init_trackers`` caller on the stack (a tracker is never given it)."""
        frame = sys._getframe(2)
        for _ in range(8):
            if frame is None:
                return
            candidate = frame.f_locals.get("self")
            if frame.f_code.co_name == "init_trackers" and hasattr(candidate, "register_load_state_pre_hook"):
                if id(candidate) not in self._hooked:
                    self._hooked.add(id(candidate))
                    candidate.register_save_state_pre_hook(self._on_save_state)
                    candidate.register_load_state_pre_hook(self._on_load_state)
                return
            frame = frame.f_back

    def _on_save_state(self, models: Any, weights: Any, output_dir: str) -> None:
        if self._begun and not self._runs.finished:
            self._current().mark_checkpoint(output_dir)

    def _on_load_state(self, models: Any, input_dir: str) -> None:
        if self._begun and (point := find_resume_point(input_dir, self._config)) is not None:
            self._runs.continue_from(point)

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """Store ``values`` (nested dicts, namespaces, dataclasses ...) as the run's ``hparams``, as
        they are now (a later change to the caller's dict is not stored); a second call merges."""
        try:
            values = to_params(values)  # a copy, read now
        except Exception:  # kept as given: the run's translator says what it cannot read
            pass
        self._params.append(values)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Scalars routed by the shared table (``val_loss`` -> ``loss`` in subset ``val``); strings as
        text. An ``epoch`` key is AIM's epoch of the call, as in Lightning, not a series; ``epoch=``
        (which wins over it) and ``context=`` are passed on as ``aim.Run.track`` takes them."""
        translator = self._current().translator
        if translator is not None:
            translator.scalars(values, step, kwargs.get("epoch"), kwargs.get("context"), text=True)

    @on_main_process
    def log_images(
        self, values: dict, step: int | None = None, dataformats: str = "HWC", **kwargs: Any
    ) -> None:
        """Images as ``{name: image}`` or ``{name: (image, caption)}``: numpy arrays, tensors or PIL
        images in ``dataformats`` (``HWC`` as aim and W&B take them; ``NHWC`` ... for a batch)."""
        translator = self._current().translator
        if translator is None:
            return
        batch = dataformats.upper().startswith("N") or dataformats.upper() == "CNHW"
        for key, value in values.items():
            image, caption = value if isinstance(value, tuple) else (value, "")
            layout = dataformats
            if dataformats.upper() == "HWC" and getattr(image, "ndim", None) == 2:
                layout = "HW"  # a grayscale array under the default: as aim.Image and ClearML take it
            if batch:
                translator.images(str(key), image, step, dataformats)
            else:
                translator.image(str(key), image, step, layout, caption=str(caption))

    @on_main_process
    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100) -> None:
        """As :meth:`tracelet_callbacks.Experiment.watch`: norms, histograms and NaN checks of ``model``
        (``accelerator.prepare``'d or not) every ``log_freq`` optimizer steps, counted from this call."""
        self._runs.watch(model, log, log_freq)

    @on_main_process
    def unwatch(self, model: Any = None) -> None:
        self._runs.unwatch(model)

    @on_main_process
    def finish(self) -> None:
        """Flush, record status ``finished``, close and index the run (``Accelerator.end_training``)."""
        if self._begun:
            self._current()  # a run that logged nothing still shows its params
            self._begun = False
            self._runs.finish("finished")
