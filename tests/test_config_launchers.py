"""Launchers and config systems that build the trainer for the user: LightningCLI, Hydra, a notebook.

Each job is started the way a user starts it (a script and its YAML, a command line, a Jupyter kernel
driven by ``nbclient``) in a fresh process, and its runs are read back with aim's public API.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import open_repo, read_run, series

pytestmark = pytest.mark.slow

TIMEOUT = 240

CLI_SCRIPT = """
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel


    class LoggingModel(BoringModel):
        def __init__(self, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()

        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.log("train_loss", out["loss"])
            return out


    if __name__ == "__main__":
        LightningCLI(LoggingModel, BoringDataModule)
"""


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _runs_by_name(repo: Path) -> dict[str, object]:
    return {run.name: run for run in open_repo(repo).iter_runs()}


def test_lightning_cli_builds_the_logger_from_a_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent(CLI_SCRIPT))
    (tmp_path / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            model:
              lr: 0.05
            trainer:
              max_steps: 3
              log_every_n_steps: 1
              enable_progress_bar: false
              enable_model_summary: false
              default_root_dir: {tmp_path / "root"}
              logger:
                class_path: tracelet_callbacks.TraceletAimLogger
                init_args:
                  repo_path: {tmp_path / "repo"}
                  run_name: from-yaml
                  tags:
                    team: cli
            """
        )
    )
    _run([sys.executable, "train.py", "fit", "--config", "config.yaml"], tmp_path)
    run = _runs_by_name(tmp_path / "repo")["from-yaml"]
    assert run["status"] == "finished" and run["tags"] == {"team": "cli"}
    assert run["hparams"]["lr"] == 0.05
    # the parsed config is stored with the run, as LightningCLI wrote it beside the checkpoints
    assert run["config"]["trainer"]["max_steps"] == 3
    assert run["config"]["trainer"]["logger"]["init_args"]["run_name"] == "from-yaml"
    assert (tmp_path / "root" / "config.yaml").exists()
    assert sorted(series(tmp_path / "repo", "loss", {"subset": "train"}, run.hash)) == [0, 1, 2]


def test_lightning_cli_builds_the_logger_from_flags(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent(CLI_SCRIPT))
    _run(
        [
            sys.executable,
            "train.py",
            "fit",
            "--trainer.logger=tracelet_callbacks.TraceletAimLogger",
            f"--trainer.logger.repo_path={tmp_path / 'repo'}",
            "--trainer.logger.run_name=from-flags",
            "--trainer.logger.system_tracking_interval=null",
            "--trainer.max_steps=2",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'root'}",
            "--model.lr=0.2",
        ],
        tmp_path,
    )
    run = _runs_by_name(tmp_path / "repo")["from-flags"]
    assert run["status"] == "finished" and run["hparams"]["lr"] == 0.2
    assert run["config"]["model"]["lr"] == 0.2
    assert sorted(series(tmp_path / "repo", "loss", {"subset": "train"}, run.hash)) == [0, 1]


HYDRA_SCRIPT = """
    import hydra
    from omegaconf import DictConfig

    import tracelet_callbacks as tracelet


    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def main(cfg: DictConfig) -> None:
        exp = tracelet.start_logging(exp_name=f"lr={cfg.lr}", project="hydra", config={"repo_path": cfg.repo})
        exp.log_params(cfg)
        for step in range(5):
            exp.log_metric("train/loss", cfg.lr * step, step)
        with open("model.pth", "w") as handle:  # in this job's own folder (hydra.job.chdir=True)
            handle.write(f"weights for lr={cfg.lr}")
        exp.log_artifact("model.pth")
        tracelet.stop_logging()


    if __name__ == "__main__":
        main()
"""


def test_hydra_multirun_with_chdir_makes_one_complete_run_per_job(tmp_path: Path) -> None:
    pytest.importorskip("hydra")
    repo = tmp_path / "repo"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(f"lr: 0.1\nrepo: {repo}\n")
    (tmp_path / "train.py").write_text(textwrap.dedent(HYDRA_SCRIPT))
    _run([sys.executable, "train.py", "-m", "lr=0.1,0.2,0.3", "hydra.job.chdir=True"], tmp_path)
    runs = _runs_by_name(repo)
    assert set(runs) == {"lr=0.1", "lr=0.2", "lr=0.3"}
    for lr in (0.1, 0.2, 0.3):
        run = runs[f"lr={lr}"]
        assert run["status"] == "finished" and run["hparams"]["lr"] == lr
        found = series(repo, "loss", {"subset": "train"}, run.hash)
        assert found == pytest.approx({step: lr * step for step in range(5)})
        # every job's artifact is its own file, found relative to the job's folder
        stored = repo / "aim-artifacts" / run.hash / "model.pth"
        assert stored.read_text() == f"weights for lr={lr}"


def test_a_notebook_kernel_that_reruns_cells_and_is_shut_down_keeps_its_runs(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    repo = tmp_path / "repo"
    start = (
        "import tracelet_callbacks as tracelet\n"
        f"settings = {{'repo_path': {str(repo)!r}}}\n"
        "exp = tracelet.start_logging(exp_name='cell', backend='aim', config=settings)\n"
        "for step in range(10):\n"
        "    exp.log_metric('train/loss', 1.0 / (step + 1), step)\n"
        "print('HASH', exp.hash)"
    )
    # the cell is run twice, as people re-run a cell; the kernel is then shut down without stop_logging
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(start), nbformat.v4.new_code_cell(start)]
    )
    client = nbclient.NotebookClient(
        notebook, timeout=TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    hashes = [
        output["text"].split("HASH", 1)[1].split()[0]
        for cell in notebook.cells
        for output in cell.outputs
        if output.get("name") == "stdout" and "HASH" in output.get("text", "")
    ]
    assert len(set(hashes)) == 2
    for run_hash in hashes:
        assert read_run(repo, run_hash)["status"] == "finished"
        assert len(series(repo, "loss", {"subset": "train"}, run_hash)) == 10
