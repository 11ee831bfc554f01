"""``TraceletAimLogger`` for the standalone ``pytorch_lightning`` package.

The same logger as :class:`.logger.TraceletAimLogger` (see there for the arguments), built on
``pytorch_lightning.loggers.Logger`` so that a ``pytorch_lightning.Trainer`` takes it::

    from pytorch_lightning import Trainer
    from tracelet_callbacks.pytorch_lightning import TraceletAimLogger

    trainer = Trainer(max_epochs=3, logger=TraceletAimLogger(experiment_name="mnist"))
"""

from __future__ import annotations

from .core import AimLoggerCore

try:
    from pytorch_lightning import Trainer
    from pytorch_lightning.loggers import Logger
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        'this TraceletAimLogger needs pytorch_lightning: pip install "tracelet-callbacks[pytorch-lightning]"',
        name=exc.name,
    ) from exc

__all__ = ["TraceletAimLogger"]


class TraceletAimLogger(AimLoggerCore, Logger):
    """A ``pytorch_lightning`` logger whose run is an AIM run: ``Trainer(logger=TraceletAimLogger())``.

    Arguments and behaviour as :class:`.logger.TraceletAimLogger`.
    """

    _trainer_type = Trainer
