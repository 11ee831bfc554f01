"""AIM's web UI from Python: links that open it on a query, and ``aim up`` on a free local port.

``explorer_url`` writes the address the Metrics explorer itself shows after a search in its advanced
mode, so a script can print one link that puts, say, a learning-rate sweep's loss curves in one chart::

    >>> explorer_url('metric.name == "loss"', "http://127.0.0.1:43800")[:53]
    'http://127.0.0.1:43800/metrics?select=O-JTdCJTIyb3B0a'

``AimUI`` is what the docs' screenshots and the browser test use to bring the UI up for one repo.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["AimUI", "explorer_url", "free_port", "run_url"]

#: What the UI's own ``encodeURI`` leaves as it is, besides letters and digits.
_URI_SAFE = ";,/?:@&=+$-_.!~*'()#"


def explorer_url(query: str, base_url: str = "http://127.0.0.1:43800", explorer: str = "metrics") -> str:
    """The link that opens an explorer (``metrics``, ``images``, ``params`` ...) on an AimQL query.

    The UI keeps its state in the address: JSON, URI-escaped, base64 with ``-`` / ``_`` and no
    padding, after the prefix ``O-``.
    """
    state = {"options": [], "query": "", "advancedMode": True, "advancedQuery": query}
    escaped = urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe=_URI_SAFE)
    packed = base64.b64encode(escaped.encode("ascii")).decode("ascii")
    packed = packed.rstrip("=").replace("+", "-").replace("/", "_")
    return f"{base_url.rstrip('/')}/{explorer}?select=O-{packed}"


def run_url(run_hash: str, tab: str = "overview", base_url: str = "http://127.0.0.1:43800") -> str:
    """One run's page: ``overview``, ``run_parameters``, ``metrics``, ``system``, ``distributions``,
    ``images`` ...

        >>> run_url("0123abcd", "metrics")
        'http://127.0.0.1:43800/runs/0123abcd/metrics'
    """
    return f"{base_url.rstrip('/')}/runs/{run_hash}/{tab}"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AimUI:
    """``aim up`` over one repo on a free port of 127.0.0.1, for a ``with`` block.

    Entering starts it and returns once its API answers (``timeout`` seconds at most: a busy machine
    takes half a minute); leaving stops it, by its own process group, and nothing else.

    Args:
        repo: the folder that holds ``.aim``.
        timeout: how long to wait for the UI to answer before raising ``RuntimeError``.

    Example::

        with AimUI("path/to/folder") as ui:
            print(explorer_url('metric.name == "loss"', ui.base_url))  # open it while the block runs
    """

    def __init__(self, repo: str | os.PathLike[str], timeout: float = 180.0) -> None:
        self.repo = Path(repo)
        self.timeout = timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def base_url(self) -> str:
        """Where the UI answers, ``http://127.0.0.1:<port>``, once the ``with`` block has started it."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AimUI:
        self.port = free_port()
        beside = Path(sys.executable).with_name("aim")  # this environment's aim, as in an activated venv
        aim = str(beside) if beside.exists() else shutil.which("aim") or "aim"
        command = [aim, "up", "--repo", str(self.repo), "--host", "127.0.0.1", "--port", str(self.port)]
        handle, name = tempfile.mkstemp(prefix="aim-up-", suffix=".log")
        self._log = Path(name)
        try:
            with os.fdopen(handle, "wb") as log:
                self._process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
            self._wait_until_it_answers()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_it_answers(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"aim up exited with {self._process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/projects/", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        waited = f"{self.timeout:.0f} s"
        raise RuntimeError(f"aim up did not answer on {self.base_url} within {waited}: {self.log_tail()}")

    def log_tail(self, size: int = 2000) -> str:
        """The end of what ``aim up`` printed (for error messages)."""
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-size:]

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is not None:  # the whole group: uvicorn's server process outlives its parent
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        if self._log is not None:
            self._log.unlink(missing_ok=True)
