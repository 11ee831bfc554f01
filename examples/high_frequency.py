"""Log a loss and the learning rate on every batch, not just every epoch.

The writer only appends each value to a queue; a background writer batches them into AIM, so
per-batch logging adds little to the training loop. 2000 samples in batches of 32 for 3 epochs
give 189 points per metric.

Run it from any folder:

    python examples/high_frequency.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet

EPOCHS = 3


def main() -> None:
    torch.manual_seed(0)
    tracelet.start_logging(exp_name="high_frequency", project="examples", backend="aim")

    dataset = TensorDataset(torch.randn(2000, 20), torch.randint(0, 2, (2000,)))
    dataloader = DataLoader(dataset, batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(dataloader))
    criterion = nn.CrossEntropyLoss()

    writer = SummaryWriter()
    for epoch in range(EPOCHS):
        for batch_idx, (data, target) in enumerate(dataloader):
            optimizer.zero_grad()
            batch_loss = criterion(model(data), target)
            batch_loss.backward()
            optimizer.step()
            current_lr = scheduler.get_last_lr()[0]
            scheduler.step()

            # A global step keeps the points of later epochs after those of earlier ones.
            step = epoch * len(dataloader) + batch_idx
            writer.add_scalar("batch/loss", batch_loss.item(), step)
            writer.add_scalar("batch/lr", current_lr, step)
    writer.close()

    tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Logged {EPOCHS * len(dataloader)} batches per metric.")
    print(f"To browse them: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
