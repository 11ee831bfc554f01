"""Send what PyTorch training logs to an AIM run, from wherever it is already logged.

>>> import tracelet_callbacks as tracelet
>>> sorted(tracelet.__all__)[:3]
['Experiment', 'RoutingTable', 'RunHandle']

The framework adapters are imported on first use, so ``import tracelet_callbacks`` needs none of
lightning, transformers, accelerate or tensorboard.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import TraceletConfig
from .errors import TraceletError, TraceletValueError, TraceletWarning

if TYPE_CHECKING:
    from .core.routing import RoutingTable
    from .integrations.accelerate import TraceletAimTracker
    from .integrations.hf.callback import TraceletCallback
    from .integrations.lightning.logger import TraceletAimLogger
    from .integrations.tensorboard.writer import TraceletWriter
    from .run.experiment import Experiment, RunHandle
    from .session import get_active_experiment, start_logging, stop_logging

__version__ = "0.1.0"

__all__ = [
    "Experiment",
    "RoutingTable",
    "RunHandle",
    "TraceletAimLogger",
    "TraceletAimTracker",
    "TraceletCallback",
    "TraceletConfig",
    "TraceletError",
    "TraceletValueError",
    "TraceletWarning",
    "TraceletWriter",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]

#: public name -> (module, the extra that installs what it needs; ``None``: nothing to install).
#: Loaded on first use: the framework adapters (each needs its framework), and the run layer, which
#: the writer process never needs (it imports this package for its config and its sink modules only,
#: and each module it spares is CPU taken from a training that has just started).
_LAZY = {
    "Experiment": (".run.experiment", None),
    "RunHandle": (".run.experiment", None),
    "RoutingTable": (".core.routing", None),
    "get_active_experiment": (".session", None),
    "start_logging": (".session", None),
    "stop_logging": (".session", None),
    "TraceletWriter": (".integrations.tensorboard.writer", "tensorboard"),
    "TraceletAimLogger": (".integrations.lightning.logger", "lightning"),
    "TraceletCallback": (".integrations.hf.callback", "transformers"),
    "TraceletAimTracker": (".integrations.accelerate", "accelerate"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tracelet_callbacks' has no attribute {name!r}")
    module_name, extra = _LAZY[name]
    if extra is None:
        return getattr(importlib.import_module(module_name, __name__), name)
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}{module_name}":  # the adapter module itself is missing
            raise ModuleNotFoundError(
                f"{name} is not part of this version of tracelet-callbacks yet"
            ) from exc
        raise ModuleNotFoundError(
            f'{name} needs an extra: pip install "tracelet-callbacks[{extra}]"'
        ) from exc
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
