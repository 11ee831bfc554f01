"""Experiment and the AIM sink against real repos: resume, artifacts, status, indexing, bad input."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import tracelet_callbacks as tracelet
from conftest import open_repo, read_run, series
from tracelet_callbacks.sink.environment import redacted_argv


@pytest.mark.slow
def test_metrics_params_and_status_read_back(repo_dir: Path) -> None:
    with tracelet.Experiment(run_name="unit", experiment_name="exp") as exp:
        for step in range(5):
            exp.log_metric("train/loss", 1.0 / (step + 1), iteration=step, epoch=step // 2)
        exp.log_metrics({"val_loss": 0.5, "val_acc": np.float32(0.75)}, step=4)
        exp.log_params({"lr": 1e-3, "nested": {"depth": 2}})
        exp.log_params({"nested": {"width": 8}})  # merged, not replacing
        run_hash = exp.hash
    assert series(repo_dir, "loss", {"subset": "train"}) == {0: 1.0, 1: 0.5, 2: 1 / 3, 3: 0.25, 4: 0.2}
    assert series(repo_dir, "acc", {"subset": "val"}) == {4: 0.75}
    run = read_run(repo_dir, run_hash)
    assert run["hparams"] == {"lr": 1e-3, "nested": {"depth": 2, "width": 8}}
    assert run["status"] == "finished"
    assert (run.name, run.experiment, run.active) == ("unit", "exp", False)
    query = "metric.name == 'loss' and metric.context.subset == 'train'"
    (metric,) = open_repo(repo_dir).query_metrics(query).iter()
    _steps, (_values, epochs, *_rest) = metric.data.items_list()
    assert list(epochs) == [0, 0, 1, 1, 2]


@pytest.mark.slow
def test_bookkeeping_stays_out_of_the_params_the_ui_shows(repo_dir: Path) -> None:
    """aim's UI lists every param of a run but ``__system_params``: our heartbeat, the status a resume
    came from and the mark of ``close-stale`` live there, the user's params and ``status`` stay on top.
    ``runs ls`` still reads the heartbeat of a run written by an earlier release (a top-level key)."""
    from tracelet_callbacks.sink.stale import list_runs

    first = tracelet.Experiment(run_name="first", log_system_params=True)
    first.log_params({"lr": 0.1})
    first.log_metric("loss", 1.0, 0)
    first.close("interrupted")
    second = tracelet.Experiment(run_hash=first.hash, log_system_params=True)
    second.log_metric("loss", 0.5, 1)
    second.close()

    run = read_run(repo_dir, first.hash)
    shown = run.get(..., {})
    system = shown.pop("__system_params")
    assert not [key for key in shown if key.startswith("__")], shown
    assert {"hparams", "status"} <= set(shown) and "resumed_from_status" not in shown, shown
    assert shown["status"] == "finished"
    bookkeeping = system["tracelet"]
    assert bookkeeping["resumed_from_status"] == "interrupted"
    assert bookkeeping["heartbeat"]["host"] and bookkeeping["heartbeat"]["pid"] > 0
    assert system["arguments"] and system["packages"]  # aim's own layout, kept beside ours

    import aim

    old = aim.Run(repo=str(repo_dir), system_tracking_interval=None, log_system_params=False)
    old["__tracelet_heartbeat"] = {"time": 1234.5, "pid": 4321, "host": "elsewhere"}
    rows = {row.hash: row for row in list_runs(open_repo(repo_dir))}
    assert (rows[old.hash].heartbeat, rows[old.hash].pid, rows[old.hash].host) == (1234.5, 4321, "elsewhere")
    assert rows[first.hash].heartbeat == bookkeeping["heartbeat"]["time"]
    old.close()


@pytest.mark.slow
def test_exception_in_with_block_records_failed(repo_dir: Path) -> None:
    with pytest.raises(RuntimeError), tracelet.Experiment() as exp:
        exp.log_metric("loss", 1.0, 0)
        raise RuntimeError("boom")
    assert read_run(repo_dir, exp.hash)["status"] == "failed"
    assert series(repo_dir, "loss", {}) == {0: 1.0}


@pytest.mark.slow
def test_resume_by_run_hash_continues_the_same_run(repo_dir: Path) -> None:
    first = tracelet.Experiment(run_name="resumable")
    for step in range(3):
        first.log_metric("loss", float(step), step)
    first.close("interrupted")
    second = tracelet.Experiment(run_hash=first.hash)
    for step in range(3, 6):
        second.log_metric("loss", float(step), step)
    second.close()
    assert second.hash == first.hash
    assert len(list(open_repo(repo_dir).iter_runs())) == 1
    assert series(repo_dir, "loss", {}) == {step: float(step) for step in range(6)}
    run = read_run(repo_dir, first.hash)
    assert run["status"] == "finished"
    assert run["__system_params"]["tracelet"]["resumed_from_status"] == "interrupted"


@pytest.mark.slow
def test_resume_of_unknown_hash_is_a_clear_error(repo_dir: Path) -> None:
    tracelet.Experiment(run_name="x").close()
    with pytest.raises(tracelet.TraceletError, match="deadbeef"):
        tracelet.Experiment(run_hash="deadbeef00000000deadbeef").open()


def test_artifacts_are_copied_into_the_store(repo_dir: Path) -> None:
    model = repo_dir / "model.pth"
    model.write_bytes(b"\x00weights\xff" * 100)
    folder = repo_dir / "stats"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.json").write_text('{"n": 1}')
    (folder / "sub" / "b.txt").write_text("b")
    with tracelet.Experiment() as exp:
        assert exp.log_artifact(model, artifact_path="models/") == ["models/model.pth"]
        assert exp.log_artifact(folder, artifact_path="data") == ["data/stats/a.json", "data/stats/sub/b.txt"]
        with pytest.raises(ValueError, match="leave the artifact store"):
            exp.log_artifact(model, artifact_path="../../outside")
        with pytest.raises(FileNotFoundError):
            exp.log_artifact(repo_dir / "missing.bin")
    model.unlink()  # the store holds a copy, not a reference
    stored = repo_dir / "aim-artifacts" / exp.hash
    assert (stored / "models" / "model.pth").read_bytes() == b"\x00weights\xff" * 100
    assert (stored / "data" / "stats" / "sub" / "b.txt").read_text() == "b"
    run = read_run(repo_dir, exp.hash)
    assert set(run.artifacts) == {"models/model.pth", "data/stats/a.json", "data/stats/sub/b.txt"}
    assert not list(repo_dir.parent.glob("outside*"))


@pytest.mark.slow
def test_custom_artifacts_uri_folder(repo_dir: Path) -> None:
    (repo_dir / "f.txt").write_text("hi")
    with tracelet.Experiment(artifacts_uri=str(repo_dir / "store")) as exp:
        exp.log_artifact(repo_dir / "f.txt")
    assert (repo_dir / "store" / exp.hash / "f.txt").read_text() == "hi"


def test_secrets_are_stored_nowhere(repo_dir: Path) -> None:
    with tracelet.Experiment(tags={"team": "nlp", "wandb_api_key": "k-9911"}) as exp:
        exp.log_params({"api_key": "sk-123", "db": "postgresql://u:pw@h/db", "hub_token": "hf_qwerty"})
    params = read_run(repo_dir, exp.hash)["hparams"]
    assert params == {
        "api_key": "<redacted>",
        "db": "postgresql://u:<redacted>@h/db",
        "hub_token": "<redacted>",
    }
    for path in repo_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (b"sk-123", b"u:pw@", b"hf_qwerty", b"k-9911"):
                assert secret not in data, (secret, path)


@pytest.mark.slow
def test_bad_values_warn_once_and_lose_nothing_else(repo_dir: Path) -> None:
    with tracelet.Experiment() as exp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            exp.log_metric("odd", None, step)
            exp.log_metric("odd", "text", step)
            exp.log_metric("good", float(step), step)
        exp.log_metric("nan", float("nan"), 0)
        exp.log_metric("inf", float("inf"), 0)
    ours = [w for w in caught if issubclass(w.category, tracelet.TraceletWarning)]
    assert len(ours) == 1 and "'odd'" in str(ours[0].message) and "None" in str(ours[0].message)
    assert series(repo_dir, "good", {}) == {0: 0.0, 1: 1.0, 2: 2.0}
    assert np.isnan(series(repo_dir, "nan", {})[0]) and series(repo_dir, "inf", {})[0] == float("inf")


def test_strict_raises(repo_dir: Path) -> None:
    with tracelet.Experiment(strict=True) as exp, pytest.raises(tracelet.TraceletValueError, match="'odd'"):
        exp.log_metric("odd", "text", 0)


def test_run_handle_has_the_aim_writing_surface(repo_dir: Path) -> None:
    import aim

    with tracelet.Experiment() as exp:
        run = exp.run
        run.track(0.5, name="raw/name", step=1, context={"subset": "train"})  # no routing on the handle
        run.track(aim.Text("hello"), name="notes", step=1)
        run["custom"] = {"a": 1}
        run.add_tag("baseline")
        run.name = "renamed"
        assert run.hash == exp.hash
        assert run["custom"] == {"a": 1}
    assert series(repo_dir, "raw/name", {"subset": "train"}) == {1: 0.5}
    stored = read_run(repo_dir, exp.hash)
    assert stored["custom"] == {"a": 1} and "baseline" in stored.tags and stored.name == "renamed"


def test_disabled_experiment_is_a_silent_stand_in(repo_dir: Path) -> None:
    exp = tracelet.Experiment(enabled=False)
    exp.log_metric("loss", 1.0, 0)
    exp.log_params({"a": 1})
    exp.run.track(1.0, name="x")
    exp.close()
    assert exp.hash is None and not exp.run
    assert not (repo_dir / ".aim").exists()


def test_construction_has_no_side_effects(repo_dir: Path) -> None:
    exp = tracelet.Experiment(repo_path=str(repo_dir / "later"))
    assert not (repo_dir / "later").exists()
    exp.log_metric("loss", 1.0, 0)
    exp.close()
    assert (repo_dir / "later" / ".aim").is_dir()


def test_repo_path_under_a_file_names_the_path(repo_dir: Path) -> None:
    (repo_dir / "afile").write_text("x")
    with pytest.raises(tracelet.TraceletError, match="afile"):
        tracelet.start_logging(backend="aim", config={"repo_path": str(repo_dir / "afile" / "repo")})
    assert tracelet.get_active_experiment() is None


def test_start_logging_errors(repo_dir: Path) -> None:
    with pytest.raises(ValueError, match="'aim'"):
        tracelet.start_logging(backend="wandb")
    with pytest.raises(ValueError, match=r"repo_pth.*repo_path"):
        tracelet.start_logging(backend="aim", config={"repo_pth": "."})
    tracelet.stop_logging()  # no session: nothing happens
    assert tracelet.get_active_experiment() is None


@pytest.mark.slow
def test_start_logging_takes_a_settings_object(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``config=TraceletConfig(...)`` as the README shows; exp_name and project fill what it leaves unset,
    and the environment is not read again (the object is complete)."""
    monkeypatch.setenv("TRACELET_AIM_EXPERIMENT", "from-env")
    settings = tracelet.TraceletConfig(repo_path=str(repo_dir / "objects"), tags={"team": "a"})
    exp = tracelet.start_logging(exp_name="object-run", project="object-project", config=settings)
    exp.log_metric("train/loss", 1.0, 0)
    tracelet.stop_logging()
    run = read_run(repo_dir / "objects", exp.hash)
    assert (run.name, run.experiment, run["tags"]) == ("object-run", "object-project", {"team": "a"})
    named = tracelet.TraceletConfig(repo_path=str(repo_dir / "objects"), run_name="kept")
    exp = tracelet.start_logging(exp_name="ignored", config=named)
    tracelet.stop_logging()
    assert exp.name == "kept"


@pytest.mark.slow
def test_environment_variables_configure_the_run(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_AIM_REPO", str(repo_dir / "from_env"))
    monkeypatch.setenv("TRACELET_AIM_EXPERIMENT", "env-exp")
    monkeypatch.setenv("TRACELET_AIM_TAGS", "team=vision,stage=dev")
    exp = tracelet.start_logging(exp_name="env-run", backend="aim")
    exp.log_metric("loss", 1.0, 0)
    tracelet.stop_logging()
    run = read_run(repo_dir / "from_env", exp.hash)
    assert (run.name, run.experiment) == ("env-run", "env-exp")
    assert run["tags"] == {"team": "vision", "stage": "dev"}


@pytest.mark.slow
def test_environment_is_recorded_without_env_vars(repo_dir: Path) -> None:
    with tracelet.Experiment() as exp:
        exp.log_metric("loss", 1.0, 0)
    system = read_run(repo_dir, exp.hash)["__system_params"]
    assert "aim" in system["packages"] and "numpy" in system["packages"]
    assert "env_variables" not in system
    # the trainer's command line, though the writer process wrote it
    assert system["arguments"] == redacted_argv(sys.argv)


def test_run_handle_redacts_secret_keys(repo_dir: Path) -> None:
    with tracelet.Experiment() as exp:
        exp.run["hub_token"] = "plainsecret"
        exp.run.set("wandb_api_key", "xyz")
    run = read_run(repo_dir, exp.hash)
    assert run["hub_token"] == "<redacted>" and run["wandb_api_key"] == "<redacted>"


def test_framework_status_names_and_bad_status(repo_dir: Path) -> None:
    exp = tracelet.Experiment()
    exp.log_metric("loss", 1.0, 0)
    with pytest.raises(ValueError, match="finished, failed, interrupted, killed"):
        exp.close("exploded")
    exp.close("success")  # Lightning's word for it; the run is still closable after the bad call
    assert read_run(repo_dir, exp.hash)["status"] == "finished"


def test_logging_after_close_warns_instead_of_crashing(repo_dir: Path) -> None:
    exp = tracelet.Experiment()
    exp.log_metric("loss", 1.0, 0)
    exp.close()
    with pytest.warns(tracelet.TraceletWarning, match="after the run was closed"):
        exp.log_metric("loss", 2.0, 1)
        exp.run.track(3.0, name="loss", step=2)
    assert series(repo_dir, "loss", {}) == {0: 1.0}
    assert exp.run.hash == exp.hash


def test_params_that_cannot_be_read_are_skipped_with_a_warning(repo_dir: Path) -> None:
    class Broken:
        def to_dict(self) -> dict:
            return {"fine": 1}

        def model_dump(self) -> dict:
            raise RuntimeError("cannot dump")

    with tracelet.Experiment() as exp:
        with pytest.warns(tracelet.TraceletWarning, match="cannot dump"):
            exp.log_params(Broken())
        exp.log_params({"after": 2})
    assert read_run(repo_dir, exp.hash)["hparams"] == {"after": 2}


def test_a_skipped_value_is_reported_at_the_callers_line(repo_dir: Path) -> None:
    with (
        tracelet.Experiment() as exp,
        pytest.warns(tracelet.TraceletWarning, match="skipped value") as record,
    ):
        exp.log_metric("loss", "abc", 0)
        exp.log_metrics({"acc": "high"}, step=0)
    assert [w.filename for w in record] == [__file__, __file__]
