"""How the suite's ``torchrun`` / ``accelerate launch`` jobs end their ranks.

torch 2.13's gloo backend destroys a finished collective (with the tensors it holds) on its own worker
thread, ``pt_gloo_runloop``, some moments after the Python side saw it complete. When that moment
falls while the interpreter is finalizing, the thread cannot take the GIL to drop the tensors, is
unwound by ``pthread_exit`` through a C++ frame that may not throw, and the rank aborts with
"terminate called without an active exception" (SIGABRT). ``torchrun`` then stops the other rank,
often before it is done. A plain Hugging Face ``Trainer`` job with no logger at all does it too: about
1 run in 8 on this 2-core machine when it is busy (a gdb backtrace of such a rank showed
``AsyncAllgatherWork::~AsyncAllgatherWork`` -> ``PyEval_AcquireThread`` -> ``PyThread_exit_thread``).

So each job's rank leaves with :func:`leave` once it has written its report: it skips the
interpreter's teardown, where that race is. Everything these tests check has happened by then: the
rank's run was closed by ``stop_logging()``, ``end_training()`` or the end of ``train()``, which return
only once the run is durable; ``atexit`` handlers (the last resort for a run left open) never run, so
a job that relied on them would fail here rather than pass.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def leave() -> NoReturn:
    """End this rank at once, with status 0, after flushing what it printed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
