"""Train and validation values of one quantity end up as one AIM metric with two contexts.

``train/loss`` and ``val/loss`` are both stored as the metric ``loss``, with the contexts
``{"subset": "train"}`` and ``{"subset": "val"}``. One chart can then show both curves, grouped or
coloured by ``metric.context.subset``. After training, the script reads the run back with aim's
own ``Repo`` API to show the two series.

Run it from any folder:

    python examples/context_metrics.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import math
import os

from aim import Repo
from aim.sdk.types import QueryReportMode
from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet


def main() -> None:
    tracelet.start_logging(exp_name="context_metrics", project="examples", backend="aim")
    run_hash = tracelet.get_active_experiment().hash

    writer = SummaryWriter()
    for step in range(50):
        loss = math.exp(-step / 20)
        val_loss = loss + 0.05
        writer.add_scalar("train/loss", loss, step)  # -> "loss", context subset=train
        writer.add_scalar("val/loss", val_loss, step)  # -> "loss", context subset=val
    writer.close()

    tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    query = f'metric.name == "loss" and run.hash == "{run_hash}"'
    for metric in Repo(repo).query_metrics(query, report_mode=QueryReportMode.DISABLED).iter():
        points = len(metric.values.values_list())
        print(f"metric {metric.name!r} context {metric.context.to_dict()}: {points} points")
    print(f"To browse it: cd {repo} && aim up  (http://localhost:43800)")
    print('In the Metrics explorer, query metric.name == "loss" and group by metric.context.subset.')


if __name__ == "__main__":
    main()
