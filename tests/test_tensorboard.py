"""TraceletWriter and the start_logging patch of SummaryWriter, read back from real AIM repos."""

from __future__ import annotations

import io
import math
import warnings
import wave
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from aim.storage.context import Context  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo, read_run, sequence_names, series  # noqa: E402
from tracelet_callbacks import (  # noqa: E402
    TraceletValueError,
    TraceletWarning,
    TraceletWriter,
)

ORIGINAL_ADD_SCALAR = SummaryWriter.__dict__["add_scalar"]
TRAIN, VAL = {"subset": "train"}, {"subset": "val"}


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One AIM repo for the tests that read back by run hash (creating a repo costs aim ~1 s)."""
    return tmp_path_factory.mktemp("shared") / "aim"


def _writer(repo: Path, **kwargs: Any) -> TraceletWriter:
    kwargs.setdefault("tensorboard", False)
    return TraceletWriter(repo_path=str(repo), run_name="tb", system_tracking_interval=None, **kwargs)


def _points(run: Any, kind: str, name: str, context: dict | None = None) -> dict[int, Any]:
    """``{step: object}`` of one rich sequence (images / texts / distributions / audios)."""
    getter = getattr(run, f"get_{kind}_sequence")
    steps, columns = getter(name, Context(context or {})).data.items_list()
    return dict(zip(steps, columns[0], strict=True))


def _tracelet_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TraceletWarning)]


def _event_files(folder: Path) -> list[Path]:
    return list(folder.rglob("events.out.tfevents.*"))


def _run_hashes(repo: Path) -> set[str]:
    return {run.hash for run in open_repo(repo).iter_runs()}


# -- 1. TraceletWriter, AIM only ---------------------------------------------------------------------


@pytest.mark.slow
def test_scalars_are_routed_with_exact_steps_and_values(repo_dir: Path, shared_repo: Path) -> None:
    repo = shared_repo
    writer = _writer(repo)
    for step in range(3):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("val/accuracy", 0.5 + step / 10, step * 10)
        writer.add_scalar("train/loss/total", 2.0 * step, step)
        writer.add_scalar("batch/loss", float(step), global_step=step + 100)
    writer.add_scalars("split", {"train": 0.25, "val": 0.75}, 7)
    run_hash = writer.experiment.hash
    writer.close()

    assert series(repo, "loss", TRAIN, run_hash) == {0: 1.0, 1: 0.5, 2: pytest.approx(1 / 3)}
    assert series(repo, "accuracy", VAL, run_hash) == {0: 0.5, 10: 0.6, 20: 0.7}
    assert series(repo, "loss/total", TRAIN, run_hash) == {0: 0.0, 1: 2.0, 2: 4.0}
    assert series(repo, "batch/loss", {}, run_hash) == {100: 0.0, 101: 1.0, 102: 2.0}
    assert series(repo, "split", TRAIN, run_hash) == {7: 0.25}
    assert series(repo, "split", VAL, run_hash) == {7: 0.75}
    assert series(repo, "train/loss", None, run_hash) == {}  # routed, not kept under the raw tag


def test_add_scalars_loss_lands_in_train_and_val(repo_dir: Path, shared_repo: Path) -> None:
    repo = shared_repo
    writer = _writer(repo)
    writer.add_scalars("loss", {"train": 0.9, "val": 1.1}, 3)
    writer.add_scalars("loss", {"train": 0.8, "val": 1.0}, 4)
    run_hash = writer.experiment.hash
    writer.close()
    assert series(repo, "loss", TRAIN, run_hash) == {3: 0.9, 4: 0.8}
    assert series(repo, "loss", VAL, run_hash) == {3: 1.1, 4: 1.0}


def test_histograms_become_distributions(repo_dir: Path, shared_repo: Path) -> None:
    repo = shared_repo
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    n_params = sum(p.numel() for p in model.parameters())
    writer = _writer(repo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.add_histogram("weights/tensor", torch.arange(100, dtype=torch.float32), 1)
        writer.add_histogram("model/weights", model.parameters(), 2)  # a one-shot generator
        writer.add_histogram_raw(
            "raw",
            min=0.0,
            max=4.0,
            num=10,
            sum=20.0,
            sum_squares=50.0,
            bucket_limits=[1.0, 2.0, 3.0, 4.0],
            bucket_counts=[1, 2, 3, 4],
            global_step=3,
        )
    assert _tracelet_warnings(caught) == []
    run_hash = writer.experiment.hash
    writer.close()

    run = read_run(repo, run_hash)
    assert {"weights/tensor", "model/weights", "raw"} <= sequence_names(run, "distributions")
    tensor = _points(run, "distribution", "weights/tensor")[1]
    assert tensor.weights.sum() == 100
    assert tensor.range == pytest.approx([0.0, 99.0])
    params = _points(run, "distribution", "model/weights")[2]
    assert params.weights.sum() == n_params
    raw = _points(run, "distribution", "raw")[3]
    assert raw.weights.sum() == 10
    assert raw.range == pytest.approx([0.0, 4.0])


def test_images_figures_text_audio(repo_dir: Path, shared_repo: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    repo = shared_repo
    writer = _writer(repo)
    writer.add_image("chw", torch.rand(3, 8, 12), 1)
    writer.add_image("hwc", torch.rand(6, 5, 3), 1, dataformats="HWC")
    writer.add_images("batch", torch.rand(4, 3, 10, 7), 2)
    boxes = torch.tensor([[1.0, 1.0, 10.0, 8.0]])
    writer.add_image_with_boxes("boxed", torch.rand(3, 16, 20), boxes, 3, labels=["cat"])
    figure = plt.figure(figsize=(4, 3), dpi=50)
    figure.add_subplot(111).plot([0, 1], [1, 0])
    writer.add_figure("figure", figure, 4)
    writer.add_text("notes", "Training progressing well", 5)
    rate = 8000
    writer.add_audio("sound", torch.sin(torch.linspace(0, 100, rate)).unsqueeze(0), 6, sample_rate=rate)
    run_hash = writer.experiment.hash
    writer.close()
    plt.close("all")

    run = read_run(repo, run_hash)
    assert {"chw", "hwc", "batch", "boxed", "figure"} <= sequence_names(run, "images")
    assert _points(run, "image", "chw")[1].to_pil_image().size == (12, 8)  # PIL size is (W, H)
    assert _points(run, "image", "hwc")[1].to_pil_image().size == (5, 6)
    batch = _points(run, "image", "batch")[2]
    assert isinstance(batch, list) and len(batch) == 4
    assert all(image.to_pil_image().size == (7, 10) for image in batch)
    boxed = _points(run, "image", "boxed")[3].to_pil_image()
    assert boxed.size == (20, 16)
    assert boxed.convert("RGB").getpixel((1, 4)) == (255, 0, 0)  # the box outline is drawn
    assert _points(run, "image", "figure")[4].to_pil_image().size == (200, 150)
    assert _points(run, "text", "notes")[5].data == "Training progressing well"
    clip = _points(run, "audio", "sound")[6]
    with wave.open(io.BytesIO(clip.get().read())) as wav:
        assert (wav.getframerate(), wav.getnframes(), wav.getnchannels()) == (rate, rate, 1)


def test_add_figure_closes_the_figure_like_summary_writer(repo_dir: Path, shared_repo: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    writer = _writer(shared_repo)
    figure = plt.figure()
    writer.add_figure("figure", figure, 0)  # SummaryWriter's default is close=True
    writer.close()
    open_after = plt.fignum_exists(figure.number)
    plt.close("all")
    assert not open_after


def test_hparams_graph_and_tensorboard_only_features(repo_dir: Path, shared_repo: Path) -> None:
    repo = shared_repo
    writer = _writer(repo)
    model = torch.nn.Linear(4, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer.add_hparams({"lr": 0.01, "batch_size": 32, "optimizer": "adam"}, {"hparam/accuracy": 0.9})
        writer.add_graph(model, torch.zeros(1, 4))
        for _ in range(2):  # the notice is said once per feature, however often it is called
            writer.add_video("video", torch.rand(1, 2, 3, 8, 8), 0)
            writer.add_embedding(torch.rand(5, 3), metadata=list("abcde"), global_step=0)
            writer.add_pr_curve("pr", torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.8, 0.6]), 0)
    notices = _tracelet_warnings(caught)
    for feature in ("add_video", "add_embedding", "add_pr_curve"):
        assert sum(feature in message for message in notices) == 1, notices
    assert len(notices) == 3, notices
    run_hash = writer.experiment.hash
    writer.close()

    run = read_run(repo, run_hash)
    assert run["hparams"] == {"lr": 0.01, "batch_size": 32, "optimizer": "adam"}
    assert list(series(repo, "hparam/accuracy", {}, run_hash).values()) == [0.9]
    assert "Linear" in run["model"]["class"]
    assert "in_features=4" in run["model"]["graph"]


def test_close_finishes_the_run_and_writes_no_event_files(repo_dir: Path, shared_repo: Path) -> None:
    repo = shared_repo
    writer = _writer(repo)
    writer.add_scalar("train/loss", 0.5, 1)
    writer.add_histogram("h", torch.randn(50), 1)
    writer.add_hparams({"lr": 0.1}, {"hparam/loss": 0.5})
    writer.flush()
    run_hash = writer.experiment.hash
    writer.close()
    writer.close()  # twice is harmless

    run = read_run(repo, run_hash)
    assert run["status"] == "finished"
    assert run.active is False
    assert run.end_time is not None
    assert writer.experiment.status == "finished"
    assert not (repo_dir / "runs").exists()
    assert _event_files(repo_dir) == []


# -- 2. TraceletWriter with TensorBoard event files ------------------------------------------------


def test_tensorboard_true_writes_event_files_and_aim(repo_dir: Path, shared_repo: Path) -> None:
    repo, log_dir = shared_repo, repo_dir / "tb"
    model = torch.nn.Linear(3, 2)
    writer = _writer(repo, log_dir=str(log_dir), tensorboard=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            writer.add_scalar("train/loss", 1.0 - step / 10, step)
        writer.add_histogram("model/weights", model.parameters(), 0)  # plain SummaryWriter crashes here
    assert _tracelet_warnings(caught) == []
    run_hash = writer.experiment.hash
    writer.close()

    assert _event_files(log_dir)
    assert series(repo, "loss", TRAIN, run_hash) == {0: 1.0, 1: 0.9, 2: 0.8}
    run = read_run(repo, run_hash)
    assert _points(run, "distribution", "model/weights")[0].weights.sum() == 8
    assert run["status"] == "finished"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    scalars = [(event.step, round(event.value, 6)) for event in events.Scalars("train/loss")]
    assert scalars == [(0, 1.0), (1, 0.9), (2, 0.8)]
    assert "model/weights" in events.Tags()["histograms"]


# -- 3. the start_logging patch of SummaryWriter ---------------------------------------------------


@pytest.mark.slow
def test_start_logging_patches_existing_writers_and_stop_restores(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    early = SummaryWriter(log_dir=str(repo_dir / "tb_early"))  # created before the session
    exp = tracelet.start_logging(exp_name="patched", project="proj", config={"repo_path": str(repo)})
    late = SummaryWriter(log_dir=str(repo_dir / "tb_late"))
    early.add_scalar("train/loss", 0.5, 1)
    late.add_scalar("val/loss", 0.7, 1)
    late.add_text("notes", "hello", 1)
    run_hash = exp.hash
    tracelet.stop_logging()

    assert SummaryWriter.__dict__["add_scalar"] is ORIGINAL_ADD_SCALAR
    assert SummaryWriter.add_scalar is ORIGINAL_ADD_SCALAR
    restored = {name: method for name, method in vars(SummaryWriter).items() if name.startswith("add_")}
    assert not [name for name, method in restored.items() if hasattr(method, "__wrapped__")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        early.add_scalar("train/loss", 99.0, 2)
        late.add_scalar("val/loss", 99.0, 2)
    assert _tracelet_warnings(caught) == []
    early.close()
    late.close()

    assert _run_hashes(repo) == {run_hash}
    assert series(repo, "loss", TRAIN, run_hash) == {1: 0.5}
    assert series(repo, "loss", VAL, run_hash) == {1: 0.7}
    run = read_run(repo, run_hash)
    assert run.name == "patched"
    assert run.experiment == "proj"
    assert _points(run, "text", "notes")[1].data == "hello"
    assert run["status"] == "finished"
    assert _event_files(repo_dir / "tb_early") and _event_files(repo_dir / "tb_late")


@pytest.mark.slow
def test_sequential_sessions_make_separate_runs(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    writer = SummaryWriter(log_dir=str(repo_dir / "tb"))
    hashes = {}
    for lr in (0.1, 0.01):
        exp = tracelet.start_logging(
            exp_name=f"lr_sweep_{lr}", config={"repo_path": str(repo), "tags": {"learning_rate": lr}}
        )
        writer.add_scalar("train/loss", lr, 0)
        hashes[lr] = exp.hash
        tracelet.stop_logging()
    writer.close()

    assert hashes[0.1] != hashes[0.01]
    assert _run_hashes(repo) == set(hashes.values())
    for lr, run_hash in hashes.items():
        assert series(repo, "loss", TRAIN, run_hash) == {0: lr}
        run = read_run(repo, run_hash)
        assert run.name == f"lr_sweep_{lr}"
        assert run["status"] == "finished"


def test_hparams_through_a_patched_writer_store_the_metric_once(repo_dir: Path, shared_repo: Path) -> None:
    repo = shared_repo
    exp = tracelet.start_logging(exp_name="hp", config={"repo_path": str(repo)})
    writer = SummaryWriter(log_dir=str(repo_dir / "tb"))
    writer.add_hparams({"lr": 0.1}, {"hparam/accuracy": 0.9})  # no step: AIM numbers the points
    writer.close()
    own = _writer(repo, log_dir=str(repo_dir / "tb_own"), tensorboard=True)  # its own run
    own.add_hparams({"lr": 0.2}, {"hparam/own": 0.5})
    own_hash = own.experiment.hash
    own.close()
    run_hash = exp.hash
    tracelet.stop_logging()

    # SummaryWriter.add_hparams writes its metrics through a child SummaryWriter; that child must
    # not send them to AIM a second time, nor into the session's run when the writer has its own
    assert list(series(repo, "hparam/accuracy", {}, run_hash).values()) == [0.9]
    assert list(series(repo, "hparam/own", {}, own_hash).values()) == [0.5]
    assert series(repo, "hparam/own", None, run_hash) == {}
    assert read_run(repo, run_hash)["hparams"] == {"lr": 0.1}


# -- 4. bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tensorboard", [False, True])
def test_bad_scalars_warn_once_per_tag_and_skip(repo_dir: Path, shared_repo: Path, tensorboard: bool) -> None:
    repo = shared_repo
    writer = _writer(repo, tensorboard=tensorboard, log_dir=str(repo_dir / "tb"))
    bad = {"bad/none": None, "bad/string": "abc", "bad/tensor": torch.ones(3)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            writer.add_scalar("good", 1.0 + step, step * 10)
            for tag, value in bad.items():
                writer.add_scalar(tag, value, step * 10 + 1)
                writer.add_scalar("good", float(step * 10 + 2), step * 10 + 2)
        writer.add_scalar("odd", float("nan"), 0)
        writer.add_scalar("odd", float("inf"), 1)
        writer.add_scalar("odd", float("-inf"), 2)
    messages = _tracelet_warnings(caught)
    assert len(messages) == len(bad), messages
    for tag in bad:
        assert sum(repr(tag) in message for message in messages) == 1, messages
    run_hash = writer.experiment.hash
    writer.close()

    assert series(repo, "good", {}, run_hash) == {0: 1.0, 2: 2.0, 10: 2.0, 12: 12.0}
    odd = series(repo, "odd", {}, run_hash)
    assert math.isnan(odd[0]) and odd[1] == math.inf and odd[2] == -math.inf
    for tag in bad:
        assert series(repo, tag.split("/")[1], None, run_hash) == {}
        assert series(repo, tag, None, run_hash) == {}


@pytest.mark.parametrize("value", [None, "abc", torch.ones(3)], ids=["none", "string", "tensor"])
def test_strict_raises_on_bad_scalars(repo_dir: Path, shared_repo: Path, value: Any) -> None:
    writer = _writer(shared_repo, strict=True)
    writer.add_scalar("fine", 1.0, 0)
    with pytest.raises(TraceletValueError, match="bad/tag"):
        writer.add_scalar("bad/tag", value, 1)
    writer.close()


# -- 5. a TraceletWriter inside a start_logging session --------------------------------------------


@pytest.mark.slow
def test_writer_without_settings_joins_the_active_session(repo_dir: Path) -> None:
    repo = repo_dir / "aim"
    exp = tracelet.start_logging(exp_name="session", config={"repo_path": str(repo)})
    writer = TraceletWriter(tensorboard=False)
    assert writer.experiment is exp
    assert writer.experiment.hash == exp.hash
    writer.add_scalar("train/loss", 0.5, 1)
    writer.close()

    assert tracelet.get_active_experiment() is exp
    assert exp.is_open
    exp.log_metric("train/loss", 0.4, 2)
    run_hash = exp.hash
    tracelet.stop_logging()

    assert _run_hashes(repo) == {run_hash}
    assert series(repo, "loss", TRAIN, run_hash) == {1: 0.5, 2: 0.4}
    assert read_run(repo, run_hash)["status"] == "finished"
    assert not (repo_dir / "runs").exists()
