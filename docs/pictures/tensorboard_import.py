"""Draws docs/pictures/tensorboard-import.png: the same training seen before and after an import.

Left: what the TensorBoard event files hold (read with TensorBoard's own ``EventFileLoader``), by tag.
Right: what AIM holds after ``python -m tracelet_callbacks import-tensorboard`` (read with
``aim.Repo.query_metrics``), by metric name and context. Both panels are drawn from the files and the
repo this script writes, so the picture shows what the importer really does.

    python docs/pictures/tensorboard_import.py
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile


def _write_logs(logdir: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for name, speed in (("baseline", 0.03), ("wider", 0.05)):
        writer = SummaryWriter(os.path.join(logdir, name))
        for step in range(200):
            train = 2.0 * math.exp(-speed * step) + 0.1 + 0.02 * math.sin(step)
            writer.add_scalar("train/loss", train, step)
            if step % 10 == 0:
                writer.add_scalar("val/loss", train + 0.15, step)
        writer.close()


def _tensorboard_series(logdir: str) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for run in sorted(os.listdir(logdir)):
        folder = os.path.join(logdir, run)
        for name in sorted(os.listdir(folder)):
            for event in EventFileLoader(os.path.join(folder, name)).Load():
                for value in event.summary.value:
                    steps, values = found.setdefault((run, value.tag), ([], []))
                    number = (
                        value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
                    )
                    steps.append(event.step)
                    values.append(number)
    return found


def _aim_series(repo: str) -> dict[tuple[str, str], tuple[list[int], list[float]]]:
    import aim

    found = {}
    for metric in aim.Repo(repo).query_metrics('metric.name == "loss"').iter():
        steps, (values, *_rest) = metric.data.items_list()
        label = f'loss {{"subset": "{metric.context["subset"]}"}}'
        found[(metric.run.name, label)] = (list(steps), list(values))
    return found


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    work = tempfile.mkdtemp(prefix="tracelet-picture-")
    logdir, repo = os.path.join(work, "runs"), os.path.join(work, "aim")
    _write_logs(logdir)
    command = [sys.executable, "-m", "tracelet_callbacks", "import-tensorboard", logdir, "--repo", repo]
    subprocess.run(command, check=True)

    figure, (before, after) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"baseline": "tab:blue", "wider": "tab:orange"}
    for (run, tag), (steps, values) in sorted(_tensorboard_series(logdir).items()):
        before.plot(
            steps, values, color=styles[run], ls="-" if "train" in tag else "--", label=f"{run}: {tag}"
        )
    for (run, label), (steps, values) in sorted(_aim_series(repo).items()):
        after.plot(
            steps, values, color=styles[run], ls="-" if "train" in label else "--", label=f"{run}: {label}"
        )
    before.set_title("Before: TensorBoard event files (runs/<run>/events.out.tfevents.*)", fontsize=10)
    after.set_title("After import: one AIM run per folder, tagged source=tensorboard", fontsize=10)
    for axes in (before, after):
        axes.set_xlabel("step")
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    before.set_ylabel("loss")
    figure.suptitle(
        "python -m tracelet_callbacks import-tensorboard runs/ --repo aim/   "
        "(tags train/loss, val/loss -> metric loss with context subset)",
        fontsize=10,
    )
    figure.tight_layout()
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tensorboard-import.png")
    figure.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
