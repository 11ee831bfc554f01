"""Points sent to an aim server several requests at a time, in requests the server unpacks cheaply.

aim's own client sends each write to the server and waits for its ``OK`` before sending the next, so
the server's one event loop sits idle for a round trip between requests; and the server unpacks a
request in time that grows with the square of its size (``message_utils.unpack_args`` copies the
rest of the message for every field it reads), so a request of 2,000 points costs it far more than
sixteen of 125. Profiled with py-spy on a stock ``aim server`` (aim 3.29.1, this 2-core machine,
100,000 values over 8 series, quiet): aim's own path spent 39 % of the server's loop unpacking and
24 % committing to RocksDB, 6,100 values/s; 125 points a request with 8 requests in flight spent
28 % unpacking and 30 % committing, 8,200 values/s.

A :class:`Pipeline` speaks the server's own protocol (the ``write-instruction`` websocket aim's
client uses, with the same client id, so the server's handles of the run's trees are valid on it)
on a connection of its own. It sends ``update(path, [(key, value), ...])`` instructions for the
trees aim's client opened, at most :data:`WINDOW` unanswered, and raises on the first answer that is
not ``OK`` (the forwarder then falls behind and copies the run from the spool: nothing is lost).

Order with aim's own queue: the server applies each connection's requests in order, not the two
connections' requests in order with each other. So :meth:`Pipeline.update` first waits until aim's
client has sent what it queued (a new series' arrays, a rewind's deletions), and a caller calls
:meth:`Pipeline.drain` before it queues anything that must come after the points (their meta keys).

This is aim 3.29's private protocol, pinned by ``aim<4`` and by tests/test_pipeline.py against a live
server; when it is not what this module expects, :func:`pipeline_for` answers ``None`` and the
caller writes through aim's client as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger("tracelet_callbacks")

__all__ = ["PAIRS", "WINDOW", "Pipeline", "pipeline_for", "send"]

#: Points of one array per request: small enough that the server unpacks it in linear time.
PAIRS = 125
#: Requests sent and not yet answered.
WINDOW = 8
#: Seconds one answer may take before the connection counts as lost (a busy server answers sooner).
ANSWER_SECS = 120.0


class Pipeline:
    """A connection to the server ``repo`` (a remote ``aim.Repo``) that writes several requests ahead.

    Use one per thread: ``pipeline.update(tree, pairs)`` for each array to write, then
    ``pipeline.drain()``; when it returns every point is on the server, or it raised.
    """

    def __init__(self, repo: Any) -> None:
        import websockets
        from aim.ext.transport.message_utils import encode_tree, pack_args
        from websockets.sync.client import connect

        client = repo._client
        self._queue = client.get_queue()
        self._encode, self._pack = encode_tree, pack_args
        url = f"{client._ws_protocol}{client.remote_path}/tracking/{client.uri}/write-instruction/"
        # websockets 14 renamed ``ssl_context`` (which aim's client still passes) to ``ssl``, and 17
        # asks a connection that outlives a ``with`` block to say so
        major = _major(websockets.__version__)
        options: dict[str, Any] = {"ssl" if major >= 14 else "ssl_context": client.ssl_context}
        if major >= 17:
            options["legacy"] = True
        self._socket = connect(url, additional_headers=client.request_headers, max_size=None, **options)
        self._unanswered = 0
        self.closed = False  # after a failure: the caller's next write needs a new pipeline

    def update(self, tree: Any, pairs: Sequence[tuple[Any, Any]]) -> None:
        """Write ``pairs`` (``(key, value)``) into ``tree``, a tree view aim's client opened on the
        server (a ``SubtreeView`` of a run's tree, or the tree itself)."""
        handler, path = _target(tree)
        self._queue.wait_for_finish()  # what aim's client queued before (an array made) goes first
        with self._failing():
            for start in range(0, len(pairs), PAIRS):
                instruction = [(handler, "update", (path, list(pairs[start : start + PAIRS])))]
                message = self._pack(self._encode(instruction, strict=False))
                if self._unanswered >= WINDOW:
                    self._answer()
                self._socket.send(message)
                self._unanswered += 1

    def drain(self) -> None:
        """Return once the server has answered every request sent; raise if one failed."""
        with self._failing():
            while self._unanswered:
                self._answer()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.closed = True
            self._socket.close()

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """A failure ends the connection (and its thread): the caller's next step is a new one."""
        try:
            yield
        except BaseException:
            self._unanswered = 0
            self.closed = True
            self._socket.close()
            raise

    def _answer(self) -> None:
        answer = self._socket.recv(timeout=ANSWER_SECS)
        self._unanswered -= 1
        if answer != b"OK":
            raise _refusal(answer)


def pipeline_for(repo: Any) -> Pipeline | None:
    """A :class:`Pipeline` to the server ``repo``, or ``None`` when this aim's client is not the one
    it was written against (or the server cannot be reached: the caller's own writes say so)."""
    try:
        return Pipeline(repo)
    except Exception as exc:
        log.debug("tracelet: writing through aim's own client (no pipeline: %r)", exc)
        return None


def send(into: Any, pairs: list, pipeline: Pipeline | None) -> None:
    """Add ``pairs`` (``(key, value)``) to the array ``into``: through ``pipeline`` where the caller
    has one (several requests in flight), else in one request of aim's own client."""
    if pipeline is None:
        into.update((), pairs)
    else:
        pipeline.update(into, pairs)


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _target(tree: Any) -> tuple[Any, tuple]:
    """The server's handle of the tree behind ``tree`` and ``tree``'s path inside it."""
    path: tuple = ()
    while not hasattr(tree, "_handler"):
        path = tree.absolute_path(path)  # a SubtreeView: its prefix goes first
        tree = tree.tree
    return tree._handler, path


def _refusal(answer: bytes) -> Exception:
    """The server's error as an exception (it answers ``OK``, or the error it raised)."""
    try:
        from aim.ext.transport.message_utils import decode_tree, raise_exception, unpack_args

        raise_exception(decode_tree(unpack_args(answer)))
    except Exception as exc:
        return exc
    return RuntimeError(f"the aim server refused a write: {answer[:200]!r}")
