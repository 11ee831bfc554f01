"""How a run's RocksDB databases are made and kept while the writer writes them.

aim opens each run's databases itself, with settings made for reading; three things here change that
for a run being written, each through aim internals named where used (aim 3.29, pinned by ``aim<4``):

* :func:`roomier_storage`: bigger write buffers, and a memtable for the series that appends;
* :class:`IdleFlush`: that memtable goes to disk while the writer has nothing else to do, so a run's
  close, which the trainer waits for, does not sort and write it;
* :func:`new_run_with_hash`: a new run takes the hash the trainer chose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["IdleFlush", "new_run_with_hash", "roomier_storage"]

#: The write buffers of a run's series database while we write it (aim opens it with one of 1 MB).
SERIES_WRITE_BUFFER = 16 * 1024 * 1024
SERIES_WRITE_BUFFERS = 2

#: A caught-up writer hands RocksDB's flush of the series memtable to a thread once it holds this much,
#: so a run's close sorts and writes only what came after (see :class:`IdleFlush`).
IDLE_FLUSH_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def roomier_storage() -> Iterator[None]:
    """While a run is being created, its databases get room to write, and its series a memtable made
    for writing.

    aim opens every run's RocksDB with one 1 MB write buffer, so a run written at full speed flushes
    a small file every few thousand values and RocksDB spends most of the writer's time compacting
    them, throttling writes as they pile up (an import of a million values stalled 230 times). Two
    16 MB buffers keep the files few; memtables grow with what is written, so a small run stays small.

    RocksDB's default memtable is a skip list: each of the four keys a value takes is put in order
    as it arrives (about 1.4 µs a key here, most of ``db.write``). The series database gets a vector
    memtable instead: a put appends, and the flush sorts once. That costs reads of the memtable a sort
    each, so it suits a database this process only writes: nothing reads a run's series while it is
    written but ``rewind`` (a resumed run's first record, when RocksDB has flushed what it recovered)
    and other processes, which read the files. The meta database, read while writing, keeps its skip
    list.

    aim has no setting for this: ``aim.Run`` opens the run's databases while it is made, through
    ``aimrocks.DB(path, aimrocks.Options(**options))``, which this wraps for that moment only (aim
    3.29, pinned by ``aim<4``; options other than aim's 1 MB ones pass unchanged).
    """
    import aimrocks

    original_options, original_db = aimrocks.Options, aimrocks.DB
    vector = getattr(aimrocks, "VectorMemtableFactory", None)  # an aimrocks without it: skip lists

    def options(**settings: Any) -> Any:
        if settings.get("write_buffer_size") == 1024 * 1024 and settings.get("max_write_buffer_number") == 1:
            settings.update(
                write_buffer_size=SERIES_WRITE_BUFFER,
                max_write_buffer_number=SERIES_WRITE_BUFFERS,
                db_write_buffer_size=SERIES_WRITE_BUFFER * SERIES_WRITE_BUFFERS,
            )
        return original_options(**settings)

    def database(path: str, settings: Any, *args: Any, read_only: bool = False, **kwargs: Any) -> Any:
        where = os.path.normpath(str(path)).split(os.sep)
        if (
            vector is not None
            and not read_only
            and where[-3:-1] == ["seqs", "chunks"]
            and settings.write_buffer_size == SERIES_WRITE_BUFFER
        ):
            settings.memtable_factory = vector()
            settings.allow_concurrent_memtable_write = False  # a vector takes one writer at a time
        return original_db(path, settings, *args, read_only=read_only, **kwargs)

    aimrocks.Options, aimrocks.DB = options, database
    try:
        yield
    finally:
        aimrocks.Options, aimrocks.DB = original_options, original_db


@contextlib.contextmanager
def new_run_with_hash(run_hash: str) -> Iterator[None]:
    """While this is open, a new ``aim.Run`` gets ``run_hash`` instead of a random one.

    ``aim.Run(run_hash=...)`` only continues a run that exists; a spooled run must appear on the
    server under the hash it was spooled with. aim draws a new run's hash from
    ``aim.sdk.base_run.generate_run_hash`` (aim 3.29, pinned by ``aim<4``).
    """
    from aim.sdk import base_run

    original = base_run.generate_run_hash
    base_run.generate_run_hash = lambda *args, **kwargs: run_hash
    try:
        yield
    finally:
        base_run.generate_run_hash = original


class IdleFlush:
    """Flushes a run's series memtable to disk on a thread of its own while the writer is idle.

    The series database's vector memtable (:func:`roomier_storage`) is sorted and written out when it
    flushes, and whatever it holds when the run closes is flushed by the close, which the trainer's
    ``close()`` waits for: 180,000 values (17 MB) took about 0.2 s there on a 2-core machine. A writer
    that has caught up calls :meth:`start`, which spends that time at once, while the trainer trains;
    RocksDB takes writes meanwhile into a fresh memtable (aimrocks releases Python's lock while it
    flushes), and the run's close calls :meth:`wait` first.
    Below ``IDLE_FLUSH_BYTES`` nothing happens, so a writer that catches up after every small batch
    does not make a file of each.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def start(self, container: Any) -> None:
        """Flush the database of ``container`` (aim's ``RocksContainer``, whose ``_db`` and ``path``
        aim<4 pins; ``None``: nothing to do) if its memtable is large and its disk has room for it."""
        db = getattr(container, "_db", None)
        if db is None or (self._thread is not None and self._thread.is_alive()):
            return
        try:
            size = int(db.get_property(b"rocksdb.cur-size-active-mem-table") or 0)
            # a full disk can hold RocksDB's flush for many seconds, and the run's close would wait
            # for it: the close's own flush, which handles that, is left to do it
            room = size >= IDLE_FLUSH_BYTES and shutil.disk_usage(container.path).free > 2 * size
        except Exception:  # a closed or foreign database: its close flushes it
            return
        if room:
            self._thread = threading.Thread(
                target=_flush_quietly, args=(db,), name="tracelet-memtable-flush", daemon=True
            )
            self._thread.start()

    def wait(self) -> None:
        """Return once no flush started here is running."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


def _flush_quietly(db: Any) -> None:
    """RocksDB's flush of ``db``'s memtables. A failure is left to the run's close, which flushes the
    same memtable again and reports what goes wrong (a full disk ...)."""
    with contextlib.suppress(Exception):
        db.flush()
