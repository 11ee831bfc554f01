"""Caller-side cost of logging one scalar, side by side in one process.

Compares a bare list append (the floor), TensorBoard's ``SummaryWriter.add_scalar``, aim's
``Run.track`` and ``TraceletWriter.add_scalar`` with and without TensorBoard event files, and prints
microseconds per call and the ratio to ``SummaryWriter``.

Every contender is set up first; then each round times one burst of ``--calls`` per contender, in
turn (each round starting one contender later, with a short pause after every burst), so a slow patch
of the machine falls on all of them alike. The figure is the median over ``--rounds``, with the
fastest and slowest round beside it. ``TRACELET_BENCH_VERBOSE=1`` prints every round.

Ours is the cost while the writer keeps up: a burst fits in what the writer may hold in flight
(32 batches of ``buffer_size``), and each writer flushes, untimed, after its burst. A loop that logs
faster than the writer ingests (``benchmarks/ingestion.py``) waits for it instead.

    python benchmarks/caller_cost.py [--calls 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

#: A pause after each burst (and its untimed flush), so background work it left does not land on the next.
SETTLE_SECS = 0.25


def burst_us(log: Callable[[int], None], first: int, calls: int) -> float:
    """Mean microseconds per call over one burst of ``calls`` steps from ``first``."""
    start = time.perf_counter()
    for step in range(first, first + calls):
        log(step)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    import aim
    from torch.utils.tensorboard import SummaryWriter

    from tracelet_callbacks import TraceletWriter

    folder = tempfile.mkdtemp(prefix="tracelet-bench-")
    os.chdir(folder)

    floor: list[tuple[int, float]] = []
    tb = SummaryWriter(os.path.join(folder, "tb"))
    run = aim.Run(
        repo=folder, system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )
    ours = {
        flag: TraceletWriter(
            os.path.join(folder, f"tw-{flag}"), tensorboard=flag, system_tracking_interval=None
        )
        for flag in (False, True)
    }
    for writer in ours.values():
        writer.add_scalar("warm/up", 0.0, 0)  # opens the run outside the timed loop
        writer.flush()

    # label -> (one call, what runs untimed after a burst)
    contenders: dict[str, tuple[Callable[[int], None], Callable[[], None]]] = {
        "list.append (floor)": (lambda step: floor.append((step, 0.5)), floor.clear),
        "SummaryWriter.add_scalar": (lambda step: tb.add_scalar("train/loss", 0.5, step), tb.flush),
        "aim Run.track": (
            lambda step: run.track(0.5, name="loss", step=step, context={"subset": "train"}),
            lambda: None,
        ),
    }
    for flag, writer in ours.items():
        contenders[f"TraceletWriter.add_scalar (tensorboard={flag})"] = (
            lambda step, w=writer: w.add_scalar("train/loss", 0.5, step),
            writer.flush,
        )

    samples: dict[str, list[float]] = {label: [] for label in contenders}
    order = list(contenders)
    for round_ in range(args.rounds):
        # each round starts with the next contender, so none always follows the same neighbour (aim's
        # storage keeps compacting on its own threads for a while after a burst of Run.track)
        for label in order[round_ % len(order) :] + order[: round_ % len(order)]:
            log, after = contenders[label]
            samples[label].append(burst_us(log, round_ * args.calls, args.calls))
            after()
            time.sleep(SETTLE_SECS)

    closing: dict[str, float] = {}
    tb.close()
    run.close()
    for flag, writer in ours.items():
        start = time.perf_counter()
        writer.close()
        closing[f"close() after it (tensorboard={flag})"] = (time.perf_counter() - start) * 1e3

    if os.environ.get("TRACELET_BENCH_VERBOSE"):
        for label, values in samples.items():
            print(label, " ".join(f"{v:.2f}" for v in values))
    reference = statistics.median(samples["SummaryWriter.add_scalar"])
    print(f"{args.calls} calls a burst, {args.rounds} rounds interleaved; folder {folder}")
    print(f"{'what':48} {'median us':>10} {'fastest':>8} {'slowest':>8} {'x SummaryWriter':>16}")
    for label, values in samples.items():
        middle = statistics.median(values)
        print(f"{label:48} {middle:10.2f} {min(values):8.2f} {max(values):8.2f} {middle / reference:16.2f}")
    # the same comparison round by round: each burst against SummaryWriter's burst of that round
    paired = [
        ours / tb
        for ours, tb in zip(
            samples["TraceletWriter.add_scalar (tensorboard=True)"],
            samples["SummaryWriter.add_scalar"],
            strict=True,
        )
    ]
    print(
        f"TraceletWriter (tensorboard=True) / SummaryWriter, round by round: "
        f"median {statistics.median(paired):.3f} "
        f"(from {min(paired):.3f} to {max(paired):.3f})"
    )
    for label, ms in closing.items():
        print(f"  {label:46} {ms:10.1f} ms")


if __name__ == "__main__":
    main()
