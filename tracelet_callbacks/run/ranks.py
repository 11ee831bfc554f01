"""This process's rank, for entry points that have no framework to ask (the plain-script API, and
the Hugging Face callback before the ``Trainer`` says)."""

from __future__ import annotations

import os

__all__ = ["global_rank"]


def global_rank() -> int:
    """This process's rank in a distributed job (0 when it is not one).

    >>> global_rank() >= 0
    True
    """
    for variable in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        value = os.environ.get(variable)
        if value and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0
