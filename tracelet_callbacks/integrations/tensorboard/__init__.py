"""TensorBoard: :class:`TraceletWriter` (``writer``), and the ``SummaryWriter`` methods that forward
each ``add_*`` to the translator, which ``start_logging`` also patches onto ``SummaryWriter`` itself
(``forwarding``)."""

from __future__ import annotations

from .forwarding import patch_summary_writer, unpatch_summary_writer
from .writer import TraceletWriter

__all__ = ["TraceletWriter", "patch_summary_writer", "unpatch_summary_writer"]
