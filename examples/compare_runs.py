"""Compare runs: the seed's learning-rate sweep, the AimQL query that selects it, and the UI link.

One ``start_logging`` / ``stop_logging`` pair per learning rate makes three runs. Each carries its
learning rate twice: as the AIM tag ``learning_rate=0.01`` and as the run param
``run["tags"]["learning_rate"]``, and all three share a ``sweep`` id so a query finds this sweep only,
however many times the script has run in the same folder.

At the end the script asks AIM for the sweep's ``loss`` series with the same AimQL query the UI
takes, prints each run's final loss, and prints the link that opens the Metrics explorer on that
query, with the three curves in one chart. Start the UI first, in the folder that holds ``.aim``:

    python examples/compare_runs.py
    aim up          # then open the printed link

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os
import time

import aim
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet
from tracelet_callbacks.aim_ui import explorer_url

STEPS = 30


def train(lr: float, writer: SummaryWriter) -> float:
    """Fit a tiny regression model for a few steps and log its loss; returns the final loss."""
    torch.manual_seed(0)  # same data and initial weights for every learning rate
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        writer.add_scalar("train/loss", loss.item(), step)  # metric "loss", context subset=train
    return loss.item()


def main() -> None:
    sweep = time.strftime("%Y%m%d-%H%M%S")
    for lr in [0.001, 0.01, 0.1]:
        tracelet.start_logging(
            backend="aim",
            exp_name=f"lr_sweep_{lr}",
            config={"tags": {"learning_rate": lr, "sweep": sweep}},
        )
        writer = SummaryWriter(comment=f"_lr_{lr}")
        train(lr, writer)
        writer.close()
        tracelet.stop_logging()

    # The same AimQL query works here, and in the UI's search box.
    query = f'metric.name == "loss" and run["tags"]["sweep"] == "{sweep}"'
    repo_folder = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    found = aim.Repo(repo_folder).query_metrics(query, report_mode=0)  # report_mode=0: no progress bar
    for metric in found.iter():
        _steps, (values, *_) = metric.data.items_list()
        print(f"{metric.run.name}: lr={metric.run['tags']['learning_rate']}, final loss {values[-1]:.4f}")

    print(f"Query: {query}")
    print(f"To compare the three runs: cd {repo_folder} && aim up, then open")
    print(f"  {explorer_url(query)}")


if __name__ == "__main__":
    main()
