"""A small learning-rate sweep: one AIM run per learning rate, ready to compare in one chart.

Each ``start_logging`` / ``stop_logging`` pair makes a separate run. The learning rate is passed
as a tag, so each run carries both the AIM tag ``learning_rate=0.01`` and the run param
``tags.learning_rate``: in the AIM Metrics explorer, query ``metric.name == "loss"`` and colour by
that param to put the three loss curves side by side, or select runs with a query such as
``run["tags"]["learning_rate"] >= 0.01``.

Run it from any folder:

    python examples/lr_sweep.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet

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
        writer.add_scalar("train/loss", loss.item(), step)
    return loss.item()


def main() -> None:
    for lr in [0.001, 0.01, 0.1]:
        tracelet.start_logging(
            backend="aim",
            exp_name=f"lr_sweep_{lr}",
            config={"tags": {"learning_rate": lr}},
        )
        writer = SummaryWriter(comment=f"_lr_{lr}")
        final_loss = train(lr, writer)
        writer.close()
        tracelet.stop_logging()
        print(f"lr={lr}: final loss {final_loss:.4f}")

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Logged 3 runs. To compare them: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
