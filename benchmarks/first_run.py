"""What a user's first run costs: one fresh process per measurement, the logger made right before the trainer.

Most training runs are the only run of their process (a script, a sweep trial, a notebook cell). This
benchmark measures exactly that, in a new Python process for every measurement, interleaved:

* **Lightning**: ``trainer.fit`` of a ``Linear(32, 32)`` on batches of 16 for ``--steps`` steps, 8
  metrics a step, ``log_every_n_steps=1`` (as ``../shared/bench/lightning_overhead.py``), with no logger,
  a logger that does nothing, ``CSVLogger``, ``TensorBoardLogger``, aim's ``AimLogger`` and ours;
* **Hugging Face**: ``trainer.train()`` of a tiny BERT built from a config, ``--hf-steps`` steps,
  ``logging_steps=1`` (as ``../shared/bench/hf_overhead.py``), with no callback, aim's ``AimCallback``
  and ours.

Each process is a whole training script: it imports the frameworks, builds the logger right before
the trainer and fits once. The process times its fit (**first fit**: the logger's writer, imports and
repo are new) and the driver times the **whole process** from start to exit, which is what a user
waits for. With ``--warm``, each variant also runs in processes that fit twice, a new logger and
trainer each time, and the **second fit** is timed (a sweep, a k-fold loop, a notebook's next cell).
Every fit writes to a new temporary folder.
Repeats are interleaved (each round runs every variant once, starting one variant later each round),
so no variant always follows the same neighbour; medians and their ratios to the variant without a
logger are printed.

    python benchmarks/first_run.py [--repeats 5] [--steps 1000] [--hf-steps 300] [--only lightning|hf]
        [--warm]

``TRACELET_BENCH_VERBOSE=1`` prints every measurement as it is taken (the spread behind a median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

LIGHTNING = ("none", "noop", "csv", "tensorboard", "aim", "ours")
HF = ("none", "aim", "ours")
METRICS = 8


# -- the child: one process, two trainings ------------------------------------------------------------


def _lightning_logger(kind: str, folder: str) -> Any:
    if kind == "none":
        return False
    if kind == "noop":  # Lightning's own cost of handing metrics to a logger
        from lightning.pytorch.loggers.logger import Logger

        class Noop(Logger):
            name, version = "noop", "0"

            def log_metrics(self, metrics: Any, step: Any = None) -> None:
                pass

            def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
                pass

        return Noop()
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(folder)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(folder)
    if kind == "aim":
        from aim.pytorch_lightning import AimLogger

        return AimLogger(
            repo=folder,
            experiment="bench",
            system_tracking_interval=None,
            log_system_params=False,
            capture_terminal_logs=False,
        )
    from tracelet_callbacks import TraceletAimLogger

    return TraceletAimLogger(repo_path=folder, experiment_name="bench")


def _lightning_fits(kind: str, steps: int, fits: int) -> list[float]:
    import lightning as L
    import torch

    torch.set_num_threads(1)

    class Module(L.LightningModule):
        def __init__(self, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(32, 32)

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            (x,) = batch
            loss = (self.net(x) - x).pow(2).mean()
            logged = {f"train/m{j}": loss.detach() * (j + 1) for j in range(METRICS - 1)}
            logged["train/loss"] = loss.detach()
            self.log_dict(logged, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(steps * 16, 32)), batch_size=16
    )
    times = []
    for _ in range(fits):
        folder = tempfile.mkdtemp(prefix="first-run-")
        os.chdir(folder)
        logger = _lightning_logger(kind, folder)  # right before the Trainer, as users write it
        trainer = L.Trainer(
            max_epochs=1,
            logger=logger,
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        model = Module()
        start = time.perf_counter()
        trainer.fit(model, data)
        times.append(time.perf_counter() - start)
    return times


def _hf_trains(kind: str, steps: int, fits: int) -> list[float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.set_num_threads(1)

    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return steps * 8

        def __getitem__(self, i: int) -> dict:
            generator = torch.Generator().manual_seed(i)
            return {
                "input_ids": torch.randint(0, 100, (16,), generator=generator),
                "labels": torch.tensor(i % 2),
            }

    config = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    times = []
    for _ in range(fits):
        folder = tempfile.mkdtemp(prefix="first-run-")
        os.chdir(folder)
        callbacks: list[Any] = []
        if kind == "aim":
            from aim.hugging_face import AimCallback

            callbacks = [
                AimCallback(
                    repo=folder,
                    experiment="bench",
                    system_tracking_interval=None,
                    log_system_params=False,
                    capture_terminal_logs=False,
                )
            ]
        elif kind == "ours":
            from tracelet_callbacks import TraceletCallback

            callbacks = [TraceletCallback(repo_path=folder, experiment_name="bench")]
        args = TrainingArguments(
            output_dir=folder,
            per_device_train_batch_size=8,
            max_steps=steps,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            learning_rate=1e-3,
        )
        trainer = Trainer(
            model=BertForSequenceClassification(config),
            args=args,
            train_dataset=Tokens(),
            callbacks=callbacks,
        )
        start = time.perf_counter()
        trainer.train()
        times.append(time.perf_counter() - start)
    return times


def child(framework: str, kind: str, steps: int, fits: int) -> None:
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    run = _lightning_fits if framework == "lightning" else _hf_trains
    print(json.dumps({"fits": run(kind, steps, fits)}))


# -- the driver -----------------------------------------------------------------------------------------


def _measure(framework: str, kind: str, steps: int, fits: int) -> dict[str, float]:
    command = [sys.executable, os.path.abspath(__file__), "--child", framework, kind]
    command += ["--steps", str(steps), "--fits", str(fits)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{framework} {kind} failed:\n{done.stderr[-3000:]}")
    times = json.loads(done.stdout.strip().splitlines()[-1])["fits"]
    return {"first": times[0], "process": wall} if fits == 1 else {"second": times[1]}


def _table(title: str, kinds: tuple[str, ...], samples: dict[str, list[dict]], warm: bool) -> None:
    columns = ("first", "process", "second") if warm else ("first", "process")
    medians = {
        kind: {c: statistics.median(s[c] for s in samples[kind] if c in s) for c in columns} for kind in kinds
    }
    base = medians["none"]
    print(f"\n{title} (medians of {len(samples[kinds[0]]) // (2 if warm else 1)} fresh processes each)")
    heads = {"first": "first fit (s)", "process": "whole process (s)", "second": "second fit (s)"}
    print("| variant | " + " | ".join(f"{heads[c]} | vs none" for c in columns) + " |")
    print("|---|" + "---:|---:|" * len(columns))
    for kind in kinds:
        m = medians[kind]
        cells = " | ".join(f"{m[c]:.3f} | {m[c] / base[c]:.3f}x" for c in columns)
        print(f"| {kind} | {cells} |")


def _compile_package() -> None:
    """Write our package's bytecode first, as pip does when it installs a wheel: a checkout run with
    ``PYTHONDONTWRITEBYTECODE`` would otherwise compile it again in every measured process."""
    import compileall

    import tracelet_callbacks

    compileall.compile_dir(os.path.dirname(tracelet_callbacks.__file__), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000, help="Lightning steps per fit")
    parser.add_argument("--hf-steps", type=int, default=300, help="Hugging Face steps per train()")
    parser.add_argument("--only", choices=("lightning", "hf"))
    parser.add_argument(
        "--warm", action="store_true", help="also time a second fit in processes that fit twice"
    )
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--fits", type=int, default=1, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(*options.child, options.steps, options.fits)
        return
    _compile_package()
    plan = []
    for fits in (1, 2) if options.warm else (1,):
        if options.only in (None, "lightning"):
            plan += [("lightning", kind, options.steps, fits) for kind in LIGHTNING]
        if options.only in (None, "hf"):
            plan += [("hf", kind, options.hf_steps, fits) for kind in HF]
    samples: dict[tuple[str, str], list[dict]] = {(f, k): [] for f, k, _, _ in plan}
    verbose = bool(os.environ.get("TRACELET_BENCH_VERBOSE"))
    for round_ in range(options.repeats):
        shift = round_ % len(plan)
        for framework, kind, steps, fits in plan[shift:] + plan[:shift]:
            sample = _measure(framework, kind, steps, fits)
            samples[framework, kind].append(sample)
            if verbose:
                figures = " ".join(f"{name}={seconds:.3f}" for name, seconds in sample.items())
                print(f"  round {round_ + 1} {framework} {kind}: {figures}", file=sys.stderr, flush=True)
        print(f"round {round_ + 1}/{options.repeats} done", file=sys.stderr, flush=True)
    if options.only in (None, "lightning"):
        title = f"Lightning fit, {options.steps} steps x {METRICS} metrics"
        _table(title, LIGHTNING, {k: samples["lightning", k] for k in LIGHTNING}, options.warm)
    if options.only in (None, "hf"):
        title = f"Hugging Face train(), tiny BERT, {options.hf_steps} steps, logging_steps=1"
        _table(title, HF, {k: samples["hf", k] for k in HF}, options.warm)


if __name__ == "__main__":
    main()
