"""TraceletAimTracker under a real ``Accelerator`` (CPU), read back from a real AIM repo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

from accelerate import Accelerator  # noqa: E402
from accelerate.tracking import GeneralTracker  # noqa: E402
from aim.storage.context import Context  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo, read_run, series  # noqa: E402

TRAIN, VAL = {"subset": "train"}, {"subset": "val"}


def test_construction_has_no_side_effects(repo_dir: Path) -> None:
    tracker = tracelet.TraceletAimTracker("quiet", repo_path=str(repo_dir / "aim"))
    assert isinstance(tracker, GeneralTracker)
    assert tracker.name == "tracelet" and tracker.requires_logging_directory is False
    assert tracker.main_process_only is True
    assert not tracker.tracker and tracker.tracker.hash is None  # a stand-in until start()
    assert list(repo_dir.iterdir()) == []
    with pytest.raises(ValueError, match="Did you mean 'repo_path'"):
        tracelet.TraceletAimTracker("bad", repo_pth="x")


def test_accelerator_loop_params_metrics_images_text(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    accelerator = Accelerator(
        cpu=True, log_with=[tracelet.TraceletAimTracker("acc-run", repo_path=str(repo))]
    )
    config = {"lr": 0.01, "batch_size": 4, "optimizer": {"name": "SGD", "momentum": 0.9}, "api_key": "k-123"}
    accelerator.init_trackers("my_project", config=config)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    losses = {}
    for step in range(5):
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses[step] = loss.item()
        accelerator.log({"train_loss": loss, "lr": 0.01}, step=step)
    accelerator.log({"val_loss": 0.5, "val/accuracy": 0.75, "phase": "done"}, step=5)
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, :, 0] = 255
    tracker = accelerator.get_tracker("tracelet")
    tracker.log_images({"samples": (pixels, "red")}, step=5)
    tracker.tracker.track(7.0, name="custom", step=1)  # aim.Run's surface through our writer
    run_hash = tracker.tracker.hash
    accelerator.end_training()

    assert [run.hash for run in open_repo(repo).iter_runs()] == [run_hash]
    assert series(repo, "loss", TRAIN, run_hash) == pytest.approx(losses)
    assert series(repo, "lr", {}, run_hash) == {step: 0.01 for step in range(5)}
    assert series(repo, "loss", VAL, run_hash) == {5: 0.5}
    assert series(repo, "accuracy", VAL, run_hash) == {5: 0.75}
    assert series(repo, "custom", {}, run_hash) == {1: 7.0}
    run = read_run(repo, run_hash)
    assert run["hparams"] == {**config, "api_key": "<redacted>"}
    assert run.name == "acc-run"
    assert run.get("status") == "finished"
    steps, (images, *_rest) = run.get_image_sequence("samples", Context({})).data.items_list()
    assert steps == [5]
    picture = images[0]
    assert picture.caption == "red"
    assert np.asarray(picture.to_pil_image())[0, 0].tolist()[:3] == [255, 0, 0]
    steps, (texts, *_rest) = run.get_text_sequence("phase", Context({})).data.items_list()
    assert steps == [5] and texts[0].data == "done"
