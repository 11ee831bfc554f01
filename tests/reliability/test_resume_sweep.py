"""Issue 25's resume sweep: a checkpoint's run is looked for in the repo being written to, whatever path
leads there, and a checkpoint whose run is not there never stops training.

Each test failed before its fix: a repo reached through a symlink or a moved project folder started a
new run with only an INFO line; a checkpoint whose run was deleted (or that names a hash no repo holds)
failed the start with ``TraceletError`` (for Hugging Face inside ``train()``, for Lightning inside
``fit``); Lightning's ``resume="never"`` advised passing ``run_hash`` to continue the checkpoint's run.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import aim
import pytest

import tracelet_callbacks as tracelet
from conftest import open_repo, read_run, series

QUIET = {"system_tracking_interval": None}


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning)]


def _first_attempt(repo: Path, checkpoint: Path) -> str:
    """A plain script that logs ``loss`` at steps 0..4 and marks ``checkpoint`` at step 2."""
    first = tracelet.Experiment(repo_path=str(repo), **QUIET)
    for step in range(5):
        first.log_metric("loss", float(step), iteration=step)
    checkpoint.mkdir()
    first.mark_checkpoint(checkpoint, step=2)
    first.close()
    return first.hash


@pytest.mark.parametrize("through", ["symlink", "moved"])
def test_a_repo_reached_by_another_path_continues_the_checkpoint_run(
    through: str, repo_dir: Path, recwarn: pytest.WarningsRecorder
) -> None:
    project = repo_dir / "project"
    project.mkdir()
    first = _first_attempt(project / "repo", project / "ckpt")
    if through == "symlink":  # the same folder under another name, as a cluster's /scratch -> /lustre/...
        (repo_dir / "link").symlink_to(project, target_is_directory=True)
        where = repo_dir / "link"
    else:  # the whole project folder moved, checkpoints and repo together
        where = repo_dir / "moved"
        shutil.move(str(project), str(where))
    second = tracelet.Experiment(repo_path=str(where / "repo"), resume_from=str(where / "ckpt"), **QUIET)
    second.log_metric("loss", 30.0, iteration=3)
    second.close()
    assert second.hash == first
    assert series(where / "repo", "loss", {}, first) == {0: 0.0, 1: 1.0, 2: 2.0, 3: 30.0}  # rewound to 2
    assert [entry["step"] for entry in read_run(where / "repo", first)["resumed"]] == [2]
    assert not [text for text in _ours(recwarn.list) if "new run" in text]


def test_a_checkpoint_of_another_repo_starts_a_new_run_with_a_warning_naming_both(repo_dir: Path) -> None:
    first = _first_attempt(repo_dir / "theirs", repo_dir / "ckpt")
    with pytest.warns(tracelet.TraceletWarning, match="new run") as caught:
        second = tracelet.Experiment(repo_path=str(repo_dir / "ours"), resume_from=str(repo_dir / "ckpt"))
        second.log_metric("loss", 9.0, iteration=3)
        second.close()
    (said,) = [text for text in _ours(caught.list) if first in text]
    assert str(repo_dir / "theirs") in said and str(repo_dir / "ours") in said
    assert second.hash != first
    assert series(repo_dir / "ours", "loss", {}, second.hash) == {3: 9.0}
    assert series(repo_dir / "theirs", "loss", {}, first) == {step: float(step) for step in range(5)}


def _gone(repo: Path, checkpoint: Path, run_hash: str, how: str) -> str:
    """Make the run ``checkpoint`` names unreachable: deleted from the repo, or a well-formed hash no
    repo holds written into the checkpoint's file. Returns the hash the checkpoint names now."""
    if how == "deleted":
        assert open_repo(repo).delete_run(run_hash)
        return run_hash
    identity = checkpoint / "tracelet-run.json"
    bogus = "0123456789abcdef01234567"
    identity.write_text(json.dumps({**json.loads(identity.read_text()), "run_hash": bogus}))
    return bogus


@pytest.mark.parametrize("how", ["deleted", "bogus"])
def test_a_checkpoint_whose_run_is_gone_starts_a_new_run_with_one_warning(how: str, repo_dir: Path) -> None:
    repo, checkpoint = repo_dir / "repo", repo_dir / "ckpt"
    named = _gone(repo, checkpoint, _first_attempt(repo, checkpoint), how)
    with pytest.warns(tracelet.TraceletWarning) as caught:
        second = tracelet.Experiment(repo_path=str(repo), resume_from=str(checkpoint), **QUIET)
        second.log_metric("loss", 9.0, iteration=3)
        second.close()
    said = [text for text in _ours(caught.list) if named in text]
    assert len(said) == 1 and 'resume="never"' in said[0], _ours(caught.list)
    assert second.hash != named
    assert series(repo, "loss", {}, second.hash) == {3: 9.0}
    assert read_run(repo, second.hash)["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_hf_train_from_a_checkpoint_whose_run_is_gone_or_moved_goes_on(how: str, repo_dir: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer

    from hf_helpers import TokenDataset, tiny_args, tiny_bert

    def attempt(project: Path, max_steps: int, resume: str | None) -> str:
        callback = tracelet.TraceletCallback(repo_path=str(project / "repo"), experiment_name="hf", **QUIET)
        args = tiny_args(str(project / "out"), max_steps=max_steps, save_strategy="steps", save_steps=2)
        trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return callback.run_hash

    project = repo_dir / "project"
    first = attempt(project, 4, None)
    if how == "deleted":
        assert open_repo(project / "repo").delete_run(first)
    else:
        shutil.move(str(project), str(repo_dir / "moved"))
        project = repo_dir / "moved"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = attempt(project, 6, str(project / "out" / "checkpoint-2"))
    said = [text for text in _ours(caught) if first in text]
    losses = series(project / "repo", "loss", {"subset": "train"}, second)
    if how == "deleted":
        assert second != first and sorted(losses) == [3, 4, 5, 6]  # a new run, from the checkpoint on
        assert len(said) == 1 and 'resume="never"' in said[0], _ours(caught)
    else:
        assert second == first and sorted(losses) == [1, 2, 3, 4, 5, 6]  # continued, rewound to 2
        assert not [text for text in said if "new run" in text], said
    assert read_run(project / "repo", second)["status"] == "finished"


def _lightning(repo: Path, folder: Path, max_steps: int, ckpt_path: str | None, **settings) -> str:
    pl = pytest.importorskip("lightning.pytorch")
    from lightning_helpers import classes, trainer_kwargs

    module_class, data_class = classes(pl)
    logger = tracelet.TraceletAimLogger(repo_path=str(repo), experiment_name="pl", **QUIET, **settings)
    every = pl.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=2, save_top_k=-1)
    kwargs = trainer_kwargs(max_epochs=-1, max_steps=max_steps, enable_checkpointing=True)
    trainer = pl.Trainer(logger=logger, callbacks=[every], limit_val_batches=0, **kwargs)
    trainer.fit(module_class(), datamodule=data_class(), ckpt_path=ckpt_path)
    return logger.version


@pytest.mark.slow
def test_lightning_fit_from_a_checkpoint_whose_run_was_deleted_goes_on_in_a_new_run(repo_dir: Path) -> None:
    repo, folder = repo_dir / "repo", repo_dir / "ckpts"
    first = _lightning(repo, folder, 4, None)
    (checkpoint,) = [path for path in folder.glob("*.ckpt") if "step=2" in path.name]
    assert open_repo(repo).delete_run(first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _lightning(repo, folder, 6, str(checkpoint))
    said = [text for text in _ours(caught) if first in text]
    assert len(said) == 1 and 'resume="never"' in said[0], _ours(caught)
    assert "run_hash=" not in said[0]  # continuing the deleted run is no advice to give
    assert second != first
    assert sorted(series(repo, "step_seen", {"subset": "train"}, second)) == [2, 3, 4, 5]
    assert read_run(repo, second)["status"] == "finished"


@pytest.mark.slow
def test_lightning_resume_never_starts_a_new_run_without_advising_run_hash(repo_dir: Path) -> None:
    repo, folder = repo_dir / "repo", repo_dir / "ckpts"
    first = _lightning(repo, folder, 4, None)
    (checkpoint,) = [path for path in folder.glob("*.ckpt") if "step=2" in path.name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _lightning(repo, folder, 6, str(checkpoint), resume="never")
    assert not [text for text in _ours(caught) if "run_hash" in text or first in text], _ours(caught)
    assert second != first
    assert sorted(series(repo, "step_seen", {"subset": "train"}, first)) == [0, 1, 2, 3]  # untouched
    assert sorted(series(repo, "step_seen", {"subset": "train"}, second)) == [2, 3, 4, 5]
    assert sorted(run.hash for run in aim.Repo(str(repo)).iter_runs()) == sorted([first, second])


@pytest.mark.slow
def test_hf_train_from_a_checkpoint_whose_run_is_not_on_the_server_goes_on(
    repo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer

    from hf_helpers import TokenDataset, tiny_args, tiny_bert
    from test_remote import running_server

    def attempt(uri: str, max_steps: int, resume: str | None) -> str:
        callback = tracelet.TraceletCallback(remote_uri=uri, experiment_name="hf", **QUIET)
        args = tiny_args(str(repo_dir / "out"), max_steps=max_steps, save_strategy="steps", save_steps=2)
        trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(), callbacks=[callback])
        trainer.train(resume_from_checkpoint=resume)
        return callback.run_hash

    with running_server(tmp_path_factory.mktemp("server")) as (uri, folder):
        first = attempt(uri, 4, None)
        checkpoint = repo_dir / "out" / "checkpoint-2"
        bogus = _gone(folder, checkpoint, first, "bogus")  # a hash neither the server nor the spool holds
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            second = attempt(uri, 6, str(checkpoint))
        said = [text for text in _ours(caught) if bogus in text]
        assert len(said) == 1 and 'resume="never"' in said[0] and uri in said[0], _ours(caught)
        assert second not in (first, bogus)
    # the server's repo, read once the server has let go of it
    assert sorted(series(folder, "loss", {"subset": "train"}, second)) == [3, 4, 5, 6]
    assert read_run(folder, second)["status"] == "finished"


@pytest.mark.slow
def test_a_plain_resume_from_whose_run_is_not_on_the_server_goes_on(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: start_logging(resume_from=...) raised TraceletError naming the server at start.
    from test_remote import running_server

    monkeypatch.chdir(tmp_path)  # the default spool goes to the working folder: not the checkout

    checkpoint = tmp_path / "ckpt"
    with running_server(tmp_path_factory.mktemp("server")) as (uri, folder):
        first = tracelet.Experiment(remote_uri=uri, **QUIET)
        first.log_metric("loss", 1.0, iteration=0)
        checkpoint.mkdir()
        first.mark_checkpoint(checkpoint, step=0)
        first.close()
        bogus = _gone(folder, checkpoint, first.hash, "bogus")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            second = tracelet.start_logging(
                exp_name="after", config={"remote_uri": uri, "resume_from": str(checkpoint), **QUIET}
            )
            second.log_metric("loss", 9.0, iteration=3)
            tracelet.stop_logging()
        said = [text for text in _ours(caught) if bogus in text]
        assert len(said) == 1 and 'resume="never"' in said[0] and uri in said[0], _ours(caught)
        assert second.hash not in (first.hash, bogus)
    assert series(folder, "loss", {}, second.hash) == {3: 9.0}
    run = read_run(folder, second.hash)
    assert (run["status"], run.name) == ("finished", "after")


@pytest.mark.slow
def test_a_negative_step_in_lightnings_checkpoint_index_continues_the_run_unrewound(repo_dir: Path) -> None:
    # Before: the run was rewound to step -5, so every point the first attempt logged was removed.
    from tracelet_callbacks.integrations.lightning.resume import CHECKPOINT_INDEX

    repo, folder = repo_dir / "repo", repo_dir / "ckpts"
    first = _lightning(repo, folder, 4, None)
    (checkpoint,) = [path for path in folder.glob("*.ckpt") if "step=2" in path.name]
    index = folder / CHECKPOINT_INDEX
    entries = json.loads(index.read_text())
    entries[checkpoint.name]["step"] = -5
    index.write_text(json.dumps(entries))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _lightning(repo, folder, 6, str(checkpoint))
    said = [text for text in _ours(caught) if "step -5" in text]
    assert len(said) == 1 and first in said[0] and "unrewound" in said[0], _ours(caught)
    assert second == first
    assert sorted(series(repo, "step_seen", {"subset": "train"}, first)) == [0, 1, 2, 3, 4, 5]
