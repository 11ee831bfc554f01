"""A new repo's database: aim's migrations run once per machine, later new repos get a copy of it.

Each check runs in a fresh interpreter, as the writer process does, with its own cache folder, and the
repos it makes are read back through aim's public API.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

import tracelet_callbacks as tracelet
from conftest import read_run, series

MAKE_REPO = """
import json, sys
from tracelet_callbacks.sink.repo import make_repo, migrate_in_this_process
migrate_in_this_process()
make_repo(sys.argv[1])
print(json.dumps({"alembic": "alembic" in sys.modules}))
"""


def _make_repo(path: str, cache: str) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    done = subprocess.run(
        [sys.executable, "-c", MAKE_REPO, path], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _schema(repo: str) -> list:
    with sqlite3.connect(os.path.join(repo, ".aim", "run_metadata.sqlite")) as db:
        tables = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return [tables, revision]


def _kept(cache: str) -> list[str]:
    folder = os.path.join(cache, "tracelet_callbacks")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _use(repo: str) -> None:
    """A run with an experiment, params and a metric in ``repo``, read back through aim."""
    exp = tracelet.start_logging(exp_name="check", project="exp", repo_path=repo)
    exp.log_params({"lr": 0.1})
    exp.log_metric("loss", 1.5, 3)
    tracelet.stop_logging()
    assert series(repo, "loss", run_hash=exp.hash) == {3: 1.5}
    run = read_run(repo, exp.hash)
    assert run.experiment == "exp"
    assert run["hparams"] == {"lr": 0.1}


def test_the_second_new_repo_is_a_copy_of_what_the_migrations_made(tmp_path):
    cache = str(tmp_path / "cache")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")

    assert _make_repo(first, cache) == {"alembic": True}
    assert len(_kept(cache)) == 1  # kept for the next new repo
    assert _make_repo(second, cache) == {"alembic": False}  # no migration ran

    assert _schema(second) == _schema(first)
    _use(second)
    _use(first)


def test_a_kept_database_that_is_not_one_is_not_used(tmp_path):
    cache = str(tmp_path / "cache")
    _make_repo(str(tmp_path / "first"), cache)
    (kept,) = _kept(cache)
    with open(os.path.join(cache, "tracelet_callbacks", kept), "wb") as broken:
        broken.write(b"not a database")

    assert _make_repo(str(tmp_path / "second"), cache) == {"alembic": True}
    assert _schema(str(tmp_path / "second")) == _schema(str(tmp_path / "first"))
    _use(str(tmp_path / "second"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_cache_that_cannot_be_written_only_costs_the_migration(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        assert _make_repo(str(tmp_path / "repo"), str(cache)) == {"alembic": True}
        assert _kept(str(cache)) == []
    finally:
        cache.chmod(0o700)
    _use(str(tmp_path / "repo"))


def test_a_cache_path_that_is_a_file_only_costs_the_migration(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder would be")
    assert _make_repo(str(tmp_path / "repo"), str(cache)) == {"alembic": True}
    assert _make_repo(str(tmp_path / "again"), str(cache)) == {"alembic": True}
    _use(str(tmp_path / "again"))
    assert not [n for n in os.listdir(tmp_path / "again" / ".aim") if n.endswith(".new")]
