"""``TraceletAimLogger``: a Lightning ``Logger`` that writes to an AIM run.

For ``import lightning`` (``lightning.pytorch``). Code written against the standalone
``pytorch_lightning`` package imports the twin class instead, because a ``pytorch_lightning.Trainer``
wants a ``pytorch_lightning`` logger::

    from tracelet_callbacks.pytorch_lightning import TraceletAimLogger

When only ``pytorch_lightning`` is installed, this module (and ``tracelet_callbacks.TraceletAimLogger``)
gives that twin. What the logger does, and how it finds the trainer's settings and the run to resume,
is described in :mod:`tracelet_callbacks.integrations.lightning.core`.
"""

from __future__ import annotations

from .core import AimLoggerCore

__all__ = ["TraceletAimLogger"]

try:
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import Logger
except ModuleNotFoundError as exc:
    if exc.name != "lightning":
        raise
    try:  # the standalone package is all there is: its twin serves
        from .pytorch_lightning import TraceletAimLogger
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            'TraceletAimLogger needs Lightning: pip install "tracelet-callbacks[lightning]"', name="lightning"
        ) from exc
else:

    class TraceletAimLogger(AimLoggerCore, Logger):  # type: ignore[no-redef]
        """A Lightning logger whose run is an AIM run: ``Trainer(logger=TraceletAimLogger())``.

        Args:
            config: a settings dict, below keywords in priority.
            **settings: any :class:`~tracelet_callbacks.TraceletConfig` field: ``repo_path``,
                ``experiment_name``, ``run_name``, ``tags``, ``remote_uri``, ``run_hash`` (continue that
                run), ``log_model`` (``False``; ``True``: best and last checkpoints when training ends;
                ``"all"``: each checkpoint as it is saved; stored as artifacts under ``checkpoints/``),
                ``strict``, ``routing`` ... Unset ones come from ``TRACELET_*`` env vars, then defaults.

        Without code of the user's: the module's and datamodule's ``save_hyperparameters()`` land in
        ``run["hparams"]``, the trainer's settings (epochs, steps, precision, accumulation, clipping,
        strategy, devices, nodes, the ``seed_everything`` seed) in ``run["trainer"]``, each optimizer and
        scheduler in ``run["optimizers"]`` / ``run["schedulers"]``, parameter counts in ``run["model"]``.
        ``self.log("train_loss", ...)`` becomes metric ``loss`` in context ``{"subset": "train"}`` at
        Lightning's global step, with the epoch as AIM's epoch. ``fit(ckpt_path=...)`` continues the
        run that wrote the checkpoint. ``version`` is the AIM run hash.

        Example::

            logger = TraceletAimLogger(repo_path="./aim_repo", run_name="baseline", log_model=True)
            trainer = Trainer(max_epochs=3, logger=logger)
            trainer.fit(model, datamodule=data)   # the run is closed and queryable when fit returns
            trainer.test(model, datamodule=data)  # same run, test context
        """

        _trainer_type = Trainer
