"""A repo this aim cannot write fails where the user can see it: at ``start_logging`` or the first
open, naming the path and the cause, instead of dropping every value quietly (issue 14, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
from tracelet_callbacks import TraceletError


def test_an_aim_entry_that_is_a_file_fails_at_start_logging(repo_dir: Path) -> None:
    (repo_dir / ".aim").write_text("not a repo")
    with pytest.raises(TraceletError, match=r"\.aim' is not a folder"):
        tracelet.start_logging(exp_name="broken", config={"repo_path": str(repo_dir)})
    assert tracelet.get_active_experiment() is None


@pytest.mark.parametrize("version", ["9.0", "1.99", "garbage"])
def test_a_repo_from_a_newer_aim_fails_at_open_naming_its_version(repo_dir: Path, version: str) -> None:
    import aim

    aim.Repo.from_path(str(repo_dir), init=True)
    (repo_dir / ".aim" / "VERSION").write_text(version + "\n")
    shown = "unreadable" if version == "garbage" else version
    with pytest.raises(TraceletError, match=rf"data version {shown}.*cannot write"):
        tracelet.Experiment(repo_path=str(repo_dir)).open()


def test_the_repo_aim_made_itself_opens(repo_dir: Path) -> None:
    import aim

    aim.Repo.from_path(str(repo_dir), init=True)  # the VERSION this aim writes
    exp = tracelet.Experiment(repo_path=str(repo_dir), writer="sync", system_tracking_interval=None)
    exp.log_metric("loss", 1.0)
    exp.close()
    assert exp.status == "finished"
