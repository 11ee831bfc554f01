"""TraceletAimLogger with real Trainers (lightning and pytorch_lightning) on a tiny CPU model, read back
from real AIM repos.

Fits are shared where the assertions allow (one repo per module, one experiment name per scenario),
because each AIM repo and each Trainer start costs seconds on two cores.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

pl = pytest.importorskip("lightning.pytorch")
import torch  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo, series  # noqa: E402
from lightning_helpers import TRAIN_BATCHES, classes, trainer_kwargs  # noqa: E402
from tracelet_callbacks import (  # noqa: E402
    TraceletAimLogger,
    TraceletWarning,
)
from tracelet_callbacks.core.params import REDACTED  # noqa: E402
from tracelet_callbacks.integrations.lightning.core import CHECKPOINT_INDEX  # noqa: E402

TinyModule, TinyData = classes(pl)
HELPERS = Path(__file__).with_name("lightning_helpers.py")
TRAIN, VAL, TEST = {"subset": "train"}, {"subset": "val"}, {"subset": "test"}
TRAIN_STEP = {"subset": "train", "granularity": "step"}
TRAIN_EPOCH = {"subset": "train", "granularity": "epoch"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lightning") / "aim"


def _logger(repo: Path, experiment: str, **settings: Any) -> TraceletAimLogger:
    return TraceletAimLogger(
        repo_path=str(repo), experiment_name=experiment, system_tracking_interval=None, **settings
    )


def _runs(repo: Path, experiment: str) -> list[Any]:
    return [run for run in open_repo(repo).iter_runs() if run.experiment == experiment]


def _read(repo: Path, run_hash: str) -> Any:
    """A read-only run through a fresh ``aim.Repo``: aim pools repos by path, and a pooled one can hold
    a stale read-only view of data that another process (or a closed writer) added since."""
    return open_repo(repo).get_run(run_hash)


def _points(repo: Path, run_hash: str, name: str, context: dict) -> dict[int, tuple[float, int]]:
    """``{step: (value, epoch)}`` of one series."""
    run = _read(repo, run_hash)
    found = {}
    for metric in run.metrics():
        if metric.name == name and metric.context.to_dict() == context:
            steps, (values, epochs, _times) = metric.data.items_list()
            found.update({s: (v, e) for s, v, e in zip(steps, values, epochs, strict=True)})
    return found


def _stored(repo: Path, run_hash: str) -> dict[str, bytes]:
    """The checkpoint artifacts of a run, from the file:// artifact store beside the repo."""
    folder = repo / "aim-artifacts" / run_hash / "checkpoints"
    return {path.name: path.read_bytes() for path in folder.iterdir()} if folder.is_dir() else {}


# -- 1. fit + validate + test, the first "done when" ----------------------------------------


@pytest.fixture(scope="module")
def full(repo: Path) -> types.SimpleNamespace:
    """seed_everything(7); fit 2 epochs (2 val loaders), validate, test; log_model=True; copies."""
    pl.seed_everything(7)
    logger = _logger(repo, "full", run_name="tiny", log_model=True)
    before = {"pickled": pickle.loads(pickle.dumps(logger)), "copied": copy.deepcopy(logger)}
    checkpoint = pl.callbacks.ModelCheckpoint(monitor="val_loss/dataloader_idx_0", save_last=True)
    trainer = pl.Trainer(
        logger=logger,
        callbacks=[checkpoint],
        default_root_dir=str(repo.parent),  # Lightning's checkpoints: under the Trainer's root
        **trainer_kwargs(enable_checkpointing=True, gradient_clip_val=0.5),
    )
    data = TinyData(val_loaders=2)
    trainer.fit(TinyModule(lr=0.05), datamodule=data)
    fit_steps = trainer.global_step
    after_fit = _runs(repo, "full")  # queryable as soon as fit returns
    trainer.validate(datamodule=data, ckpt_path="best")
    trainer.test(datamodule=data, ckpt_path="best")
    return types.SimpleNamespace(
        logger=logger,
        hash=logger.version,
        checkpoint=checkpoint,
        root=trainer.default_root_dir,
        fit_steps=fit_steps,
        after_fit=after_fit,
        before=before,
        after={"pickled": pickle.loads(pickle.dumps(logger)), "copied": copy.deepcopy(logger)},
        run=_snapshot(repo, logger.version),
    )


def _snapshot(repo: Path, run_hash: str) -> types.SimpleNamespace:
    """Params, name and metric names of a run, read once (holding aim objects would pin a stale repo)."""
    run = _read(repo, run_hash)
    keys = ("status", "hparams", "trainer", "optimizers", "schedulers", "model", "checkpoint")
    return types.SimpleNamespace(
        name=run.name, metric_names={m.name for m in run.metrics()}, **{key: run.get(key) for key in keys}
    )


@pytest.mark.slow
def test_fit_validate_test_make_one_finished_run(repo: Path, full: types.SimpleNamespace) -> None:
    assert [run.hash for run in full.after_fit] == [full.hash]
    assert [run.hash for run in _runs(repo, "full")] == [full.hash]
    assert full.run.status == "finished"
    assert full.run.name == "tiny"
    assert len(full.hash) == 24 and full.logger.name == "full"
    # ModelCheckpoint's default folder: the Trainer's root / name / version, not the AIM repo folder
    assert full.logger.save_dir == os.fspath(full.root) and full.logger.log_dir is None
    assert full.checkpoint.dirpath == os.path.join(full.root, "full", full.hash, "checkpoints")
    assert not Path(full.checkpoint.dirpath).is_relative_to(repo)


def test_params_come_from_module_datamodule_trainer_and_optimizers(full: types.SimpleNamespace) -> None:
    run = full.run
    assert run.hparams == {"lr": 0.05, "hidden": 3, "fail_at_step": -1, "batch_size": 8, "val_loaders": 2}
    trainer = run.trainer
    assert trainer["max_epochs"] == 2 and trainer["max_steps"] == -1
    assert trainer["precision"] == "32-true"
    assert trainer["accumulate_grad_batches"] == 1
    assert trainer["gradient_clip_val"] == 0.5
    assert trainer["strategy"] == "SingleDeviceStrategy"
    assert trainer["num_devices"] == 1 and trainer["num_nodes"] == 1
    assert trainer["seed"] == 7
    adam = run.optimizers["Adam"]
    assert adam["class"] == "torch.optim.adam.Adam"
    assert adam["lr"] == 0.05  # as configured, not as decayed by the scheduler during fit
    assert adam["weight_decay"] == 0.01 and adam["betas"] == [0.9, 0.999]
    assert "params" not in adam
    step_lr = run.schedulers["StepLR"]
    assert step_lr["class"] == "torch.optim.lr_scheduler.StepLR"
    assert (step_lr["gamma"], step_lr["step_size"], step_lr["interval"], step_lr["optimizer"]) == (
        0.5,
        1,
        "epoch",
        "Adam",
    )
    assert run.model["num_parameters"] == 19
    assert run.model["trainable_parameters"] == 4
    assert run.model["class"] == "TinyModule"


def test_metrics_land_in_contexts_at_lightnings_global_steps(repo: Path, full: types.SimpleNamespace) -> None:
    steps = full.fit_steps
    assert steps == 2 * TRAIN_BATCHES
    train = _points(repo, full.hash, "loss", TRAIN_STEP)
    assert sorted(train) == list(range(steps))
    assert {step: epoch for step, (_value, epoch) in train.items()} == {
        s: s // TRAIN_BATCHES for s in range(8)
    }
    # the module logged self.global_step as a value: it equals the step it was stored at
    assert {s: v for s, (v, _e) in _points(repo, full.hash, "step_seen", TRAIN).items()} == {
        s: float(s) for s in range(steps)
    }
    assert sorted(_points(repo, full.hash, "loss", TRAIN_EPOCH)) == [3, 7]
    val_acc_1 = _points(repo, full.hash, "acc", {"subset": "val", "dataloader": 1})
    assert val_acc_1 == {3: (0.75, 0), 7: (0.75, 1), 8: (0.75, 2)}  # 2 fit epochs, then validate
    assert sorted(_points(repo, full.hash, "loss", {"subset": "val", "dataloader": 0})) == [3, 7, 8]
    assert _points(repo, full.hash, "acc", TEST) == {8: (0.75, 2)}
    assert not full.run.metric_names & {"epoch", "train_loss", "val_loss", "test_acc", "train_loss_step"}


def test_log_model_true_stores_best_and_last_checkpoint_bytes(
    repo: Path, full: types.SimpleNamespace
) -> None:
    best, last = Path(full.checkpoint.best_model_path), Path(full.checkpoint.last_model_path)
    assert best.name == "epoch=1-step=8.ckpt" or best.name == "epoch=0-step=4.ckpt"
    assert _stored(repo, full.hash) == {best.name: best.read_bytes(), last.name: last.read_bytes()}
    assert full.run.checkpoint["best_model_path"] == str(best)
    assert full.run.checkpoint["monitor"] == "val_loss/dataloader_idx_0"
    index = json.loads((best.parent / CHECKPOINT_INDEX).read_text())
    assert {name: entry["run_hash"] for name, entry in index.items()} == {
        best.name: full.hash,
        last.name: full.hash,
    }


def test_logger_pickles_and_deep_copies_before_and_after_fit(full: types.SimpleNamespace) -> None:
    for copied in full.before.values():
        assert not copied._runs.started  # no run was opened to copy
        assert copied.name == "full"
    for copied in full.after.values():
        assert not copied._runs.is_open
        assert copied.version == full.hash  # continues the same run, without opening it to say so
        assert copied._config.log_model is True


# -- 1b. stored checkpoints never carry secrets ------------------------------------------------------

API_KEY = "sk-live-1234567890abcdefSECRET"
HF_TOKEN = "hf_" + "Q" * 30


class SecretModule(TinyModule):
    def __init__(self, api_key: str = "", lr: float = 0.05):
        super().__init__(lr=lr)
        self.save_hyperparameters()


class SecretData(TinyData):
    def __init__(self, hf_token: str = "", batch_size: int = 8):
        super().__init__(batch_size=batch_size)
        self.save_hyperparameters()


def _files_holding(folder: Path, secret: bytes) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and secret in path.read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("log_model", [True, "all"])
def test_stored_checkpoints_have_saved_secrets_redacted(tmp_path: Path, log_model: Any) -> None:
    repo, folder = tmp_path / "aim", tmp_path / "ckpts"  # the trainer's own files stay outside the repo
    logger = _logger(repo, "secrets", log_model=log_model)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=-1)
    trainer = pl.Trainer(logger=logger, callbacks=[checkpoint], **trainer_kwargs(enable_checkpointing=True))
    trainer.fit(SecretModule(api_key=API_KEY), datamodule=SecretData(hf_token=HF_TOKEN))

    originals = sorted(folder.glob("*.ckpt"))
    assert {path.name for path in originals} == {"epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"}
    # the scan below would see a leak: torch.save writes the strings as they are
    assert all(API_KEY.encode() in path.read_bytes() for path in originals)
    assert all(HF_TOKEN.encode() in path.read_bytes() for path in originals)
    stored = repo / "aim-artifacts" / logger.version / "checkpoints"
    expected = (
        {path.name for path in originals} if log_model == "all" else {"epoch=1-step=8.ckpt", "last.ckpt"}
    )
    assert {path.name for path in stored.iterdir()} == expected
    for secret in (API_KEY, HF_TOKEN):
        assert _files_holding(repo, secret.encode()) == []
        assert _files_holding(repo, secret[-12:].encode()) == []

    restored = SecretModule.load_from_checkpoint(stored / "last.ckpt")
    assert restored.hparams.api_key == REDACTED and restored.hparams.lr == 0.05
    reloaded = torch.load(stored / "last.ckpt", map_location="cpu", weights_only=False)
    assert reloaded["datamodule_hyper_parameters"] == {
        "hf_token": REDACTED,
        "batch_size": 8,
        "val_loaders": 1,
    }
    original = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert original["hyper_parameters"]["api_key"] == API_KEY
    assert reloaded["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(reloaded["state_dict"][k], v) for k, v in original["state_dict"].items())
    run = _read(repo, logger.version)
    assert run["hparams"]["api_key"] == REDACTED and run["hparams"]["hf_token"] == REDACTED


@pytest.mark.slow
def test_checkpoint_without_secrets_is_stored_byte_for_byte_and_unreadable_ones_not_at_all(
    tmp_path: Path,
) -> None:
    from tracelet_callbacks.run.checkpoints import scrubbed_checkpoint

    clean = tmp_path / "clean.ckpt"
    torch.save({"hyper_parameters": {"lr": 0.1, "hub_token": None}, "state_dict": {}}, clean)
    assert scrubbed_checkpoint(str(clean), str(tmp_path / "unused")) == str(clean)

    logger = _logger(tmp_path / "aim", "unreadable", log_model="all")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint " + API_KEY.encode())
    with pytest.warns(TraceletWarning, match="could not be checked for secrets"):
        logger._checkpoints.store(logger._opened(), [str(broken), str(clean)], "checkpoints")
    logger.finalize("success")
    assert _stored(tmp_path / "aim", logger.version) == {"clean.ckpt": clean.read_bytes()}


# -- 2. resume in a second process, log_model="all", run_hash= ---------------------------------------


@pytest.mark.slow
def test_fit_resumed_in_a_new_process_continues_the_run(repo: Path) -> None:
    logger = _logger(repo, "resume", log_model="all")
    checkpoint = pl.callbacks.ModelCheckpoint(save_last=True, save_top_k=-1)
    root = str(
        repo.parent
    )  # the Trainer's root, which holds Lightning's checkpoints; the second process's too
    trainer = pl.Trainer(
        logger=logger,
        callbacks=[checkpoint],
        default_root_dir=root,
        **trainer_kwargs(enable_checkpointing=True),
    )
    trainer.fit(TinyModule(), datamodule=TinyData())
    first = logger.version
    folder = Path(checkpoint.dirpath)
    # "all": each checkpoint stored as it was saved, byte for byte
    files = {path.name: path.read_bytes() for path in folder.glob("*.ckpt")}
    assert set(files) == {"epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"}
    assert _stored(repo, first) == files

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELET_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS.parent), env.get("PYTHONPATH", "")])
    script = [sys.executable, str(HELPERS), "--repo", str(repo), "--experiment", "resume"]
    done = subprocess.run(
        [*script, "--max-epochs", "4", "--ckpt", str(folder / "last.ckpt")],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = dict(
        line.split(" ", 1) for line in done.stdout.splitlines() if line[:5] in ("HASH ", "STEPS", "CKPT ")
    )
    assert printed["HASH"] == first
    assert printed["STEPS"] == str(4 * TRAIN_BATCHES)
    assert Path(printed["CKPT"]).parent == folder  # same version, same checkpoint folder

    assert [run.hash for run in _runs(repo, "resume")] == [first]
    steps = sorted(_points(repo, first, "loss", TRAIN_STEP))
    assert steps == list(range(4 * TRAIN_BATCHES))  # contiguous across the two processes
    run = _read(repo, first)
    assert run["status"] == "finished" and run["hparams"]["lr"] == 0.05

    # run_hash= names the run explicitly (here: for a test in a third trainer)
    again = _logger(repo, "resume", run_hash=first)
    pl.Trainer(logger=again, **trainer_kwargs()).test(TinyModule(), datamodule=TinyData())
    assert again.version == first
    assert [run.hash for run in _runs(repo, "resume")] == [first]
    assert [value for value, _epoch in _points(repo, first, "acc", TEST).values()] == [0.75]


# -- 3. how a run ends -------------------------------------------------------------------------------


def test_exception_in_training_step_leaves_a_failed_run_with_earlier_metrics(repo: Path) -> None:
    logger = _logger(repo, "boom")
    trainer = pl.Trainer(logger=logger, **trainer_kwargs())
    with pytest.raises(RuntimeError, match="boom at step 3"):
        trainer.fit(TinyModule(fail_at_step=3), datamodule=TinyData())
    (run,) = _runs(repo, "boom")
    assert run["status"] == "failed"
    assert sorted(_points(repo, run.hash, "loss", TRAIN_STEP)) == [0, 1, 2]


def test_keyboard_interrupt_is_recorded_as_interrupted(repo: Path) -> None:
    class Interrupted(TinyModule):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 2:
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful exit(1)
            pl.Trainer(logger=_logger(repo, "ctrl-c"), **trainer_kwargs()).fit(
                Interrupted(), datamodule=TinyData()
            )
    finally:
        signal.signal(signal.SIGINT, handler)
    (run,) = _runs(repo, "ctrl-c")
    assert run["status"] == "interrupted"
    assert sorted(_points(repo, run.hash, "loss", TRAIN_STEP)) == [0, 1]


# -- 4. the pytorch_lightning flavour ----------------------------------------------------------------


def test_pytorch_lightning_trainer_with_its_own_logger_class(repo: Path) -> None:
    classic = pytest.importorskip("pytorch_lightning")
    from tracelet_callbacks.pytorch_lightning import TraceletAimLogger as ClassicLogger

    module, data = classes(classic)
    logger = ClassicLogger(repo_path=str(repo), experiment_name="classic", system_tracking_interval=None)
    assert isinstance(logger, classic.loggers.Logger) and not isinstance(logger, pl.loggers.Logger)
    trainer = classic.Trainer(logger=logger, **trainer_kwargs(max_epochs=1, accumulate_grad_batches=2))
    trainer.fit(module(lr=0.1), datamodule=data())
    assert trainer.global_step == 2
    (run,) = _runs(repo, "classic")
    assert run.hash == logger.version and run["status"] == "finished"
    assert run["trainer"]["accumulate_grad_batches"] == 2 and run["trainer"]["max_epochs"] == 1
    assert run["optimizers"]["Adam"]["lr"] == 0.1 and run["hparams"]["batch_size"] == 8
    assert sorted(_points(repo, run.hash, "loss", TRAIN_STEP)) == [0, 1]
    assert sorted(_points(repo, run.hash, "loss", VAL)) == [1]  # the last optimizer step's
    copied = pickle.loads(pickle.dumps(logger))
    assert type(copied) is ClassicLogger and copied.version == run.hash


# -- 5. the contract without a trainer ---------------------------------------------------------------


def test_log_metrics_routes_lightning_tags_and_epoch(repo: Path) -> None:
    logger = _logger(repo, "routing")
    logger.log_hyperparams({"lr": 0.1, "api_token": "abc"}, metrics={"hp_metric": 0.5})
    logger.log_metrics({"train_loss": 1.0, "val/acc": 0.5, "test_acc": 0.25, "epoch": 3}, step=10)
    logger.log_metrics({"train/loss": 2.0, "val_loss": 3.0, "loss_step": 4.0, "loss_epoch": 5.0}, step=11)
    logger.log_metrics({"val_loss/dataloader_idx_1": 6.0, "val/acc_epoch/dataloader_idx_1": 7.0}, step=12)
    logger.save()
    logger.finalize("success")
    run_hash = logger.version
    train = _points(repo, run_hash, "loss", TRAIN)
    assert train[10] == (1.0, 3) and train[11][0] == 2.0 and math.isnan(train[11][1])  # AIM: no epoch
    assert series(repo, "acc", VAL, run_hash) == {10: 0.5}
    assert series(repo, "acc", TEST, run_hash) == {10: 0.25}
    assert series(repo, "loss", VAL, run_hash) == {11: 3.0}
    assert series(repo, "loss", {"granularity": "step"}, run_hash) == {11: 4.0}
    assert series(repo, "loss", {"granularity": "epoch"}, run_hash) == {11: 5.0}
    assert series(repo, "loss", {"subset": "val", "dataloader": 1}, run_hash) == {12: 6.0}
    assert series(repo, "acc", {"subset": "val", "granularity": "epoch", "dataloader": 1}, run_hash) == {
        12: 7.0
    }
    assert series(repo, "epoch", None, run_hash) == {}
    run = _read(repo, run_hash)
    assert run["hparams"] == {"lr": 0.1, "api_token": "<redacted>"}
    assert list(series(repo, "hp_metric", {}, run_hash).values()) == [0.5]
    assert run["status"] == "finished"


def test_non_zero_ranks_never_open_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_utilities.core.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = _logger(tmp_path / "rank1", "ranks")
    handle = logger.experiment
    assert not handle and handle.hash is None
    handle.track(1.0, name="loss", step=0)
    handle["lr"] = 0.1
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"train_loss": 1.0}, step=0)
    logger.log_graph(TinyModule())
    logger.finalize("success")
    assert logger.version is None
    assert not (tmp_path / "rank1").exists()


def test_bad_settings_fail_at_construction_without_side_effects(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"repo_pth.*repo_path"):
        TraceletAimLogger(repo_pth=str(tmp_path))
    with pytest.raises(ValueError, match="log_model"):
        TraceletAimLogger(repo_path=str(tmp_path / "x"), log_model="best")
    TraceletAimLogger(repo_path=str(tmp_path / "lazy"), log_model="all")
    assert not (tmp_path / "lazy").exists()  # construction opens nothing
    assert tracelet.TraceletAimLogger is TraceletAimLogger


def test_loading_another_runs_checkpoint_after_the_run_was_opened_warns(
    repo: Path, full: types.SimpleNamespace
) -> None:
    logger = _logger(repo, "mismatch")
    logger.experiment.track(1.0, name="custom", step=0)  # the run opens before the trainer is seen
    trainer = pl.Trainer(logger=logger, **trainer_kwargs())
    with pytest.warns(TraceletWarning, match=f"run_hash={full.hash!r}"):
        trainer.validate(TinyModule(), datamodule=TinyData(), ckpt_path=full.checkpoint.last_model_path)
    (run,) = _runs(repo, "mismatch")
    assert run.hash == logger.version != full.hash
    assert run["status"] == "finished"
