"""A closed run is merged into aim's index by ``sink.storage.index_run``: what it writes is exactly what
aim's own ``finalize`` of the run's meta chunk writes (queries after a close are checked throughout the
suite)."""

from __future__ import annotations

import shutil
from pathlib import Path

import aim
from aim.storage.encoding import encode_path

from tracelet_callbacks.sink.repo import make_repo
from tracelet_callbacks.sink.storage import index_run, release_storage


def _closed_run(repo_path: str) -> str:
    run = aim.Run(repo=repo_path, experiment="e", system_tracking_interval=None, log_system_params=False)
    run["hparams"] = {"lr": 0.1, "layers": [64, 64], "optim": {"name": "adam", "betas": (0.9, 0.99)}}
    run.add_tag("first")
    for step in range(5):
        run.track(1.0 / (step + 1), name="loss", step=step, context={"subset": "train"})
        run.track(float(step), name="lr", step=step)
    run_hash = run.hash
    run.close()
    release_storage(run.repo, run_hash)
    return run_hash


def _index(repo_path: str) -> list[tuple[bytes, bytes]]:
    container = aim.Repo.from_path(repo_path)._get_index_container("meta", 0)
    try:
        return list(container.items())
    finally:
        container.close()


def _fresh_index(repo_path: str, stale_run: str) -> None:
    """An index holding only a stale record of ``stale_run`` (which indexing it must drop)."""
    shutil.rmtree(Path(repo_path, ".aim", "meta", "index"), ignore_errors=True)
    container = aim.Repo.from_path(repo_path)._get_index_container("meta", 0)
    try:
        container[encode_path(("meta", "chunks", stale_run, "stale"))] = b"\x00"
    finally:
        container.close()


def _aims_own_finalize(repo_path: str, run_hash: str) -> None:
    repo = aim.Repo.from_path(repo_path)
    index = repo._get_index_container("meta", 0)
    chunk = repo.request_container("meta", run_hash, read_only=True)
    try:
        chunk.tree().subtree(("meta", "chunks", run_hash)).finalize(index=index.tree().view(()))
    finally:
        index.close()
        chunk.close()


def test_index_run_writes_what_aims_finalize_writes(tmp_path: Path) -> None:
    repo_path = make_repo(str(tmp_path))
    earlier, run_hash = _closed_run(repo_path), _closed_run(repo_path)

    _fresh_index(repo_path, stale_run=run_hash)
    _aims_own_finalize(repo_path, earlier)
    _aims_own_finalize(repo_path, run_hash)
    _aims_own_finalize(repo_path, run_hash)  # again: the run's old copy is replaced, not added to
    expected = _index(repo_path)

    _fresh_index(repo_path, stale_run=run_hash)
    assert index_run(aim.Repo.from_path(repo_path), earlier) is None
    assert index_run(aim.Repo.from_path(repo_path), run_hash) is None
    assert index_run(aim.Repo.from_path(repo_path), run_hash) is None
    got = _index(repo_path)

    assert len(got) > 50  # the runs' params, tags, contexts and series names
    assert got == expected
    assert not [key for key, _ in got if key.endswith(b"stale")]
