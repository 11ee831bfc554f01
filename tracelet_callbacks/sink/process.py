"""The writer process, seen from the trainer: started, kept ready for the next run, and stopped.

:class:`Worker` is one ``python -m tracelet_callbacks.sink.worker`` process and this process's ends of
the two pipes to it. One writer is kept as this process's *spare*: started early by :func:`warm_up`
(while the trainer is still being set up, so aim is imported by the time a run needs it), or handed
back by a run that closed cleanly (:func:`keep_worker`), so the next fold, trial or ``Trainer`` pays no
second start. :func:`take_worker` hands it to the next run. A forked child lets go of its parent's
spare; at exit the spare (which holds no run) is stopped.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import subprocess
import sys
import threading

from ..config import TraceletConfig

__all__ = ["Worker", "keep_worker", "take_worker", "warm_up", "writer_pids"]

_F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe holds a whole batch, so a busy writer rarely blocks the trainer


class Worker:
    """One writer process and this process's ends of the two pipes to it."""

    def __init__(self) -> None:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        try:
            fcntl.fcntl(to_worker_w, _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tracelet_callbacks.sink.worker",
                    str(to_worker_r),
                    str(from_worker_w),
                ],
                pass_fds=(to_worker_r, from_worker_w),
                start_new_session=True,  # Ctrl-C and process-group signals are for the trainer
                env=env,
            )
        except BaseException:
            os.close(to_worker_w)
            os.close(from_worker_r)
            raise
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        _WRITER_PIDS.add(self.proc.pid)
        self.out = to_worker_w  # written by one sink at a time, under its send lock
        self.inp = from_worker_r  # read by that sink's reply thread
        self.owner = os.getpid()

    def usable(self) -> bool:
        return self.owner == os.getpid() and self.out >= 0 and self.proc.poll() is None

    def release(self, close_input: bool = True, wait: float | None = None) -> None:
        """Close our pipe ends (the worker then ends its run, if any, and exits) and reap it.

        ``close_input=False`` leaves the reply pipe to the thread still reading it, which closes it
        at the end of the stream. With ``wait`` the worker is reaped now (a dead writer's run lock
        names its pid; aim treats the lock as stale once that pid is gone); else in the background.
        """
        for name in ("out", "inp") if close_input else ("out",):
            fd = getattr(self, name)
            setattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.owner != os.getpid():
            return  # a forked copy: the worker belongs to the process that started it
        if wait is None:
            threading.Thread(target=self.proc.wait, name="tracelet-reap", daemon=True).start()
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: Writer processes this process started (the system monitor leaves them out of the trainer's figures).
_WRITER_PIDS: set[int] = set()


def writer_pids() -> frozenset[int]:
    """The pids of the writer processes this process started (finished ones included)."""
    return frozenset(_WRITER_PIDS)


# A writer waits here for this process's next run: one started early (warm_up), or one whose run closed
# cleanly (the next fold, trial or Trainer then pays no second start and aim import). One is kept;
# more are let go.
_spare: Worker | None = None
_spare_lock = threading.Lock()
_exiting = False


def warm_up(config: TraceletConfig) -> None:
    """Start this process's writer now, while the trainer is still being set up, so that it has
    imported aim by the time a run needs it (called when a logger, callback, tracker or writer is
    made). It holds no run and makes no file; unused, it is stopped when this process exits."""
    global _spare
    if config.sink_factory is not None or config.writer != "process":
        return
    with _spare_lock:
        if _exiting or (_spare is not None and _spare.usable()):
            return
        stale, _spare = _spare, None
        try:
            _spare = Worker()
        except OSError:  # no way to start a process here: the run says so when it opens
            pass
    if stale is not None:
        stale.release()


def take_worker() -> Worker:
    global _spare
    with _spare_lock:
        worker, _spare = _spare, None
    if worker is not None:
        if worker.usable():
            return worker
        worker.release()
    return Worker()


def keep_worker(worker: Worker) -> None:
    global _spare
    with _spare_lock:
        if _spare is None and worker.usable() and not _exiting:
            _spare = worker
            return
    worker.release()


@atexit.register  # registered before the run-closing handler, so it runs after it
def _stop_spare() -> None:
    """At exit the spare has no run, so nothing is lost by stopping it now rather than waiting."""
    global _spare, _exiting
    with _spare_lock:
        worker, _spare, _exiting = _spare, None, True
    if worker is not None and worker.owner == os.getpid():
        worker.proc.kill()
        worker.release(wait=5.0)


def _forget_spare() -> None:
    """In a forked child: the spare is the parent's. Only the child's copies of its pipe ends are
    closed; a run the child opens gets a writer of its own."""
    global _spare, _spare_lock
    _spare_lock = threading.Lock()  # a parent's thread may have held it at the fork
    worker, _spare = _spare, None
    if worker is not None:
        worker.release()


os.register_at_fork(after_in_child=_forget_spare)
