"""Training on a GPU while logging the loss tensor every step: steps per second, side by side.

The loss of a CUDA training step is a tensor on the GPU. Reading it (``.item()``, which TensorBoard's
``add_scalar`` and any ``float(loss)`` do) makes the CPU wait for the GPU to finish the step, so the CPU
can no longer queue the next steps ahead: the loop runs at the speed of that round trip. Ours copies
the value to pinned host memory without waiting and reads it when the writer hands the batch on.

Compares, in one process, the same loop with: no logging; ``SummaryWriter.add_scalar(loss)``;
``aim.Run.track(loss.item())``; ``TraceletWriter(tensorboard=False).add_scalar(loss)``. Prints steps per
second and the ratio to no logging, then checks every value we logged is readable from AIM.

    python benchmarks/cuda_loop.py [--steps 3000] [--width 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable


def build(width: int, device: str):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    ).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = torch.randn(256, width, device=device)
    target = torch.randn(256, 1, device=device)
    return model, optimizer, data, target


def train(steps: int, width: int, log: Callable[[int, object], None], device: str) -> float:
    """Steps per second of a plain loop that hands each step's loss tensor to ``log``."""
    import torch

    model, optimizer, data, target = build(width, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(20):  # warm-up: kernels, allocator
        loss = torch.nn.functional.mse_loss(model(data), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    start = time.perf_counter()
    for step in range(steps):
        loss = torch.nn.functional.mse_loss(model(data), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log(step, loss.detach())
    sync()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cpu only to try the script out")
    parser.add_argument("--profile", action="store_true", help="then profile one more run of ours")
    args = parser.parse_args()

    import aim
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from tracelet_callbacks import TraceletWriter

    folder = tempfile.mkdtemp(prefix="tracelet-cuda-")
    os.chdir(folder)
    aim.Repo.from_path(folder, init=True)
    results: dict[str, list[float]] = {}
    hashes: list[str] = []

    def variant(label: str, make: Callable[[], tuple[Callable, Callable]]) -> None:
        log, finish = make()
        results.setdefault(label, []).append(train(args.steps, args.width, log, args.device))
        finish()

    def nothing():
        return (lambda step, loss: None), (lambda: None)

    def tensorboard():
        writer = SummaryWriter(os.path.join(folder, "tb"))
        return (lambda step, loss: writer.add_scalar("train/loss", loss, step)), writer.close

    def aim_track():
        run = aim.Run(repo=folder, system_tracking_interval=None, log_system_params=False)
        log = lambda step, loss: run.track(loss.item(), name="loss", step=step, context={"subset": "train"})  # noqa: E731
        return log, run.close

    def ours():
        writer = TraceletWriter(tensorboard=False, system_tracking_interval=None)
        hashes.append(writer.experiment.hash)

        def finish() -> None:
            start = time.perf_counter()
            writer.close()
            results.setdefault("  ours: close() until durable (s)", []).append(time.perf_counter() - start)

        return (lambda step, loss: writer.add_scalar("train/loss", loss, step)), finish

    for _ in range(args.repeats):
        for label, make in (
            ("no logging", nothing),
            ("SummaryWriter.add_scalar(loss)", tensorboard),
            ("aim Run.track(loss.item())", aim_track),
            ("TraceletWriter.add_scalar(loss)", ours),
        ):
            variant(label, make)

    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{device}, {args.steps} steps, width {args.width}, median of {args.repeats}")
    base = statistics.median(results["no logging"])
    print(f"{'what':40} {'steps/s':>10} {'x no logging (time)':>20}")
    for label, values in results.items():
        value = statistics.median(values)
        if label.startswith("  "):
            print(f"{label:40} {value:10.3f}")
        else:
            print(f"{label:40} {value:10.1f} {base / value:20.3f}")

    if args.profile:
        import cProfile
        import pstats

        log, finish = ours()
        profiler = cProfile.Profile()
        profiler.runcall(train, args.steps, args.width, log, args.device)
        finish()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)

    from aim.storage.context import Context

    repo = aim.Repo.from_path(folder)
    for run_hash in hashes:
        metric = repo.get_run(run_hash).get_metric("loss", Context({"subset": "train"}))
        steps, _ = metric.data.items_list()
        print(f"run {run_hash}: {len(steps)} of {args.steps} values readable")


if __name__ == "__main__":
    main()
