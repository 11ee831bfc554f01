"""TraceletAimTracker under a real ``Accelerator`` (CPU), read back from a real AIM repo."""

from __future__ import annotations

import copy
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

from accelerate import Accelerator  # noqa: E402
from accelerate.tracking import GeneralTracker  # noqa: E402
from aim.storage.context import Context  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import epochs, open_repo, read_run, series  # noqa: E402

TRAIN, VAL = {"subset": "train"}, {"subset": "val"}
FAST = {"writer": "thread"}  # no writer process to start: for tests of the tracker's own logic
SRC = Path(__file__).parent.parent / "src"


def test_construction_has_no_side_effects(repo_dir: Path) -> None:
    tracker = tracelet.TraceletAimTracker("quiet", repo_path=str(repo_dir / "aim"))
    assert isinstance(tracker, GeneralTracker)
    assert tracker.name == "tracelet" and tracker.requires_logging_directory is False
    assert tracker.main_process_only is True
    assert not tracker.tracker and tracker.tracker.hash is None  # a stand-in until start()
    assert list(repo_dir.iterdir()) == []
    with pytest.raises(ValueError, match="Did you mean 'repo_path'"):
        tracelet.TraceletAimTracker("bad", repo_pth="x")


@pytest.mark.slow
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
    # the ended run can still be read through the tracker
    assert (tracker.experiment.hash, tracker.experiment.status) == (run_hash, "finished")

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


@pytest.mark.slow
def test_an_epoch_key_is_aims_epoch_not_a_series(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    tracker = tracelet.TraceletAimTracker("epochs", repo_path=str(repo), **FAST)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("epochs")
    accelerator.log({"train_loss": 0.5, "epoch": 2}, step=7)
    accelerator.log({"train_loss": 0.4, "epoch": 9}, step=8, log_kwargs={"tracelet": {"epoch": 3}})  # wins
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert series(repo, "loss", TRAIN, run_hash) == {7: 0.5, 8: 0.4}
    assert epochs(repo, "loss", TRAIN, run_hash) == {7: 2, 8: 3}
    assert series(repo, "epoch", None, run_hash) == {}


@pytest.mark.slow
def test_start_after_finish_opens_a_new_run(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    tracker = tracelet.TraceletAimTracker("again", repo_path=str(repo), **FAST)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    hashes = []
    for number in range(2):
        accelerator.init_trackers("again", config={"round": number})
        with warnings.catch_warnings():
            warnings.simplefilter("error", tracelet.TraceletWarning)  # nothing dropped
            accelerator.log({"train_loss": float(number)}, step=number)
        hashes.append(tracker.tracker.hash)
        accelerator.end_training()
    assert hashes[0] != hashes[1]
    runs = {run.hash: run for run in open_repo(repo).iter_runs()}
    assert sorted(runs) == sorted(hashes)
    for number, run_hash in enumerate(hashes):
        assert runs[run_hash]["hparams"] == {"round": number}
        assert runs[run_hash].get("status") == "finished"
        assert series(repo, "loss", TRAIN, run_hash) == {number: float(number)}


@pytest.mark.slow
def test_tracker_pickles_before_and_after_use_and_a_copy_continues_the_run(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    tracker = tracelet.TraceletAimTracker("copied", repo_path=str(repo), **FAST)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    copy.deepcopy(pickle.loads(pickle.dumps(tracker)))  # before start(): nothing to leave behind
    accelerator.init_trackers("copied")
    accelerator.log({"train_loss": 1.0}, step=0)
    run_hash = tracker.tracker.hash
    clone = pickle.loads(pickle.dumps(tracker))  # the live run stays behind, its hash travels
    assert copy.deepcopy(tracker).experiment.hash == run_hash  # a copy in this process: the same run
    accelerator.end_training()
    clone.log({"train_loss": 0.5}, step=1)  # continues the same run (resumed by hash)
    assert clone.tracker.hash == run_hash
    clone.finish()
    finished = pickle.loads(pickle.dumps(tracker))
    with pytest.warns(tracelet.TraceletWarning, match="closed"):
        finished.log({"train_loss": 9.0}, step=2)  # as the original: the run is closed
    assert [run.hash for run in open_repo(repo).iter_runs()] == [run_hash]
    assert series(repo, "loss", TRAIN, run_hash) == {0: 1.0, 1: 0.5}
    assert read_run(repo, run_hash).get("status") == "finished"


NOT_MAIN_JOB = """
    import os
    import sys

    import numpy as np
    from accelerate import PartialState

    from tracelet_callbacks import TraceletAimTracker

    state = PartialState(cpu=True)  # a real 2-process gloo group: rank 1 is not the main process
    tracker = TraceletAimTracker("ranks", repo_path=os.path.join(sys.argv[1], f"rank{state.process_index}"))
    tracker.start()
    tracker.store_init_configuration({"lr": 0.1})
    tracker.log({"train_loss": 0.5}, step=0)
    tracker.log_images({"sample": np.zeros((2, 2, 3), dtype=np.uint8)}, step=0)
    tracker.tracker.track(1.0, name="direct", step=0)
    started = tracker.experiment is not None
    report = [state.process_index, state.is_main_process, started, tracker.tracker.hash]
    tracker.finish()
    state.wait_for_everyone()
    with open(f"report-{state.process_index}.txt", "w") as handle:
        handle.write(" ".join(map(str, report)))
"""


@pytest.mark.slow
def test_other_processes_create_no_repo_and_no_run(tmp_path: Path) -> None:
    """Accelerate's own main-process policy in a real two-process job (``torch.distributed.run``,
    gloo on CPU): each rank points the tracker at its own folder; only rank 0's exists."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    (tmp_path / "job.py").write_text(textwrap.dedent(NOT_MAIN_JOB))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MASTER_", "LOCAL_RANK"))}
    env.update(
        TRACELET_SYSTEM_TRACKING_INTERVAL="off",
        TRACELET_WRITER="thread",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]),
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", port, "job.py", str(tmp_path / "aim")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    reports = [path.read_text().split() for path in sorted(tmp_path.glob("report-*.txt"))]
    assert [report[:3] for report in reports] == [["0", "True", "True"], ["1", "False", "False"]]
    assert reports[1][3] == "None"  # rank 1's handle is the do-nothing stand-in
    assert not (tmp_path / "aim" / "rank1").exists()
    (run,) = open_repo(tmp_path / "aim" / "rank0").iter_runs()
    assert run.hash == reports[0][3] and run.get("status") == "finished"
    assert series(tmp_path / "aim" / "rank0", "loss", TRAIN, run.hash) == {0: 0.5}
