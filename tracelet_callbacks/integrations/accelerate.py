"""``TraceletAimTracker``: an ``accelerate`` tracker whose run is an AIM run written through our core.

Accelerate builds the tracker in the user's script, then calls ``start()`` (main process only) from
``Accelerator.init_trackers``; construction therefore touches nothing. Every writing method carries
accelerate's own ``on_main_process`` policy, so other ranks do nothing. ``finish()`` closes the run;
a later ``start()`` (another ``init_trackers``) opens a new one.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import Any

from ..config import FIELDS, TraceletConfig, resolve
from ..run.experiment import Experiment, RunHandle

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
        if isinstance(config, TraceletConfig):  # already resolved: do not read the environment again
            config = {field: getattr(config, field) for field in FIELDS}
            self._config = resolve({"run_name": run_name, **settings}, config, env={})
        else:
            self._config = resolve({"run_name": run_name, **settings}, config)
        self.run_name = self._config.run_name
        self._experiment: Experiment | None = None  # made by start(), on the main process only
        self._finished = False  # finish() closed the experiment: the next start() makes a new run
        self._resume_hash: str | None = None  # a copy's run, continued when it first logs
        self._runs = 0

    @property
    def tracker(self) -> RunHandle:
        """``aim.Run``'s writing surface over this run; a do-nothing stand-in before ``start()`` and on
        other processes."""
        if self._experiment is None and self._resume_hash is None:
            return Experiment(self._config, enabled=False).run
        return self._live().run

    @property
    def experiment(self) -> Experiment | None:
        """The :class:`~tracelet_callbacks.Experiment` behind the tracker (``None`` until started)."""
        return self._experiment

    @on_main_process
    def start(self) -> None:
        if self._finished:  # init_trackers() again after end_training(): a new run
            self._experiment, self._finished = None, False
        self._live().open()

    def _live(self) -> Experiment:
        if self._experiment is None:  # also log() before init_trackers(): start as accelerate would
            config = self._config
            if self._resume_hash is not None:
                gc.collect()  # aim's closed Run objects in this process must be gone before resuming
                config, self._resume_hash = config.replace(run_hash=self._resume_hash), None
            elif self._runs:
                config = config.replace(run_hash=None)  # ``run_hash`` names the first run only
            self._experiment, self._finished = Experiment(config), False
            self._runs += 1
        return self._experiment

    def __getstate__(self) -> dict[str, Any]:
        """The live run stays behind (locks, a writer); its hash travels, so a copy continues it."""
        state = self.__dict__.copy()
        exp = state["_experiment"]
        if exp is not None and not self._finished:
            state["_resume_hash"] = exp.hash if exp.is_open else exp.config.run_hash
        state["_experiment"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # lazy: resumed by hash on first use
        if self._finished:  # as the original: values logged before the next start() are dropped
            self._experiment = Experiment(self._config)
            self._experiment.close("finished")  # never opened: nothing is written

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """Store ``values`` (nested dicts, namespaces, dataclasses ...) as the run's ``hparams``."""
        self._live().log_params(values)

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Scalars routed by the shared table (``val_loss`` -> ``loss`` in subset ``val``); strings as
        text. An ``epoch`` key is AIM's epoch of the call, as in Lightning, not a series; ``epoch=``
        (which wins over it) and ``context=`` are passed on as ``aim.Run.track`` takes them."""
        translator = self._live().translator
        if translator is None:
            return
        epoch = kwargs["epoch"] if kwargs.get("epoch") is not None else values.get("epoch")
        numbers = {
            key: value for key, value in values.items() if key != "epoch" and not isinstance(value, str)
        }
        translator.scalars(numbers, step, epoch, kwargs.get("context"))
        for key, value in values.items():
            if isinstance(value, str):  # accelerate's contract allows str values
                translator.text(str(key), value, step)

    @on_main_process
    def log_images(
        self, values: dict, step: int | None = None, dataformats: str = "HWC", **kwargs: Any
    ) -> None:
        """Images as ``{name: image}`` or ``{name: (image, caption)}``: numpy arrays, tensors or PIL
        images in ``dataformats`` (``HWC`` as aim and W&B take them; ``NHWC`` ... for a batch)."""
        translator = self._live().translator
        if translator is None:
            return
        batch = dataformats.upper().startswith("N") or dataformats.upper() == "CNHW"
        for key, value in values.items():
            image, caption = value if isinstance(value, tuple) else (value, "")
            if batch:
                translator.images(str(key), image, step, dataformats)
            else:
                translator.image(str(key), image, step, dataformats, caption=str(caption))

    @on_main_process
    def finish(self) -> None:
        """Flush, record status ``finished``, close and index the run (``Accelerator.end_training``)."""
        if self._experiment is not None:
            self._experiment.close("finished")
            self._finished = True
