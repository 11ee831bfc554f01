"""What ``watch()`` and the system monitor add to one training step, measured without Lightning's noise.

A plain PyTorch loop (forward, backward, ``optimizer.step``, ``zero_grad``) on CPU, run side by side:
no tracking at all; an open run with neither (the baseline: what our logger alone costs while
nothing is logged); ``watch(log="gradients", log_freq=100)``; ``watch(log="all", log_freq=100)``;
and the gradient watch plus system metrics sampled every second. Each configuration runs in turn,
repeated and interleaved; the table gives the median microseconds per step and the ratio to the
baseline.
The models: the Lightning benchmark's ``Linear(32, 1)`` and a 6-layer MLP (width 256).

    python benchmarks/watch_cost.py [--steps 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from typing import Any

BASELINE = "an open run, neither"


def _model(kind: str) -> Any:
    from torch import nn

    if kind == "Linear(32, 1)":
        return nn.Linear(32, 1)
    layers: list[nn.Module] = [nn.Linear(32, 256), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(256, 256), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(256, 1))


def _loop(kind: str, setup: str, steps: int, repo: str) -> float:
    """Seconds per step of ``steps`` steps under ``setup``."""
    import torch

    import tracelet_callbacks as tracelet

    torch.manual_seed(0)
    model = _model(kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 32), torch.randn(8, 1)
    exp = None
    if setup != "no tracking":
        interval = 1.0 if "system" in setup else None
        exp = tracelet.Experiment(repo_path=repo, system_tracking_interval=interval)
        exp.open()
        if "watch" in setup:
            exp.watch(model, log="all" if "all" in setup else "gradients", log_freq=100)
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    elapsed = time.perf_counter() - start
    if exp is not None:
        exp.close()
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    repo = tempfile.mkdtemp(prefix="tracelet-watch-bench-")
    setups = [
        "no tracking",
        BASELINE,
        'watch(log="gradients")',
        'watch(log="all")',
        'watch(log="gradients") + system metrics every 1 s',
    ]
    for kind in ("Linear(32, 1)", "MLP 6 x 256"):
        _loop(kind, setups[1], 200, repo)  # warm-up: imports, the first run, first calls
        times: dict[str, list[float]] = {setup: [] for setup in setups}
        for repeat in range(args.repeats):
            order = setups[repeat % len(setups) :] + setups[: repeat % len(setups)]
            for setup in order:
                times[setup].append(_loop(kind, setup, args.steps, repo))
        base = statistics.median(times[BASELINE])
        print(f"\n{kind}: {args.steps} steps, {args.repeats} repeats, log_freq=100\n")
        print("| setup | median µs / step | vs an open run alone |")
        print("|---|---:|---:|")
        for setup, samples in times.items():
            median = statistics.median(samples)
            print(f"| {setup} | {median * 1e6:.1f} | {median / base:.3f}x |")


if __name__ == "__main__":
    main()
