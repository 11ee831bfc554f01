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
from .core.routing import RoutingTable
from .errors import TraceletError, TraceletValueError, TraceletWarning
from .run.experiment import Experiment, RunHandle
from .session import get_active_experiment, start_logging, stop_logging

if TYPE_CHECKING:
    from .integrations.tensorboard.writer import TraceletWriter

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

#: public name -> (module, the extra that installs what it needs)
_LAZY = {
    "TraceletWriter": (".integrations.tensorboard.writer", "tensorboard"),
    "TraceletAimLogger": (".integrations.lightning.logger", "lightning"),
    "TraceletCallback": (".integrations.hf.callback", "transformers"),
    "TraceletAimTracker": (".integrations.accelerate", "accelerate"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tracelet_callbacks' has no attribute {name!r}")
    module_name, extra = _LAZY[name]
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
