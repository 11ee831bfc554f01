"""Caller-side cost of logging one scalar, side by side in one process.

Compares a bare list append (the floor), TensorBoard's ``SummaryWriter.add_scalar``, aim's
``Run.track`` and ``TraceletWriter.add_scalar`` with and without TensorBoard event files, and prints
microseconds per call and the ratio to ``SummaryWriter``.

Ours is the cost while the writer keeps up: each timed burst of ``--calls`` fits in what the writer
may hold in flight (32 batches of ``buffer_size``), and it flushes, untimed, between bursts. A loop
that logs faster than the writer ingests (``benchmarks/ingestion.py``) waits for it instead.

    python benchmarks/caller_cost.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable


def per_call_us(
    log: Callable[[int], None], calls: int, repeats: int = 3, between: Callable[[], None] | None = None
) -> float:
    """Median over ``repeats`` of the mean microseconds per call (``between`` runs untimed after each)."""
    samples = []
    for repeat in range(repeats):
        offset = repeat * calls
        start = time.perf_counter()
        for step in range(offset, offset + calls):
            log(step)
        samples.append((time.perf_counter() - start) / calls * 1e6)
        if between is not None:
            between()
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    calls = parser.parse_args().calls

    import aim
    from torch.utils.tensorboard import SummaryWriter

    from tracelet_callbacks import TraceletWriter

    folder = tempfile.mkdtemp(prefix="tracelet-bench-")
    os.chdir(folder)
    results: dict[str, float] = {}

    sink: list[tuple[int, float]] = []
    results["list.append (floor)"] = per_call_us(lambda step: sink.append((step, 0.5)), calls)

    tb = SummaryWriter(os.path.join(folder, "tb"))
    results["SummaryWriter.add_scalar"] = per_call_us(
        lambda step: tb.add_scalar("train/loss", 0.5, step), calls
    )
    tb.close()

    run = aim.Run(
        repo=folder, system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )
    results["aim Run.track"] = per_call_us(
        lambda step: run.track(0.5, name="loss", step=step, context={"subset": "train"}), calls
    )
    run.close()

    for tensorboard in (False, True):
        writer = TraceletWriter(
            os.path.join(folder, f"tw-{tensorboard}"), tensorboard=tensorboard, system_tracking_interval=None
        )
        writer.add_scalar("warm/up", 0.0, 0)  # opens the run outside the timed loop
        label = f"TraceletWriter.add_scalar (tensorboard={tensorboard})"
        results[label] = per_call_us(
            lambda step, w=writer: w.add_scalar("train/loss", 0.5, step), calls, between=writer.flush
        )
        start = time.perf_counter()
        writer.close()
        results[f"  close() after it (ms, tensorboard={tensorboard})"] = (time.perf_counter() - start) * 1e3

    reference = results["SummaryWriter.add_scalar"]
    print(f"{calls} calls x 3 repeats, median; folder {folder}")
    print(f"{'what':58} {'us/call':>10} {'x SummaryWriter':>16}")
    for label, value in results.items():
        if label.startswith("  "):
            print(f"{label:58} {value:10.1f} {'(ms)':>16}")
        else:
            print(f"{label:58} {value:10.2f} {value / reference:16.2f}")


if __name__ == "__main__":
    main()
