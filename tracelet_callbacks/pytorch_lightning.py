"""``from tracelet_callbacks.pytorch_lightning import TraceletAimLogger`` for the standalone
``pytorch_lightning`` package (see :mod:`tracelet_callbacks.integrations.lightning.pytorch_lightning`)."""

from __future__ import annotations

from .integrations.lightning.pytorch_lightning import TraceletAimLogger

__all__ = ["TraceletAimLogger"]
