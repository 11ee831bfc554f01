"""One module (or package) per framework; each maps its framework's events onto the run layer.

Adapters import :mod:`tracelet_callbacks.run` and :mod:`tracelet_callbacks.core`, never each other,
and each imports its framework at module import time, so ``import tracelet_callbacks`` needs none.
"""
