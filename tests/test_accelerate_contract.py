"""Accelerate's own tracker tests, run against ``TraceletAimTracker``: the framework defines the contract.

Adapted from accelerate's ``tests/test_tracking.py`` (Apache-2.0, Copyright 2022 The HuggingFace Team;
read at commit 16cb6eb of huggingface/accelerate, version 1.15.0.dev0, the nearest stored to the
installed 1.16.0, whose ``tracking.py`` differs from it only in docstrings and MLflow's ``nested_run``).
Accelerate's versions write each vendor's offline files, or mock its client, and parse them; ours write
to a real AIM repo in a temporary folder and read it back through aim's public API. Each test names the
original it adapts; every change from the original is marked ``ADAPTED:`` with its reason. Tests of
that file that cannot apply to us, and why:

* ``TensorBoardTrackingTest.test_project_dir`` (the ``ValueError`` half), ``RegisterTrackerClassTest.
  test_register_requires_logging_directory``: ours has ``requires_logging_directory = False`` (an AIM
  repo is a setting, ``repo_path``); the converse, that no ``project_dir`` is needed, is tested.
* ``MLflowTrackingTest.test_log_figure``, ``ClearMLTest.test_log_table`` / ``test_log_table_pandas``:
  vendor methods our tracker does not have (AIM has no table type; figures go through
  ``TraceletWriter.add_figure``).
* ``SwanLabTrackingTest.test_swanlab`` (skipped upstream too): apart from parsing SwanLab's backup file,
  it checks config, tags and per-step scalars, as ``test_wandb`` does, adapted below.
* ``RegisterTrackerClassTest.test_register_invalid_class_raises`` / ``test_register_overwrite_warns``:
  they test accelerate's registry on classes that are not ours; ours registering cleanly is tested.
* ``TrackerDeferredInitializationTest`` for the eight other vendors: the same test, one per vendor; ours
  is the one adapted.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, register_tracker_class  # noqa: E402
from accelerate.utils import LoggerType, ProjectConfiguration  # noqa: E402
from aim.storage.context import Context  # noqa: E402

from conftest import epochs, open_repo, read_run, series  # noqa: E402
from tracelet_callbacks import TraceletAimTracker, TraceletWarning  # noqa: E402

CONFIG = {"num_iterations": 12, "learning_rate": 1e-2, "some_boolean": False, "some_string": "some_value"}
VALUES = {"total_loss": 0.1, "iteration": 1, "my_text": "some_value"}

# every test writes through the default writer process (the first test starts it, the rest reuse it)
pytestmark = pytest.mark.slow


def _ours(repo: Path, run_name: str = "contract") -> TraceletAimTracker:
    return TraceletAimTracker(run_name, repo_path=str(repo))


def _texts(repo: Path, run_hash: str, name: str) -> dict[int, str]:
    sequence = read_run(repo, run_hash).get_text_sequence(name, Context({}))
    if sequence is None:
        return {}
    steps, (texts, *_rest) = sequence.data.items_list()
    return {step: text.data for step, text in zip(steps, texts, strict=True)}


def _image_names(repo: Path, run_hash: str) -> set[str]:
    return {info["name"] for info in read_run(repo, run_hash).collect_sequence_info(["images"])["images"]}


@pytest.fixture
def registered() -> Any:
    """``register_tracker_class(TraceletAimTracker)``, the registry restored afterwards (accelerate's
    ``RegisterTrackerClassTest.setUp`` / ``tearDown``)."""
    snapshot = dict(LOGGER_TYPE_TO_CLASS)
    register_tracker_class(TraceletAimTracker)
    yield TraceletAimTracker.name
    LOGGER_TYPE_TO_CLASS.clear()
    LOGGER_TYPE_TO_CLASS.update(snapshot)


# -- TensorBoardTrackingTest ----------------------------------------------------------------------------


@pytest.mark.parametrize("project_name", ["test_project_with_config", None])
def test_init_trackers(repo_dir: Path, project_name: str | None) -> None:
    """``TensorBoardTrackingTest.test_init_trackers``; ``None``: ``CometMLTest.test_init_trackers``."""
    # ADAPTED: our tracker handed in built (accelerate's: log_with="tensorboard", project_dir=...)
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name, CONFIG)
    accelerator.end_training()
    # ADAPTED: "a log file exists" becomes the run, its params, name and status read back from AIM
    (run,) = open_repo(repo_dir).iter_runs()
    assert run.hash == tracker.tracker.hash
    assert run["hparams"] == CONFIG
    assert run.name == "contract" and run.get("status") == "finished"


def test_log(repo_dir: Path) -> None:
    """``TensorBoardTrackingTest.test_log`` and ``CometMLTest.test_log``: numbers and a string at step 0."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_log")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceletWarning)  # ADAPTED: nothing dropped
        accelerator.log(VALUES, step=0)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    # ADAPTED: read back from AIM; a string is AIM text, as TensorBoard's add_text and Comet's log_other
    assert series(repo_dir, "total_loss", {}, run_hash) == {0: 0.1}
    assert series(repo_dir, "iteration", {}, run_hash) == {0: 1.0}
    assert _texts(repo_dir, run_hash, "my_text") == {0: "some_value"}


def test_log_with_tensor(repo_dir: Path) -> None:
    """``TensorBoardTrackingTest.test_log_with_tensor``: a 0-d tensor arrives as its number."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_log")
    accelerator.log({"tensor": torch.tensor(1)}, step=0)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    # ADAPTED: read back through aim, not by decoding a tfevents file
    assert series(repo_dir, "tensor", {}, run_hash) == {0: 1.0}


def test_project_dir(repo_dir: Path, registered: str) -> None:
    """``test_project_dir`` / ``test_project_dir_with_config``, for a tracker that needs no logging dir."""
    # ADAPTED: the converse of TensorBoard's ValueError: ours needs no project_dir, built or by name
    assert TraceletAimTracker.requires_logging_directory is False
    Accelerator(cpu=True, log_with=registered)
    tracker = _ours(repo_dir / "aim")
    project = repo_dir / "project"
    config = ProjectConfiguration(total_limit=30)
    accelerator = Accelerator(cpu=True, log_with=tracker, project_dir=str(project), project_config=config)
    accelerator.init_trackers("with_project_dir")
    accelerator.log({"total_loss": 0.1}, step=0)
    accelerator.end_training()
    # ADAPTED: and the run is where repo_path says, the project folder untouched
    assert series(repo_dir / "aim", "total_loss", {}, tracker.tracker.hash) == {0: 0.1}
    assert not project.exists()


# -- WandBTrackingTest, DVCLiveTrackingTest, RegisterTrackerClassTest: by name, with init_kwargs ------


def test_wandb(repo_dir: Path, registered: str) -> None:
    """``WandBTrackingTest.test_wandb`` (skipped upstream): config, ``init_kwargs`` tags, history."""
    # ADAPTED: ours registered and asked for by name, as log_with="wandb"; settings through init_kwargs
    accelerator = Accelerator(cpu=True, log_with=registered)
    kwargs = {registered: {"tags": ["my_tag"]}}
    accelerator.init_trackers("test_project_with_config", CONFIG, kwargs)
    accelerator.log(VALUES, step=0)
    run_hash = accelerator.get_tracker(registered).tracker.hash
    accelerator.end_training()
    run = read_run(repo_dir, run_hash)  # ADAPTED: the default repo_path "." is the working folder
    assert run["hparams"] == CONFIG
    assert run.tags == ["my_tag"]
    assert run.name == "test_project_with_config"  # the project name is the run name, by accelerate's call
    assert series(repo_dir, "total_loss", {}, run_hash) == {0: 0.1}
    assert series(repo_dir, "iteration", {}, run_hash) == {0: 1.0}
    assert _texts(repo_dir, run_hash, "my_text") == {0: "some_value"}


def test_dvclive_init_trackers(repo_dir: Path, registered: str) -> None:
    """``DVCLiveTrackingTest.test_init_trackers``: the folder comes in ``init_kwargs``."""
    accelerator = Accelerator(cpu=True, log_with=registered)
    init_kwargs = {registered: {"repo_path": str(repo_dir / "dvc")}}  # ADAPTED: our setting's name
    accelerator.init_trackers("test_project_with_config", CONFIG, init_kwargs)
    accelerator.end_training()
    tracker = accelerator.trackers[0]
    assert isinstance(tracker, TraceletAimTracker)
    # ADAPTED: params read from the AIM run, not DVCLive's params file
    assert read_run(repo_dir / "dvc", tracker.tracker.hash)["hparams"] == CONFIG


def test_dvclive_log(repo_dir: Path) -> None:
    """``DVCLiveTrackingTest.test_log``: no step, no step, then step 3 gives steps 0, 1, 3."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_log")
    numbers = {"total_loss": 0.1, "iteration": 1}  # ADAPTED: the string is checked as text below
    for step in (None, None, 3):
        accelerator.log({**numbers, "my_text": "some_value"}, step=step)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    for name, value in numbers.items():
        assert series(repo_dir, name, {}, run_hash) == {0: value, 1: value, 3: value}
    assert sorted(_texts(repo_dir, run_hash, "my_text")) == [0, 1, 3]


def test_register_and_use_by_name(repo_dir: Path, registered: str) -> None:
    """``RegisterTrackerClassTest.test_register_and_use_by_name``, with ours as the registered class."""
    assert registered in LOGGER_TYPE_TO_CLASS and registered not in LoggerType.list()  # no built-in's name
    accelerator = Accelerator(cpu=True, log_with=registered)
    config = {"num_iterations": 12, "learning_rate": 1e-2}
    accelerator.init_trackers("some_project", config)
    accelerator.log({"total_loss": 0.1}, step=0)
    tracker = accelerator.get_tracker(registered)
    accelerator.end_training()
    assert isinstance(tracker, TraceletAimTracker)
    # ADAPTED: "tracker.config" / "tracker.values" are the AIM run's params and series
    assert read_run(repo_dir, tracker.tracker.hash)["hparams"] == config
    assert series(repo_dir, "total_loss", {}, tracker.tracker.hash) == {0: 0.1}


# -- MLflowTrackingTest ---------------------------------------------------------------------------------


def test_mlflow_log(repo_dir: Path) -> None:
    """``MLflowTrackingTest.test_log``: the tracker's own ``log`` with a step."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name="test_exp")
    tracker.log({"accuracy": 0.95, "loss": 0.1, "non_numeric": "ignored"}, step=10)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert series(repo_dir, "accuracy", {}, run_hash) == {10: 0.95}
    assert series(repo_dir, "loss", {}, run_hash) == {10: 0.1}
    # ADAPTED: MLflow drops a string; ours keeps it as text, never as a metric
    assert series(repo_dir, "non_numeric", None, run_hash) == {}
    assert _texts(repo_dir, run_hash, "non_numeric") == {10: "ignored"}


@pytest.mark.parametrize("folder", [False, True], ids=["log_artifact", "log_artifacts"])
def test_log_artifact(repo_dir: Path, folder: bool) -> None:
    """``MLflowTrackingTest.test_log_artifact`` / ``test_log_artifacts``: a file, then a folder."""
    dummy_dir = repo_dir / "dummy_dir"
    dummy_dir.mkdir()
    (dummy_dir / "dummy.txt").write_text("dummy content")
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name="test_exp")
    # ADAPTED: after a first log(), as mid-training: until the run's first use `experiment` is None
    # (test_experiment_is_there_once_started); through it, as ours has no log_artifact of its own
    accelerator.log({"total_loss": 0.1}, step=0)
    source = dummy_dir if folder else dummy_dir / "dummy.txt"
    tracker.experiment.log_artifact(source, artifact_path="artifact_dir")
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    # ADAPTED: aim's run.artifacts instead of mlflow.artifacts.list_artifacts; the copy is downloaded.
    # A folder is copied into artifact_path under its own name (MLflow's log_artifacts copies its files)
    name = "artifact_dir/dummy_dir/dummy.txt" if folder else "artifact_dir/dummy.txt"
    artifacts = read_run(repo_dir, run_hash).artifacts
    assert list(artifacts) == [name]
    fetched = artifacts[name].download(str(repo_dir / "fetched"))
    assert Path(fetched).read_text() == "dummy content"


def test_experiment_is_there_once_started(repo_dir: Path) -> None:
    """``MLflowTrackingTest``'s pattern: a vendor method used right after ``init_trackers`` (there
    ``tracker.log_artifact``; ours is reached through ``tracker.experiment``)."""
    # ADAPTED: the first step of test_log_artifact as MLflow's test takes it, on its own
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name="test_exp")
    experiment = tracker.experiment
    accelerator.end_training()
    assert experiment is not None


def test_store_init_configuration_does_not_mutate_input(repo_dir: Path) -> None:
    """``MLflowTrackingTest.test_store_init_configuration_does_not_mutate_input``: the config dict is
    shared by every tracker in ``init_trackers``, so what ours redacts or converts stays as it was there."""
    # ADAPTED: ours drops nothing but redacts secrets and converts values; the caller's dict stays as is
    values = {"learning_rate": 0.001, "api_key": "k-123", "layers": (1, 2), "opt": {"name": "SGD"}}
    given = {**values, "opt": {"name": "SGD"}}
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name="test_exp")
    tracker.store_init_configuration(values)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert values == given
    stored = {**given, "api_key": "<redacted>", "layers": [1, 2]}
    assert read_run(repo_dir, run_hash)["hparams"] == stored


def test_store_init_configuration_keeps_the_values_it_was_given(repo_dir: Path) -> None:
    """The converse of the test above: a script's later change to its config dict is not the config it
    stored (every built-in tracker writes the values during the call)."""
    # ADAPTED: a new test from the same reason (the dict belongs to the caller, shared by every tracker)
    config = {"learning_rate": 0.1, "layers": [1, 2]}
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_exp", config)
    config["learning_rate"] = 0.2  # a script that goes on editing the dict it passed (vars(args))
    config["layers"].append(3)
    accelerator.log({"total_loss": 0.1}, step=0)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert read_run(repo_dir, run_hash)["hparams"] == {"learning_rate": 0.1, "layers": [1, 2]}


@pytest.mark.parametrize(
    "log_first",
    [True, False],
    ids=["after_a_log", "before_any_log"],
)
def test_store_init_configuration_after_init_trackers(repo_dir: Path, log_first: bool) -> None:
    """MLflow's tests call ``tracker.store_init_configuration`` after ``init_trackers``: what is stored
    must not depend on whether a value was logged in between (here: both configs, merged)."""
    # ADAPTED: a new test from MLflow's call pattern; merged, as ours does once the run is in use
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_exp", {"learning_rate": 0.1})
    if log_first:
        accelerator.log({"total_loss": 0.1}, step=0)
    tracker.store_init_configuration({"batch_size": 8})
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert read_run(repo_dir, run_hash)["hparams"] == {"learning_rate": 0.1, "batch_size": 8}


def test_log_without_step(repo_dir: Path) -> None:
    """``MLflowTrackingTest.test_log_without_step``: ``step`` is optional."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name="test_exp")
    tracker.log({"loss": 0.1})
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert series(repo_dir, "loss", {}, run_hash) == {0: 0.1}  # ADAPTED: and where it went


def test_log_accepts_extra_kwargs(repo_dir: Path) -> None:
    """``MLflowTrackingTest.test_log_accepts_extra_kwargs``: ``log_kwargs`` for our name reach the run."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project_name="test_exp")
    # ADAPTED: aim.Run.track's epoch= and context=, read back, not mocked (synchronous= is mlflow's alone)
    ours = {"epoch": 4, "context": {"subset": "dev"}}
    accelerator.log({"loss": 0.1}, step=1, log_kwargs={"tracelet": ours, "mlflow": {"synchronous": True}})
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert series(repo_dir, "loss", {"subset": "dev"}, run_hash) == {1: 0.1}
    assert epochs(repo_dir, "loss", {"subset": "dev"}, run_hash) == {1: 4}


# -- ClearMLTest ----------------------------------------------------------------------------------------


def test_clearml_init_trackers_and_unwrap(repo_dir: Path) -> None:
    """``ClearMLTest.test_init_trackers``: the run is found through ``get_tracker(..., unwrap=True)``."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_config", CONFIG)
    assert accelerator.get_tracker("tracelet") is tracker
    unwrapped = accelerator.get_tracker("tracelet", unwrap=True)  # ADAPTED: our handle, not a ClearML Task
    unwrapped.track(7.0, name="custom", step=1)  # aim.Run's surface, as AimTracker's unwrap gives
    unwrapped["note"] = "set through the handle"
    run_hash = unwrapped.hash
    accelerator.end_training()
    run = read_run(repo_dir, run_hash)
    assert run["hparams"] == CONFIG
    assert run["note"] == "set through the handle"
    assert series(repo_dir, "custom", {}, run_hash) == {1: 7.0}


def test_clearml_log(repo_dir: Path) -> None:
    """``ClearMLTest.test_log``: prefixes name where a value goes; values without a step are kept."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_log")
    values_with_iteration = {"should_be_under_train": 1, "eval_value": 2, "test_value": 3.1}
    values_with_iteration["train_value"] = 4.1
    accelerator.log(values_with_iteration, step=1)
    single_values = {"single_value_1": 1.1, "single_value_2": 2.2}
    accelerator.log(single_values)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    # ADAPTED: ClearML's "variant" is our AIM context, from the same train / eval / test prefixes
    assert series(repo_dir, "should_be_under_train", {}, run_hash) == {1: 1.0}
    assert series(repo_dir, "value", {"subset": "val"}, run_hash) == {1: 2.0}
    assert series(repo_dir, "value", {"subset": "test"}, run_hash) == {1: 3.1}
    assert series(repo_dir, "value", {"subset": "train"}, run_hash) == {1: 4.1}
    for name, value in single_values.items():  # ClearML's "Summary": one value each, whatever its step
        assert list(series(repo_dir, name, {}, run_hash).values()) == [value]


def _clearml_images() -> dict[str, np.ndarray]:
    base_image = np.eye(32, 32, dtype=np.uint8) * 255  # ADAPTED: 32 x 32, not 256 x 256
    base_image_3d = np.concatenate((np.atleast_3d(base_image), np.zeros((32, 32, 2), dtype=np.uint8)), axis=2)
    return {"base_image": base_image, "base_image_3d": base_image_3d}


def test_clearml_log_images(repo_dir: Path) -> None:
    """``ClearMLTest.test_log_images``, the colour half: an ``H x W x 3`` array is one AIM image."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_log_images")
    image = _clearml_images()["base_image_3d"]
    accelerator.get_tracker("tracelet").log_images({"base_image_3d": image}, step=1)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    # ADAPTED: the image read back from the run, not counted as files in ClearML's offline folder
    sequence = read_run(repo_dir, run_hash).get_image_sequence("base_image_3d", Context({}))
    (stored,) = sequence.data.values_list()[0]
    assert np.array_equal(np.asarray(stored.to_pil_image())[..., :3], image)


def test_clearml_log_images_grayscale(repo_dir: Path) -> None:
    """``ClearMLTest.test_log_images`` as written: both images, one of them 2-D, with the defaults."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("test_project_with_log_images")
    images = _clearml_images()
    accelerator.get_tracker("tracelet").log_images(images, step=1)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert _image_names(repo_dir, run_hash) == set(images)  # ADAPTED: read back, not files counted


# -- CustomTrackerTestCase: ours beside MyCustomTracker -------------------------------------------------


class MyCustomTracker(GeneralTracker):
    """Accelerate's csv-writing test tracker, rewritten: the other tracker in ``log_with``."""

    _col_names = ["total_loss", "iteration", "my_text", *CONFIG]
    name = "my_custom_tracker"
    requires_logging_directory = False

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.log_dir = folder
        self.handle: Any = None
        self.writer: Any = None

    def start(self) -> None:
        if self.handle is None:
            self.handle = open(os.path.join(self.log_dir, "log.csv"), "w+")  # noqa: SIM115 (closed in finish)
            self.writer = csv.DictWriter(self.handle, fieldnames=self._col_names)
            self.writer.writeheader()

    @property
    def tracker(self) -> Any:
        return self.writer

    def store_init_configuration(self, values: dict) -> None:
        self.writer.writerow(values)

    def log(self, values: dict, step: int | None = None) -> None:
        self.writer.writerow(values)

    def finish(self) -> None:
        self.handle.close()


def _csv_row(folder: Path) -> dict[str, str]:
    with open(folder / "log.csv") as handle:
        return next(csv.DictReader(handle))


def test_custom_tracker_init_trackers(repo_dir: Path) -> None:
    """``CustomTrackerTestCase.test_init_trackers``, with ours first in ``log_with``: both get the config."""
    # ADAPTED: ours beside the custom tracker, so ours must leave it the config it was given
    custom = MyCustomTracker(str(repo_dir))
    ours = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=[ours, custom])
    accelerator.init_trackers("Some name", CONFIG)
    accelerator.end_training()
    truth = {"total_loss": "", "iteration": "", "my_text": ""}
    truth.update({"learning_rate": "0.01", "num_iterations": "12", "some_boolean": "False"})
    assert _csv_row(repo_dir) == {**truth, "some_string": "some_value"}
    assert read_run(repo_dir, ours.tracker.hash)["hparams"] == CONFIG  # ADAPTED: and ours has it, typed


def test_custom_tracker_log(repo_dir: Path) -> None:
    """``CustomTrackerTestCase.test_log``, with ours after the custom tracker: both get the values."""
    custom = MyCustomTracker(str(repo_dir))
    ours = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=[custom, ours])
    accelerator.init_trackers("Some name")
    accelerator.log(VALUES, step=0)
    accelerator.end_training()
    assert _csv_row(repo_dir) == {
        **{"total_loss": "0.1", "iteration": "1", "my_text": "some_value"},
        **dict.fromkeys(CONFIG, ""),
    }
    assert series(repo_dir, "total_loss", {}, ours.tracker.hash) == {0: 0.1}  # ADAPTED: ours too
    assert _texts(repo_dir, ours.tracker.hash, "my_text") == {0: "some_value"}


def test_custom_tracker_none_kwargs(repo_dir: Path) -> None:
    """``test_init_trackers_none_kwargs`` and ``test_log_none_kwargs``: ``None`` for either dict."""
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("Some name", init_kwargs=None)
    accelerator.log({"total_loss": 0.1}, step=0, log_kwargs=None)
    accelerator.end_training()
    assert series(repo_dir, "total_loss", {}, tracker.tracker.hash) == {0: 0.1}  # ADAPTED: read back


# -- TrackerDeferredInitializationTest ------------------------------------------------------------------


def test_deferred_init(repo_dir: Path) -> None:
    """``TrackerDeferredInitializationTest.test_aim_deferred_init``: building the tracker leaves
    ``PartialState`` (and ``torch.distributed``) alone; the ``Accelerator`` sets it up."""
    # ADAPTED: AcceleratorState too (earlier tests made an Accelerator); accelerate resets PartialState
    AcceleratorState._reset_state(reset_partial_state=True)
    tracker = TraceletAimTracker("test_aim", repo_path=str(repo_dir))  # ADAPTED: ours, its repo
    assert PartialState._shared_state == {}
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    accelerator = Accelerator(cpu=True, log_with=tracker)
    assert PartialState._shared_state != {}
    # ADAPTED: and the tracker then works, through the writer process, into the repo it was given
    accelerator.init_trackers("test_aim", CONFIG)
    accelerator.log({"total_loss": 0.1}, step=0)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert read_run(repo_dir, run_hash)["hparams"] == CONFIG
    assert series(repo_dir, "total_loss", {}, run_hash) == {0: 0.1}


# -- beyond test_tracking.py: the GeneralTracker contract as Accelerator drives it ----------------------


def test_contract_attributes_and_call_order(repo_dir: Path) -> None:
    """The attributes ``filter_trackers`` / ``get_tracker`` read, and ``start()`` called by
    ``init_trackers`` (accelerate >= 1.0), not by the ``Accelerator``: nothing exists before it."""
    # ADAPTED: no original; the order asserted with a recording subclass, as transformers' callback tests
    calls: list[str] = []

    class Recording(TraceletAimTracker):
        def start(self) -> None:
            calls.append("start")
            super().start()

        def store_init_configuration(self, values: dict) -> None:
            calls.append("store_init_configuration")
            super().store_init_configuration(values)

        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            calls.append("log")
            super().log(values, step, **kwargs)

        def finish(self) -> None:
            calls.append("finish")
            super().finish()

    built_in = {cls.name for cls in LOGGER_TYPE_TO_CLASS.values()}
    assert TraceletAimTracker.name == "tracelet" and TraceletAimTracker.name not in built_in
    assert TraceletAimTracker.main_process_only is True
    tracker = Recording("order", repo_path=str(repo_dir))
    accelerator = Accelerator(cpu=True, log_with=tracker)
    assert calls == [] and not tracker.tracker and tracker.tracker.hash is None  # the stand-in
    assert list(repo_dir.iterdir()) == []
    accelerator.init_trackers("order", {"lr": 0.1})
    assert calls == ["start", "store_init_configuration"]
    accelerator.log({"total_loss": 0.1}, step=0)
    run_hash = tracker.tracker.hash
    assert tracker.tracker and run_hash
    accelerator.end_training()
    accelerator.end_training()  # twice: the second finish() has nothing to close
    assert calls == ["start", "store_init_configuration", "log", "finish", "finish"]
    # the ended run is still named by the tracker, and was closed once, as finished
    assert tracker.tracker.hash == run_hash and tracker.experiment.status == "finished"
    assert [run.hash for run in open_repo(repo_dir).iter_runs()] == [run_hash]
    assert read_run(repo_dir, run_hash).get("status") == "finished"


def test_log_with_all_and_accelerates_own_aim_tracker(repo_dir: Path) -> None:
    """``log_with=["all", ours, ours]``: TensorBoard, accelerate's ``AimTracker`` (in the same AIM repo)
    and two of ours take the same config and values; ``get_tracker`` finds the first of ours."""
    # ADAPTED: no original; the combinations filter_trackers documents, with the trackers installed here
    first, second = _ours(repo_dir, "first"), _ours(repo_dir, "second")
    accelerator = Accelerator(cpu=True, log_with=["all", first, second], project_dir=str(repo_dir))
    # aim's own Run would sample the system and capture the terminal: not under test
    quiet_aim = {"aim": {"system_tracking_interval": None, "capture_terminal_logs": False}}
    accelerator.init_trackers("all_project", CONFIG, quiet_aim)
    names = sorted(tracker.name for tracker in accelerator.trackers)
    assert names == ["aim", "tensorboard", "tracelet", "tracelet"]
    numbers = {"total_loss": 0.1, "iteration": 1}  # AimTracker cannot take a string (aim raises)
    accelerator.log(numbers, step=0)
    assert accelerator.get_tracker("tracelet") is first
    # aim lists only indexed runs, and only `aim up` indexes: accelerate's AimTracker's run is read
    # through its live aim.Run (ours index their own on close)
    theirs = accelerator.get_tracker("aim", unwrap=True)
    assert theirs["hparams"] == CONFIG
    for name, value in numbers.items():
        steps, (values, *_rest) = theirs.get_metric(name, Context({})).data.items_list()
        assert dict(zip(steps, values, strict=True)) == {0: value}
    ours = {first.tracker.hash, second.tracker.hash}
    accelerator.end_training()
    runs = {run.hash: run for run in open_repo(repo_dir).iter_runs()}
    assert set(runs) == ours and len(ours) == 2 and theirs.hash not in ours
    for run_hash in ours:  # the same params and values as accelerate's own AIM run
        assert runs[run_hash]["hparams"] == CONFIG
        for name, value in numbers.items():
            assert series(repo_dir, name, {}, run_hash) == {0: value}
    assert {runs[run_hash].name for run_hash in ours} == {"first", "second"}
    assert list((repo_dir / "all_project").glob("events.out.tfevents.*"))  # TensorBoard wrote too


@pytest.mark.parametrize(
    ("config", "stored"),
    [
        (
            {"nested": {"a": 1, "b": {"c": [1, 2]}}, "none": None, "list": [1, "a", 2.5], "pair": (3, 4)},
            {"nested": {"a": 1, "b": {"c": [1, 2]}}, "none": None, "list": [1, "a", 2.5], "pair": [3, 4]},
        ),
        (
            Namespace(lr=0.1, name="x", inner=Namespace(depth=2)),
            {"lr": 0.1, "name": "x", "inner": {"depth": 2}},
        ),
    ],
    ids=["nested_dict_none_lists", "namespace"],
)
def test_store_init_configuration_value_types(repo_dir: Path, config: Any, stored: dict) -> None:
    """The config kinds other backends' tests and docs pass (TensorBoard's and W&B's nested dicts,
    ``None`` in the base class's docstring, ``vars(args)`` or the ``Namespace`` itself)."""
    # ADAPTED: no single original; each value read back from the run as it was given, JSON-shaped
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceletWarning)
        accelerator.init_trackers("value_types", config)
    accelerator.end_training()
    assert read_run(repo_dir, tracker.tracker.hash)["hparams"] == stored


def test_log_values_that_are_not_numbers(repo_dir: Path) -> None:
    """``log`` values outside the base class's ``str`` / ``float`` / ``int``: numpy and tensor scalars
    are numbers; ``None``, a list or a dict warn once per tag and are dropped, the rest of the call kept."""
    # ADAPTED: accelerate's TensorBoard / W&B / Comet trackers take a dict of scalars (add_scalars);
    # its AimTracker raises on one; ours warns and drops it (STYLE.md rule 7)
    tracker = _ours(repo_dir)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("value_types")
    numbers = {"np32": np.float32(0.5), "np64": np.int64(7), "flag": True, "t1": torch.tensor([3.0])}
    dropped = {"none": None, "listed": [1, 2], "nested": {"a": 1.0}}
    with pytest.warns(TraceletWarning) as caught:
        accelerator.log({**numbers, **dropped}, step=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceletWarning)  # once per tag
        accelerator.log(dropped, step=1)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert {name for name in dropped if any(repr(name) in str(w.message) for w in caught)} == set(dropped)
    for name, value in numbers.items():
        assert series(repo_dir, name, {}, run_hash) == {0: float(value)}
    for name in dropped:
        assert series(repo_dir, name, None, run_hash) == {}


# -- on_main_process in a real two-process job ----------------------------------------------------------

TWO_RANKS_JOB = """
    import json
    import os
    import sys
    from datetime import timedelta

    import torch.distributed as dist
    from accelerate import Accelerator, PartialState
    from accelerate.utils import InitProcessGroupKwargs

    from tracelet_callbacks import TraceletAimTracker

    repo = sys.argv[1]
    rank = int(os.environ["RANK"])
    # built before the Accelerator, as accelerate's examples do: no process group yet
    ours = TraceletAimTracker("two-ranks", repo_path=repo)
    everyone = TraceletAimTracker("each", repo_path=f"{repo}-rank{rank}")
    everyone.main_process_only = False  # accelerate's policy is this one attribute
    untouched = PartialState._shared_state == {} and not dist.is_initialized()
    # what accelerate defers start() for: process group settings given to the Accelerator after it
    handler = InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=90))
    accelerator = Accelerator(cpu=True, log_with=[ours], kwargs_handlers=[handler])
    accelerator.init_trackers("two_ranks", config={"world_size": accelerator.num_processes})
    accelerator.log({"train_loss": float(rank)}, step=0)
    ours.log({"rank_value": float(rank)}, step=0)  # user code calls it on every rank
    ours.tracker.track(float(rank), name="direct", step=0)
    everyone.start()
    everyone.log({"rank_value": float(rank)}, step=0)
    report = {
        "rank": rank,
        "main": accelerator.is_main_process,
        "untouched": untouched,
        "found": type(accelerator.get_tracker("tracelet")).__name__,
        "hash": ours.tracker.hash,
        "each": everyone.tracker.hash,
    }
    everyone.finish()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    with open(f"report-{rank}.json", "w") as handle:
        json.dump(report, handle)
"""


def test_on_main_process_in_a_two_process_job(tmp_path: Path) -> None:
    """Accelerate's main-process policy in a real two-process gloo job on CPU (``torch.distributed.run``,
    as ``accelerate launch`` starts it): both ranks point ours at one repo; only rank 0's run is there,
    with rank 0's values; a tracker whose ``main_process_only`` is ``False`` writes on each rank."""
    # ADAPTED: no original in test_tracking.py (accelerate's test_utils/scripts/test_script.py checks
    # PartialState.on_main_process under `accelerate launch`; the trackers' policy rests on it)
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no torch.distributed gloo backend")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    (tmp_path / "job.py").write_text(textwrap.dedent(TWO_RANKS_JOB))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MASTER_", "LOCAL_RANK"))}
    env.update(TRACELET_SYSTEM_TRACKING_INTERVAL="off", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", port, "job.py", str(tmp_path / "aim")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    zero, one = (json.loads((tmp_path / f"report-{rank}.json").read_text()) for rank in (0, 1))
    assert (zero["main"], one["main"]) == (True, False)
    assert zero["untouched"] and one["untouched"]
    # accelerate hands rank 1 a blank GeneralTracker; our own instance there is the stand-in
    assert (zero["found"], one["found"]) == ("TraceletAimTracker", "GeneralTracker")
    assert zero["hash"] and one["hash"] is None
    repo = tmp_path / "aim"
    (run,) = open_repo(repo).iter_runs()
    assert run.hash == zero["hash"] and run.get("status") == "finished"
    assert run["hparams"] == {"world_size": 2}
    assert series(repo, "loss", {"subset": "train"}, run.hash) == {0: 0.0}
    assert series(repo, "rank_value", {}, run.hash) == {0: 0.0}
    assert series(repo, "direct", {}, run.hash) == {0: 0.0}
    for rank, report in enumerate((zero, one)):  # main_process_only=False: each rank its own run
        (each,) = open_repo(f"{repo}-rank{rank}").iter_runs()
        assert each.hash == report["each"]
        assert series(f"{repo}-rank{rank}", "rank_value", {}, each.hash) == {0: float(rank)}
