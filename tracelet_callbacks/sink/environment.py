"""What we record about the process instead of aim's ``log_system_params`` (which needs pkg_resources).

Stored under ``run["__system_params"]``, the key aim's UI reads, in aim's layout. Environment
variables are left out on purpose: they are where secrets live.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from ..core.params import redact_text, redacted_argv

__all__ = ["environment_params", "redacted_argv"]


def environment_params(argv: list[str] | None = None) -> dict[str, Any]:
    """The run's ``__system_params``; ``argv`` is the training process's command line (the writer
    process records it for the trainer, so its own ``sys.argv`` would be the wrong one)."""
    return {
        "packages": dict(_packages()),
        "git_info": _git_info(),
        "executable": sys.executable,
        "arguments": redacted_argv(sys.argv if argv is None else argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


@functools.lru_cache(maxsize=1)
def _packages() -> tuple[tuple[str, str], ...]:
    """Installed distributions and their versions, read once per process.

    Only the header lines of each METADATA file are looked at: parsing whole files (long
    descriptions included) with ``dist.metadata`` took 0.16 s for 200 packages, at every run start.
    """
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        fields = _header(dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "")
        name, version = fields.get("name"), fields.get("version")
        if name and version:
            found[name.lower()] = version
    return tuple(sorted(found.items()))


def _header(text: str) -> dict[str, str]:
    """``Name`` and ``Version`` from the header of a core-metadata file (it ends at the first blank line)."""
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and key.lower() in ("name", "version"):
            fields.setdefault(key.lower(), value.strip())
    return fields


def _git_info() -> dict[str, Any]:
    """Commit, branch, origin and whether tracked files changed: two ``git`` calls (each is a fork of
    the writer process, which runs this at every run start)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=2, check=True)
        return done.stdout.strip()

    try:
        lines = git("status", "--porcelain=v2", "--branch", "--untracked-files=no").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}  # no git, or not a repository
    header = dict(line[2:].partition(" ")[::2] for line in lines if line.startswith("# "))
    commit = header.get("branch.oid", "")
    if not commit or commit.startswith("("):  # "(initial)": nothing committed yet
        return {}
    try:
        origin = redact_text(git("config", "--get", "remote.origin.url"))
    except (OSError, subprocess.SubprocessError):
        origin = ""  # no remote named origin
    branch = header.get("branch.head", "")
    return {
        "commit": {"hash": commit},
        "branch": "HEAD" if branch.startswith("(") else branch,  # "(detached)", as rev-parse says it
        "remote_origin_url": origin,
        "dirty": any(not line.startswith("#") for line in lines),
    }
