"""This process's rank, for entry points that have no framework to ask (the plain-script API, and
the Hugging Face callback before the ``Trainer`` says)."""

from __future__ import annotations

import os

__all__ = ["global_rank", "launched_as_rank_zero"]


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


def launched_as_rank_zero() -> bool:
    """Whether the launcher's variables say this is rank 0 (or no distributed job at all): the only
    process worth starting a writer for before the framework knows its rank. Lightning's own launcher
    sets only ``LOCAL_RANK`` and ``NODE_RANK`` in the processes it starts.

    >>> launched_as_rank_zero() in (True, False)
    True
    """
    if global_rank() != 0:
        return False
    return all(os.environ.get(variable, "0").strip() in ("", "0") for variable in ("LOCAL_RANK", "NODE_RANK"))
