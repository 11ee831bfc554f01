"""Wall time of one tiny CPU Lightning loop with each logger, side by side in one process.

The loop: ``nn.Linear(32, 1)`` on batches of 8, one epoch of ``--steps`` steps, ``self.log`` of 8
metrics in every ``training_step`` and ``log_every_n_steps=1``, so each logger receives
``8 * steps`` values. Configurations: no logger (``logger=False``), ``CSVLogger``,
``TensorBoardLogger``, aim's own ``aim.pytorch_lightning.AimLogger``, ``TraceletAimLogger``, and
``TraceletAimLogger(watch="gradients", watch_freq=100, system_tracking_interval=1)``. The
time is that of ``trainer.fit`` (for ours it includes ``finalize``, which makes every value durable
and indexes the run before ``fit`` returns). Repetitions are interleaved (each starting one logger
later, with an untimed garbage collection before every fit); the table shows the median
and the best, and the median's ratio to the loop without a logger. At the end every value our logger
was given is read back from AIM and counted.

    python benchmarks/lightning_loop.py [--steps 1000] [--repeats 5] [--ours-only]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

METRICS = 8
WATCHED = "TraceletAimLogger, watch + system metrics"
OURS_ONLY = ("no logger", "TraceletAimLogger", WATCHED)


def _module_class() -> type:
    import lightning.pytorch as pl
    import torch
    from torch import nn

    class Loop(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(32, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            for i in range(METRICS):
                self.log(f"train/m{i}", loss + i)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Loop


def _loader(steps: int) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * 8, 32, generator=generator)
    return DataLoader(TensorDataset(x, x[:, :1]), batch_size=8)


def _loggers(folder: str) -> dict[str, Callable[[int], Any]]:
    """name -> build(repeat) of a fresh logger (one run / version per repetition)."""
    import aim
    from aim.pytorch_lightning import AimLogger
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from tracelet_callbacks import TraceletAimLogger

    repos = {name: os.path.join(folder, name) for name in ("aim", "tracelet")}
    for path in repos.values():  # creating a repo is a one-off, not part of any loop
        aim.Repo.from_path(path, init=True)
    return {
        "no logger": lambda r: False,
        "CSVLogger": lambda r: CSVLogger(os.path.join(folder, "csv"), version=r),
        "TensorBoardLogger": lambda r: TensorBoardLogger(os.path.join(folder, "tb"), version=r),
        # aim's default log_system_params=True needs pkg_resources, gone in setuptools >= 81
        "aim AimLogger": lambda r: AimLogger(
            repo=repos["aim"],
            system_tracking_interval=None,
            log_system_params=False,
            capture_terminal_logs=False,
        ),
        "TraceletAimLogger": lambda r: _timed(TraceletAimLogger)(
            repo_path=repos["tracelet"], experiment_name="bench", system_tracking_interval=None
        ),
        # the same, watching gradients (every 100 steps) and sampling the system every second
        WATCHED: lambda r: TraceletAimLogger(
            repo_path=repos["tracelet"],
            experiment_name="bench",
            system_tracking_interval=1.0,
            watch="gradients",
            watch_freq=100,
        ),
    }


def _timed(cls: type) -> type:
    """``cls`` with the seconds spent opening the run (first ``log_hyperparams``) and in ``finalize``
    added up in ``self.open_close``, to tell the per-step cost apart from the one-off ones."""

    class Timed(cls):  # type: ignore[misc, valid-type]
        open_close = 0.0

        def _opened(self) -> Any:
            start = time.perf_counter()
            try:
                return super()._opened()
            finally:
                self.open_close += time.perf_counter() - start

        def finalize(self, status: str) -> None:
            start = time.perf_counter()
            try:
                super().finalize(status)
            finally:
                self.open_close += time.perf_counter() - start

    return Timed


def _fit(logger: Any, steps: int) -> float:
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model, loader = _module_class()(), _loader(steps)
    gc.collect()  # what earlier loggers left behind is not collected on this one's clock
    start = time.perf_counter()
    trainer.fit(model, loader)
    elapsed = time.perf_counter() - start
    assert trainer.global_step == steps
    return elapsed


def _count_values(repo: str, run_hash: str) -> int:
    import aim

    total = 0
    for metric in aim.Repo(repo).query_metrics(f"run.hash == {run_hash!r}").iter():
        if metric.name.startswith("m"):
            total += len(metric.data.items_list()[0])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--ours-only",
        action="store_true",
        help="only the loop without a logger and our two configurations (more repeats in the same time)",
    )
    args = parser.parse_args()

    logging.disable(logging.INFO)  # Lightning's per-fit banners
    warnings.filterwarnings("ignore")
    folder = tempfile.mkdtemp(prefix="tracelet-lightning-bench-")
    builders = _loggers(folder)
    if args.ours_only:
        builders = {name: build for name, build in builders.items() if name in OURS_ONLY}
    _fit(False, 20)  # warm up imports and first-call costs outside the measurement

    times: dict[str, list[float]] = {name: [] for name in builders}
    one_off: list[float] = []
    last_ours: Any = None
    names = list(builders)
    for repeat in range(args.repeats):
        shift = repeat % len(names)  # each logger takes each place in the order in turn
        for name in names[shift:] + names[:shift]:
            build = builders[name]
            logger = build(repeat)
            times[name].append(_fit(logger, args.steps))
            if name == "TraceletAimLogger":
                last_ours = logger
                one_off.append(logger.open_close)

    base = statistics.median(times["no logger"])
    values = args.steps * METRICS
    print(f"{args.steps} steps x {METRICS} metrics = {values} values per fit, {args.repeats} repeats\n")
    print("| logger | median fit (s) | best fit (s) | median vs no logger |")
    print("|---|---:|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.3f} | {min(samples):.3f} | {median / base:.2f}x |")

    steady = statistics.median(t - o for t, o in zip(times["TraceletAimLogger"], one_off, strict=True))
    print(
        f"\nTraceletAimLogger: median {statistics.median(one_off):.3f} s of each fit is opening the run "
        f"and finalize (flush, close, index); without it {steady:.3f} s = {steady / base:.2f}x"
    )
    first = times["TraceletAimLogger"][0]
    print(
        f"TraceletAimLogger: the first fit, whose writer process started and imported aim while it "
        f"ran, took {first:.3f} s ({first / times['no logger'][0]:.2f}x that round's no-logger fit); "
        f"later fits reuse that writer"
    )
    watched = statistics.median(times[WATCHED])
    ours = statistics.median(times["TraceletAimLogger"])
    print(
        f"TraceletAimLogger with watch(log='gradients', log_freq=100) and system metrics every 1 s: "
        f"median {watched:.3f} s = {watched / ours:.3f}x the same logger without them"
    )
    found = _count_values(os.path.join(folder, "tracelet"), last_ours.version)
    verdict = "all readable" if found == values else "MISSING VALUES"
    print(f"TraceletAimLogger: {found} of {values} values read back from AIM ({verdict})")


if __name__ == "__main__":
    main()
