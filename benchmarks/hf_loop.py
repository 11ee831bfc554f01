"""Wall time of a tiny CPU Hugging Face ``Trainer`` loop that logs every step, side by side:
no callback, aim's own ``AimCallback``, and ``TraceletCallback``.

Each repeat builds a fresh ``Trainer`` per variant (not timed) and times ``trainer.train()``; for ours
that includes closing the run at ``on_train_end``, so the values are durable and queryable when the
clock stops. Variants run interleaved, each repeat starting one variant later, with a garbage
collection (untimed) before each; the table shows the median and best of the repeats and the
ratio of medians to the loop without a callback. Finally, every loss the loop logged is read back
from AIM for our runs.

    python benchmarks/hf_loop.py --steps 300 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from hf_helpers import TokenDataset, tiny_args, tiny_bert


def _aim_callback(repo: str) -> Any:
    from aim.hugging_face import AimCallback

    # log_system_params=True needs pkg_resources, gone in setuptools >= 81
    return AimCallback(
        repo=repo, system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )


def _tracelet_callback(repo: str) -> Any:
    from tracelet_callbacks import TraceletCallback

    return TraceletCallback(config={"system_tracking_interval": None}, repo_path=repo)


VARIANTS = {"no callback": None, "aim AimCallback": _aim_callback, "TraceletCallback": _tracelet_callback}


def run_once(make: Any, steps: int, workdir: str, repo: str | None = None) -> tuple[float, Any, Any]:
    from transformers import PrinterCallback, Trainer

    callbacks = [make(repo or os.path.join(workdir, "aim"))] if make else []
    trainer = Trainer(
        model=tiny_bert(),
        args=tiny_args(os.path.join(workdir, "out"), max_steps=steps, per_device_train_batch_size=4),
        train_dataset=TokenDataset(64),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # printing every log line would dominate the loop
    gc.collect()  # what earlier variants left behind is not collected on this one's clock
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    return elapsed, trainer, callbacks[0] if callbacks else None


def check_readback(repo: str, run_hash: str, trainer: Any) -> int:
    import aim

    expected = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    found: dict[int, float] = {}
    query = f"metric.name == 'loss' and run.hash == '{run_hash}'"
    for metric in aim.Repo(repo).query_metrics(query).iter():
        if metric.context.to_dict() == {"subset": "train"}:
            steps, columns = metric.data.items_list()
            found.update(zip(steps, columns[0], strict=True))
    missing = [step for step, value in expected.items() if abs(found.get(step, float("nan")) - value) > 1e-6]
    if missing:
        raise SystemExit(f"read-back failed: {len(missing)} of {len(expected)} losses missing or wrong")
    return len(expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per loop (one log each)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()

    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    checked = 0
    with tempfile.TemporaryDirectory() as root:
        run_once(None, 5, os.path.join(root, "warmup"))
        # one AIM repo per logger, made before timing: creating a repo (aim's database migrations)
        # takes seconds and happens once per project, not once per training run
        import aim

        repos = {name: os.path.join(root, f"aim-{name.replace(' ', '_')}") for name in VARIANTS}
        for repo in repos.values():
            aim.Repo.from_path(repo, init=True)
        names = list(VARIANTS)
        for repeat in range(options.repeats):
            shift = repeat % len(names)  # each variant takes each place in the order in turn
            for name in names[shift:] + names[:shift]:
                make = VARIANTS[name]
                workdir = os.path.join(root, f"{repeat}-{name.replace(' ', '_')}")
                elapsed, trainer, callback = run_once(make, options.steps, workdir, repos[name])
                times[name].append(elapsed)
                if name == "TraceletCallback":
                    checked = check_readback(repos[name], callback.run_hash, trainer)

    base = statistics.median(times["no callback"])
    print(
        f"\nHF Trainer, tiny BERT on CPU, {options.steps} steps, logging_steps=1, {options.repeats} repeats"
    )
    print(f"{'variant':<18} {'median s':>9} {'best s':>8} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:>9.3f} {min(values):>8.3f} {median / base:>6.3f}x")
    extra = statistics.median(times["TraceletCallback"]) - base
    print(
        f"TraceletCallback over no callback: {extra:.3f} s in all, "
        f"{1e3 * extra / options.steps:.2f} ms per step"
    )
    first = times["TraceletCallback"][0]
    print(
        f"TraceletCallback's first repeat, whose writer process started and imported aim while it "
        f"trained: {first:.3f} s ({first / times['no callback'][0]:.3f}x that round's no callback); "
        f"later repeats reuse that writer"
    )
    print(f"read back from AIM (ours): all {checked} logged train losses of the last repeat")


if __name__ == "__main__":
    main()
