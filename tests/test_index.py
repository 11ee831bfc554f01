"""A closed run is merged into aim's index by ``sink.storage.index_run``, and at the end of a run by
``close_and_index``, which also closes the run's databases: what they write is exactly what aim's own
``finalize`` of the run's meta chunk writes (queries after a close are checked throughout the suite)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import aim
from aim.storage.encoding import encode_path
from aim.storage.utils import BLOB
from PIL import Image

from tracelet_callbacks.sink.repo import make_repo
from tracelet_callbacks.sink.storage import close_and_index, index_run, release_storage


def _run_left_open(repo_path: str) -> aim.Run:
    """A run aim has closed, its databases still open (as at the end of ours, which holds the run)."""
    run = aim.Run(repo=repo_path, experiment="e", system_tracking_interval=None, log_system_params=False)
    run["hparams"] = {"lr": 0.1, "layers": [64, 64], "optim": {"name": "adam", "betas": (0.9, 0.99)}}
    run.add_tag("first")
    for step in range(5):
        run.track(1.0 / (step + 1), name="loss", step=step, context={"subset": "train"})
        run.track(float(step), name="lr", step=step)
    # an image series keeps its first and last image in the meta chunk, as values aim reads on demand
    run.track(aim.Image(Image.new("RGB", (4, 4), (9, 0, 0))), name="pictures", step=0)
    run.close()
    return run


def _closed_run(repo_path: str) -> str:
    run = _run_left_open(repo_path)
    release_storage(run.repo, run.hash)
    return run.hash


_OPEN_RUN = """
import sys, aim
repo = aim.Repo.from_path(sys.argv[1])
for name in ("meta", "seqs"):
    container = repo.request_container(name, sys.argv[2], read_only=False)
    container.db  # RocksDB refuses while another process has it open
    container.close()
"""


def _databases_closed(repo_path: str, run_hash: str) -> bool:
    """Whether another process may open the run's databases for writing (RocksDB locks them while open)."""
    opened = subprocess.run([sys.executable, "-c", _OPEN_RUN, repo_path, run_hash], capture_output=True)
    return opened.returncode == 0


def _index(repo_path: str) -> list[tuple[bytes, bytes]]:
    container = aim.Repo.from_path(repo_path)._get_index_container("meta", 0)
    try:  # a large value (an image) is a BLOB that reads itself from the open database
        return [(key, ("blob", bytes(v)) if isinstance(v, BLOB) else v) for key, v in container.items()]
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


def test_close_and_index_closes_an_open_run_and_indexes_what_aims_finalize_writes(tmp_path: Path) -> None:
    repo_path = make_repo(str(tmp_path))
    earlier = _closed_run(repo_path)
    run = _run_left_open(repo_path)
    run_hash = run.hash
    assert not _databases_closed(repo_path, run_hash)  # the check sees databases left open

    _fresh_index(repo_path, stale_run=run_hash)
    assert close_and_index(aim.Repo.from_path(repo_path), earlier) is None  # closed already: the slow way
    assert close_and_index(aim.Repo.from_path(repo_path), run_hash) is None
    got = _index(repo_path)
    assert _databases_closed(repo_path, run_hash)

    _fresh_index(repo_path, stale_run=run_hash)
    _aims_own_finalize(repo_path, earlier)
    _aims_own_finalize(repo_path, run_hash)
    expected = _index(repo_path)

    assert len(got) > 50
    assert got == expected
    assert not [key for key, _ in got if key.endswith(b"stale")]


_HOLD_INDEX = """
import sys, time, aim
repo_path, run_hash = sys.argv[1:]
repo = aim.Repo.from_path(repo_path)
index = repo._get_index_container("meta", 0)
index.db  # opening it takes the index's lock
print("held", flush=True)
sys.stdin.readline()  # close_and_index has started
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # the run's own databases are let go while the index is held
    try:
        for name in ("meta", "seqs"):
            container = repo.request_container(name, run_hash, read_only=False)
            container.db
            container.close()
    except Exception:
        time.sleep(0.01)
        continue
    print("run closed", flush=True)
    break
index.close()
"""


def test_close_and_index_closes_the_run_first_while_another_process_holds_the_index(tmp_path: Path) -> None:
    repo_path = make_repo(str(tmp_path))
    run = _run_left_open(repo_path)
    run_hash = run.hash
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_INDEX, repo_path, run_hash],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result: list = []
        closing = threading.Thread(
            target=lambda: result.append(close_and_index(aim.Repo.from_path(repo_path), run_hash))
        )
        closing.start()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "run closed"  # before the index was let go
        closing.join(60)
        assert result == [None]  # indexed once the other process let go of the index
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert any(key.startswith(encode_path(("meta", "chunks", run_hash))) for key, _ in _index(repo_path))
