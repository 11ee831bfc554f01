"""A fresh process pays nothing for the run's identity: nothing a trainer asks waits for the writer.

Each test holds the writer process at its start (before it can even import aim) behind a gate the
test opens: ``sys.executable`` becomes a small script that waits for the gate file, then runs Python.
While the gate is shut, Lightning's ``version``, the HF callback's ``experiment.hash``, the
Accelerate tracker's run and ``Experiment.hash`` must come back (each is read on a thread, and the
test waits for that thread's event, never for a time); every value logged meanwhile must be in the
run once the writer comes up. A run the writer then fails to make is told, not silently lost.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aim.storage.context import Context

import tracelet_callbacks as tracelet
from conftest import read_run, series
from tracelet_callbacks import TraceletWarning
from tracelet_callbacks.sink import process

#: How long a test waits for a read that must not need the writer before calling it a hang.
HANG = 60.0


class Gate:
    """A file whose existence lets held writer processes start."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "writer-may-start"
        self.script = folder / "held-python"
        self.script.write_text(
            f'#!/bin/sh\nwhile [ ! -e "{self.path}" ]; do sleep 0.02; done\nexec "{sys.executable}" "$@"\n'
        )
        self.script.chmod(self.script.stat().st_mode | stat.S_IXUSR)

    @property
    def is_open(self) -> bool:
        return self.path.exists()

    def open(self) -> None:
        self.path.touch()


@pytest.fixture
def gate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Writer processes started from here on wait for ``gate.open()`` (no spare from another test)."""
    held = Gate(tmp_path_factory.mktemp("gate"))
    monkeypatch.setattr(process, "_spare", None)
    monkeypatch.setattr(sys, "executable", str(held.script))
    yield held
    held.open()  # a test that failed early must not leave a writer waiting forever
    spare = process._spare  # the test's writer, kept for a next run that will not come: stop it
    if spare is not None and spare.owner == os.getpid():
        spare.proc.kill()
        spare.release(wait=10.0)


def without_waiting(read: Callable[[], Any], gate: Gate, what: str) -> Any:
    """``read()`` on a thread; it must finish while the writer is still held."""
    done = threading.Event()
    box: dict[str, Any] = {}

    def reader() -> None:
        try:
            box["value"] = read()
        except BaseException as exc:  # shown by the assertion below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(HANG):
        gate.open()  # let the stuck read end, then fail
        pytest.fail(f"{what} waited for the writer process to start")
    assert "error" not in box, box.get("error")
    assert not gate.is_open
    return box["value"]


def test_experiment_hash_is_known_while_the_writer_is_held(repo_dir: Path, gate: Gate) -> None:
    exp = tracelet.Experiment(run_name="held", tags={"team": "a"})
    exp.log_metric("train/loss", 1.0, 0)
    run_hash = without_waiting(lambda: exp.hash, gate, "Experiment.hash")
    assert isinstance(run_hash, str) and len(run_hash) == 24
    assert without_waiting(lambda: exp.run.hash, gate, "Experiment.run.hash") == run_hash
    for step in range(1, 50):
        exp.log_metric("train/loss", 1.0 / (step + 1), step)
    gate.open()
    exp.close()
    assert exp.hash == run_hash
    run = read_run(repo_dir, run_hash)
    assert (run.name, run["tags"], run["status"]) == ("held", {"team": "a"}, "finished")
    found = series(repo_dir, "loss", {"subset": "train"}, run_hash)
    assert found == {step: 1.0 / (step + 1) for step in range(50)}


def test_start_logging_and_summary_writer_never_wait_for_the_writer(repo_dir: Path, gate: Gate) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def start() -> str:
        tracelet.start_logging(exp_name="held", project="cold", backend="aim")
        board = SummaryWriter()
        for step in range(20):
            board.add_scalar("val/loss", float(step), step)
        return tracelet.get_active_experiment().hash

    run_hash = without_waiting(start, gate, "start_logging and add_scalar")
    gate.open()
    tracelet.stop_logging()
    assert series(repo_dir, "loss", {"subset": "val"}, run_hash) == {step: float(step) for step in range(20)}
    assert read_run(repo_dir, run_hash).experiment == "cold"


def test_lightning_version_and_fit_never_wait_for_the_writer(repo_dir: Path, gate: Gate) -> None:
    import lightning.pytorch as pl

    from lightning_helpers import TRAIN_BATCHES, classes, trainer_kwargs

    TinyModule, TinyData = classes(pl)
    logger = tracelet.TraceletAimLogger(run_name="cold-fit")
    version = without_waiting(lambda: logger.version, gate, "TraceletAimLogger.version")
    seen: dict[str, Any] = {}

    class OpenTheGateAtTheEnd(pl.Callback):
        """Training ran every step with the writer held; only the run's end may wait for it."""

        def on_train_end(self, trainer: Any, module: Any) -> None:
            seen["steps"], seen["held"] = trainer.global_step, not gate.is_open
            seen["experiment"] = logger.experiment.hash
            gate.open()

    trainer = pl.Trainer(logger=logger, callbacks=[OpenTheGateAtTheEnd()], **trainer_kwargs(max_epochs=2))
    trainer.fit(TinyModule(), datamodule=TinyData())
    assert seen == {"steps": 2 * TRAIN_BATCHES, "held": True, "experiment": version}
    assert logger.version == version
    run = read_run(repo_dir, version)
    assert run["status"] == "finished" and run["hparams"]["lr"] == 0.05
    assert len(series(repo_dir, "loss", {"subset": "train", "granularity": "step"}, version)) == 8


def test_hf_callback_hash_and_train_never_wait_for_the_writer(repo_dir: Path, gate: Gate) -> None:
    from transformers import Trainer, TrainerCallback

    from hf_helpers import TokenDataset, tiny_args, tiny_bert

    callback = tracelet.TraceletCallback(run_name="cold-train")
    seen: dict[str, Any] = {}

    class OpenTheGateAtTheEnd(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen["steps"], seen["held"] = state.global_step, not gate.is_open
            seen["hash"] = callback.experiment.hash
            gate.open()

    trainer = Trainer(
        model=tiny_bert(),
        args=tiny_args(str(repo_dir / "out"), max_steps=6),
        train_dataset=TokenDataset(),
        callbacks=[OpenTheGateAtTheEnd(), callback],  # ours ends the run after the gate opened
    )
    run_hash = without_waiting(lambda: callback.experiment.hash, gate, "TraceletCallback.experiment.hash")
    trainer.train()
    assert seen == {"steps": 6, "held": True, "hash": run_hash}
    assert read_run(repo_dir, run_hash)["status"] == "finished"
    assert sorted(series(repo_dir, "loss", {"subset": "train"}, run_hash)) == [1, 2, 3, 4, 5, 6]


def test_accelerate_init_trackers_never_waits_for_the_writer(repo_dir: Path, gate: Gate) -> None:
    from accelerate import Accelerator

    tracker = tracelet.TraceletAimTracker(run_name="cold-loop")
    accelerator = Accelerator(log_with=[tracker], cpu=True)

    def start() -> str:
        accelerator.init_trackers("cold", config={"lr": 0.1})
        for step in range(10):
            accelerator.log({"train/loss": 1.0 - step / 10}, step=step)
        return accelerator.get_tracker("tracelet").tracker.hash

    run_hash = without_waiting(start, gate, "init_trackers and log")
    gate.open()
    accelerator.end_training()
    assert read_run(repo_dir, run_hash)["hparams"] == {"lr": 0.1}
    assert len(series(repo_dir, "loss", {"subset": "train"}, run_hash)) == 10


def test_an_aim_object_sent_before_the_writer_imported_aim_is_written_by_the_writer(
    repo_dir: Path, gate: Gate
) -> None:
    """The writer's reader thread once unpickled each batch as it came: one holding an ``aim.Image``
    imported aim on that thread while the main thread was importing it too, the import failed halfway
    and the trainer had to take the run over (the warning below). Held, the batch waits in the pipe
    before the writer's first line, so its reader meets it at once."""
    import aim
    from PIL import Image

    exp = tracelet.Experiment(buffer_size=1)  # each record goes down the pipe as it is logged
    picture = aim.Image(Image.new("RGB", (4, 4), (7, 0, 0)))
    without_waiting(lambda: exp.run.track(picture, name="pictures", step=3), gate, "Experiment.run.track")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gate.open()
        exp.close()
    said = [str(w.message) for w in caught if issubclass(w.category, TraceletWarning)]
    assert said == []  # not "the AIM writer stopped ...; logging goes on from this process"
    images = read_run(repo_dir, exp.hash).get_image_sequence("pictures", Context({}))
    steps, (values, *_) = images.data.items_list()
    assert list(steps) == [3] and values[0].to_pil_image().getpixel((0, 0)) == (7, 0, 0)


def test_a_run_the_writer_cannot_make_is_told_not_lost_silently(repo_dir: Path, gate: Gate) -> None:
    exp = tracelet.Experiment()
    exp.log_metric("train/loss", 1.0, 0)
    without_waiting(lambda: exp.hash, gate, "Experiment.hash")
    (repo_dir / ".aim").write_text("a file where the repo should be\n")  # checked fine, made wrong
    gate.open()
    with pytest.warns(TraceletWarning, match="values logged to this run are dropped"):
        exp.log_metric("train/loss", 0.5, 1)
        exp.close()


#: In a fresh process, as the writer starts: FastAPI stays unimported through ``import aim``, and what
#: aim's code holds of it (the error handlers' ``JSONResponse``) and FastAPI itself still work.
DEFERRED_WEB_FRAMEWORK = """
import sys
from tracelet_callbacks.sink import worker

worker._defer_web_framework()
import aim
from aim.sdk.run import Run  # what the writer uses
assert "fastapi" not in sys.modules, "import aim loaded FastAPI"
from aim.ext.utils import JSONResponse
response = JSONResponse({"detail": "x"}, status_code=500)
assert (type(response).__name__, response.status_code) == ("JSONResponse", 500)
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse as Real
assert FastAPI().router is not None and HTMLResponse.media_type == "text/html"
assert isinstance(response, Real)
print("ok")
"""


def test_the_writer_imports_aim_without_its_web_framework_and_it_still_works() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", DEFERRED_WEB_FRAMEWORK], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
