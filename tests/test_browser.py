"""AIM's own web UI shows what the Lightning logger wrote: read in headless Chromium, not from the repo.

A tiny Lightning model trains with ``TraceletAimLogger`` in its own process (system metrics on), then
``aim up`` serves the repo on a free port and Playwright drives Debian's ``chromium``. The page must
list the run, draw ``loss`` in the ``train`` and ``val`` contexts with as many points as were logged
(counted in the chart's SVG line), show the hparams in the run's params without our bookkeeping, name
every series in the Metrics tab readably, and draw the trainer's CPU in the System tab with values
above zero (the data the page itself fetched for that chart).

Where ``chromium`` is missing and this process runs as root with ``apt-get``, the module installs it
first (Debian's package, from the package registry). It skips, saying why, only when that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import open_repo
from tracelet_callbacks.aim_ui import AimUI, run_url

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EPOCHS = 3
BATCHES = 8  # train batches per epoch: 24 train points, one val point per epoch

TRAIN = textwrap.dedent(
    f"""
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from tracelet_callbacks import TraceletAimLogger


    class Tiny(pl.LightningModule):
        def __init__(self, hidden=8, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            for _ in range(40):  # keep a core busy long enough for the sampler to see it
                torch.randn(192, 192) @ torch.randn(192, 192)
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


    x = torch.randn({BATCHES * 16}, 4)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True))
    logger = TraceletAimLogger(experiment_name="browser-check", run_name="tiny-lightning")
    trainer = pl.Trainer(
        max_epochs={EPOCHS}, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Tiny(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=64))
    print("RUN", logger.experiment.hash)
    """
)


def _chromium() -> str:
    """Debian's chromium, installed here first when it is missing and this process may install it."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium here, and installing it needs root and apt-get (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(command)}): {done.stderr[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium, but no chromium is on PATH")
    return found


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One repo holding the Lightning run (its hash) and examples/compare_runs.py's sweep (its output)."""
    folder = tmp_path_factory.mktemp("browser_repo")
    script = folder / "train.py"
    script.write_text(TRAIN)
    env = {**os.environ, "TRACELET_AIM_REPO": str(folder), "TRACELET_SYSTEM_TRACKING_INTERVAL": "0.25"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_hash,) = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("RUN ")]
    sweep = subprocess.run(
        [sys.executable, str(EXAMPLES / "compare_runs.py")],
        cwd=folder,
        env={**env, "TRACELET_SYSTEM_TRACKING_INTERVAL": "off"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    return folder, run_hash, sweep.stdout


@pytest.fixture(scope="module")
def ui(trained: tuple[Path, str, str]):
    with AimUI(trained[0]) as running:
        yield running


def _points(path_d: str) -> int:
    """Points in one SVG line path: a move, then a line-to per further point ("M x,yZ" for one point)."""
    assert path_d.startswith("M"), path_d[:80]
    return 1 + path_d.count("L")


def test_the_ui_shows_the_lightning_run(browser, trained: tuple[Path, str, str], ui: AimUI) -> None:
    folder, run_hash, _ = trained
    run = open_repo(folder).get_run(run_hash)
    logged = {
        metric.context.to_dict().get("subset"): len(metric.values.values_list())
        for metric in run.metrics()
        if metric.name == "loss"
    }
    assert logged["train"] == EPOCHS * BATCHES and logged["val"] == EPOCHS, logged

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)

    # the runs table lists the run, under its experiment
    page.goto(f"{ui.base_url}/runs")
    page.get_by_text("tiny-lightning", exact=True).first.wait_for()
    assert page.get_by_text("browser-check", exact=True).count() >= 1

    # the run's metrics: one loss chart per context, each with every logged point
    page.goto(run_url(run_hash, "metrics", ui.base_url))
    for subset, expected in (("train", EPOCHS * BATCHES), ("val", EPOCHS)):
        chart = (
            page.locator(".RunDetailMetricsTab__container__chartContainer")
            .filter(has=page.get_by_text("loss", exact=True))
            .filter(has=page.get_by_text(f'subset="{subset}"', exact=True))
        )
        chart.first.wait_for()
        assert chart.count() == 1, f"{chart.count()} loss charts for subset={subset}"
        chart.scroll_into_view_if_needed()  # charts are drawn once they are on screen
        line = chart.locator("path.Line").first
        line.wait_for()
        assert _points(line.get_attribute("d") or "") == expected, subset

    # no series of ours under a raw __system__ name among the run's metrics
    page.get_by_text("system/process_memory_mib", exact=True).first.wait_for()
    assert "__system__" not in page.inner_text("body")

    # the hparams, in the run's params (a JSON tree: "hparams": 2 items { "hidden": int 8 "lr": ... })
    page.goto(run_url(run_hash, "run_parameters", ui.base_url))
    page.get_by_text('"hparams":', exact=True).first.wait_for()
    text = page.inner_text("body")
    hparams = text[text.index('"hparams":') :]
    hparams = " ".join(hparams[: hparams.index("}")].split())
    assert '"hidden": int 8' in hparams and '"lr": float 0.05' in hparams, hparams
    # none of our bookkeeping among them (it is kept under __system_params, which the page leaves out)
    assert "heartbeat" not in text and "__tracelet" not in text and "resumed_from" not in text, text

    # the System tab: the trainer's CPU, drawn from data above zero
    def cpu_data(reply) -> bool:
        return "/metric/get-batch" in reply.url and "__system__cpu" in (reply.request.post_data or "")

    with page.expect_response(cpu_data) as fetched:
        page.goto(run_url(run_hash, "system", ui.base_url))
    series = [item for item in json.loads(fetched.value.body()) if item["name"] == "__system__cpu"]
    assert series and max(series[0]["values"]) > 0, series
    chart = page.locator(".RunDetailMetricsTab__container__chartContainer").filter(
        has=page.get_by_text("CPU (%)", exact=True)
    )
    chart.first.wait_for()
    chart.first.scroll_into_view_if_needed()
    line = chart.first.locator("path.Line").first
    line.wait_for()
    assert _points(line.get_attribute("d") or "") == len(series[0]["values"])
    page.close()


def test_the_compare_runs_link_opens_the_sweep_in_one_chart(
    browser, trained: tuple[Path, str, str], ui: AimUI
) -> None:
    printed = trained[2]
    (link,) = [line.strip() for line in printed.splitlines() if line.strip().startswith("http://")]
    assert link.startswith("http://127.0.0.1:43800/metrics?select=O-")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(link.replace("http://127.0.0.1:43800", ui.base_url))
    page.locator("path.Line").first.wait_for()
    page.wait_for_function("document.querySelectorAll('path.Line').length >= 3")
    lines = [line.get_attribute("d") or "" for line in page.locator("path.Line").all()]
    assert [_points(d) for d in lines] == [30, 30, 30]  # three runs, 30 steps each, nothing else
    assert "Tracelet Experiments" in page.inner_text("body")
    page.close()
