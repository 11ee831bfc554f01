"""Logging to an ``aim server`` through the spool, so a server that goes away loses nothing.

:func:`aim_sink` is what every writer opens. For a local repo that is an
:class:`~tracelet_callbacks.sink.run.AimSink`. With ``remote_uri`` it is a :class:`ForwardingSink`:

* every record is written to the spool first (a local AIM repo, :mod:`~tracelet_callbacks.sink.spool`),
  with its automatic step made explicit, so the training loop's acknowledgements never wait for the
  network and every series point has the same key in both places;
* a :class:`~tracelet_callbacks.sink.forwarder.Forwarder` thread sends the same records to the server
  as they come; when the server stops answering, one warning names the spool and the forwarder waits,
  then brings the server up to date from the spool and goes on live;
* ``flush()`` is the spool's; ``close()`` waits for the server only while it makes progress, and
  otherwise says which command sends the rest.

With ``offline=True`` there is no forwarder: ``python -m tracelet_callbacks sync`` sends the run later.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from ..config import TraceletConfig
from ..core import records as rec
from ..errors import TraceletError, say
from .contract import Sink
from .forwarder import Forwarder, StoredArtifact, not_sent
from .heartbeat import Heartbeat
from .rewind import hold_steps
from .run import AimSink
from .spool import read_mark, seed_from, write_mark

__all__ = ["ForwardingSink", "RunNotFound", "aim_sink"]


class RunNotFound(TraceletError):
    """The run to continue is neither on the server nor in the spool (deleted, or a hash no run has):
    its own type, so a trainer continuing a checkpoint's run can start a new run instead of failing."""


def aim_sink(
    config: TraceletConfig, *, takeover: bool = False, argv: list[str] | None = None, new_run: bool = False
) -> Any:
    """The sink that writes ``config``'s run: straight into a local repo, or through the spool.
    ``new_run``: ``config.run_hash`` names a run to make, not one to look for."""
    if config.remote_uri:
        return ForwardingSink(config, takeover=takeover, argv=argv, new_run=new_run)
    return AimSink(config, takeover=takeover, argv=argv, heartbeat=True, new_run=new_run)


class ForwardingSink(Sink):
    """Writes a server's run into the spool and forwards it (see the module docstring)."""

    def __init__(
        self,
        config: TraceletConfig,
        *,
        takeover: bool = False,
        argv: list[str] | None = None,
        new_run: bool = False,
    ) -> None:
        import os

        self.config = config
        self.remote_uri: str = config.remote_uri  # type: ignore[assignment]
        # the artifacts go where a run logged straight to the server would put them
        artifacts = config.artifacts_uri or "file://" + os.path.abspath("aim-artifacts")
        spool_config = config.replace(remote_uri=None, repo_path=config.spool_path, artifacts_uri=artifacts)
        self._spool = AimSink(spool_config, takeover=takeover, argv=argv, new_run=new_run)
        self._new_run = new_run
        self._lock = threading.RLock()
        self._forwarder = Forwarder(config, self._spool, notify=lambda text: self.notify(text))
        self._steps: dict[tuple, int] = {}
        self._heartbeat = Heartbeat(self, tick=self._forwarder.check_stall)
        #: How news about the server reaches the user: a warning here; the writer process passes it
        #: on to the training process (``wire.Notice``).
        self.notify: Callable[[str], None] = say

    # -- the AimSink surface the writers use ---------------------------------------------------------

    @property
    def hash(self) -> str:
        return self._spool.hash

    @property
    def artifacts_uri(self) -> str | None:
        return self._spool._artifacts_uri

    @property
    def failures(self) -> int:
        return self._spool.failures

    @property
    def last_error(self) -> str | None:
        return self._spool.last_error

    @property
    def index_error(self) -> str | None:
        return self._spool.index_error

    @property
    def status(self) -> str | None:  # type: ignore[override]
        return self._spool.status

    @property
    def is_open(self) -> bool:
        return self._spool.is_open

    @property
    def spool_path(self) -> str:
        return self.config.spool_path

    def open(self) -> None:
        with self._lock:
            if self._spool.is_open:
                return
            made_here = self._new_run
            if self.config.run_hash and not self._new_run:
                made_here = self._prepare_resume(self.config.run_hash)
            self._spool.open()
            if made_here:  # the spool holds all of it: a copy may replace the server's
                write_mark(self.spool_path, self.hash, server=self.remote_uri, whole=True)
            if not self.config.offline:
                self._forwarder.start()
            self._heartbeat.start()

    def _prepare_resume(self, run_hash: str) -> bool:
        """Before a run is resumed: whether it will be made here (neither the spool nor the server
        has it). A run the server has may hold more than this spool: its copy is marked not whole
        before anything of it lands in the spool, and a spool that lacks it gets the run's meta data
        only (params, tags, each series' last step), not its points. Those stay on the server; a copy
        from a spool run that is not whole adds to them and never deletes one."""
        import aim

        spool_repo = aim.Repo.from_path(self._spool._local_repo(self.config.spool_path))
        in_spool = spool_repo.run_exists(run_hash)
        if self.config.offline:
            return not in_spool and self.config.resume == "allow"
        server = aim.Repo.from_path(self.remote_uri)
        try:
            on_server = server.run_exists(run_hash)
        except Exception:
            if in_spool:  # the server is away: go on from the spool, the forwarder catches up
                write_mark(self.spool_path, run_hash, server=self.remote_uri, whole=False)
                return False
            raise
        if not on_server:
            if not in_spool and self.config.resume != "allow":  # aim's own error would name the spool
                raise RunNotFound(
                    f"tracelet: could not resume run {run_hash!r}: the AIM server {self.remote_uri} holds "
                    "no such run, nor does the spool"
                )
            return not in_spool and self.config.resume == "allow"
        unfinished = read_mark(self.spool_path, run_hash)["seeded"] is False  # a start that was killed
        write_mark(self.spool_path, run_hash, server=self.remote_uri, whole=False)
        if not in_spool or unfinished:
            write_mark(self.spool_path, run_hash, seeded=False)
            seed_from(server, run_hash, spool_repo)
            write_mark(self.spool_path, run_hash, seeded=True)
        return False

    def submit(self, records: Any) -> None:
        with self._lock:
            records = self._explicit_steps(list(records))
            rewinds = [
                record.step
                for record in records
                if type(record) is rec.Resumed and record.step is not None and not record.keep
            ]
            whole = True
            if rewinds:  # a spool run that is not whole: the server's points after it go on the server
                mark = read_mark(self.spool_path, self.hash)
                whole = mark["whole"]
                if not whole:
                    earliest = min(rewinds if mark["rewind"] is None else [*rewinds, mark["rewind"]])
                    write_mark(self.spool_path, self.hash, rewind=earliest)
            self._spool.submit(records)  # an artifact that cannot be stored raises here, for the caller
            if not whole:  # automatic steps go on from the checkpoint in series only the server holds
                self._spool.flush()
                hold_steps(self._spool.run, min(rewinds))
            if not self._forwarder.running:
                return
            forwarded = []
            for record in records:
                if isinstance(record, rec.Artifact):  # the server's run gets the entry, not a second copy
                    entry = self._spool.run.meta_run_tree.subtree("artifacts")[record.name]
                    forwarded.append(StoredArtifact(record.name, entry))
                else:
                    forwarded.append(record)
            self._forwarder.enqueue(forwarded)

    def get(self, key: str) -> Any:
        return self._spool.get(key)

    def flush(self) -> None:
        """What was submitted is durable in the spool; the server is not waited for."""
        self._spool.flush()
        self._forwarder.check_stall()

    def close(self, status: str = "finished") -> None:
        with self._lock:
            if not self._spool.is_open and self._spool.status is not None:
                return
            self._heartbeat.stop()
            self._spool.close(status)
            if not self._forwarder.finish(status) and not self.config.offline:
                # forwarding was given up on earlier
                what = f"run {self.hash} was not sent to the AIM server at {self.remote_uri}"
                self.notify(not_sent(what, self.spool_path, self.remote_uri))

    # -- steps ----------------------------------------------------------------------------------------

    def _explicit_steps(self, records: list) -> list:
        """Give each record with an automatic step the step the spool would give it, so both copies
        store it under the same key (aim counts automatic steps per series from its last step)."""
        out = []
        for record in records:
            name = getattr(record, "name", None) if not isinstance(record, rec.LogLine) else "logs"
            if name is None or not hasattr(record, "step"):
                out.append(record)
                continue
            key = (name, tuple(sorted(record.context.items())))
            following = self._steps.get(key)
            if following is None:
                following = self._steps[key] = self._next_step(name, record.context)
            if record.step is None:
                step = following
                record = (
                    record._replace(step=step)
                    if isinstance(record, rec.Scalar)
                    else dataclasses.replace(record, step=step)
                )
            self._steps[key] = max(following, record.step + 1)
            out.append(record)
        return out

    def _next_step(self, name: str, context: dict) -> int:
        """The step aim would give the next automatic value of the series (0 for a new one)."""
        from aim.storage.context import Context

        info = self._spool.run._tracker.sequence_infos.get((Context(context).idx, name))
        return info.count if info is not None and info.initialized else 0
