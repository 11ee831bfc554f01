"""Shared fixtures: a fresh AIM repo folder per test, and read-back helpers over aim's public API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import tracelet_callbacks as tracelet


@pytest.fixture(autouse=True)
def _no_system_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs record no system metrics unless a test asks (they would add records to every run)."""
    monkeypatch.setenv("TRACELET_SYSTEM_TRACKING_INTERVAL", "off")


@pytest.fixture
def repo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder to hold the AIM repo; also the working directory, as in the seed's scripts."""
    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith("TRACELET_"):
            monkeypatch.delenv(variable)
    # a fast default for tests: no system-metrics thread sampling every 10 s
    monkeypatch.setenv("TRACELET_SYSTEM_TRACKING_INTERVAL", "off")
    yield tmp_path
    tracelet.stop_logging()


def open_repo(path: Path | str) -> Any:
    import aim

    return aim.Repo(str(path))


def read_run(path: Path | str, run_hash: str) -> Any:
    import aim

    return aim.Run(run_hash, repo=str(path), read_only=True)


def series(path: Path | str, name: str, context: dict | None = None, run_hash: str | None = None) -> dict:
    """``{step: value}`` of one metric in one context, read back through ``Repo.query_metrics``."""
    query = f"metric.name == {name!r}"
    if run_hash:
        query += f" and run.hash == {run_hash!r}"
    found = {}
    for metric in open_repo(path).query_metrics(query).iter():
        if context is not None and metric.context.to_dict() != context:
            continue
        steps, columns = metric.data.items_list()
        found.update(zip(steps, columns[0], strict=True))
    return found


def epochs(path: Path | str, name: str, context: dict, run_hash: str) -> dict[int, int]:
    """``{step: AIM epoch}`` of one metric in one context of one run."""
    query = f"metric.name == {name!r} and run.hash == {run_hash!r}"
    for metric in open_repo(path).query_metrics(query).iter():
        if metric.context.to_dict() == context:
            steps, (_values, found, *_rest) = metric.data.items_list()
            return dict(zip(steps, found, strict=True))
    return {}


def sequence_names(run: Any, kind: str) -> set[str]:
    """Names of one kind of sequence (``"images"``, ``"texts"``, ``"distributions"``, ``"audios"``)."""
    return {info["name"] for info in run.collect_sequence_info([kind])[kind]}
