"""The complete example from the AIM backend description: a small PyTorch training job logged to AIM.

A 784 -> 128 -> 10 MLP is trained for 10 epochs on 1000 random samples (batch size 32). The
ordinary TensorBoard ``SummaryWriter`` sends a per-batch loss, a per-epoch loss and one weight
histogram per parameter to AIM; the hyperparameters are recorded on the run at the end. The code
is the original example unchanged except for the import line (and the ``main()`` wrapper).

The tags ``batch/loss`` and ``epoch/loss`` name no train / val / test subset, so they keep their
names in AIM: find them with ``metric.name == "batch/loss"``.

Run it from any folder:

    python examples/complete_example.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else; ``aim up`` in that folder shows the run.
"""

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet


def main() -> None:
    # Start AIM tracking
    tracelet.start_logging(exp_name="aim_pytorch_example", project="tutorials", backend="aim")

    # Model setup
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()

    # Data
    X = torch.randn(1000, 784)
    y = torch.randint(0, 10, (1000,))
    dataset = TensorDataset(X, y)
    dataloader = DataLoader(dataset, batch_size=32)

    # Training with automatic AIM logging
    writer = SummaryWriter()

    for epoch in range(10):
        total_loss = 0
        for batch_idx, (data, target) in enumerate(dataloader):
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()

            # Metrics automatically sent to AIM
            writer.add_scalar("batch/loss", loss.item(), epoch * len(dataloader) + batch_idx)
            total_loss += loss.item()

        # Epoch metrics
        avg_loss = total_loss / len(dataloader)
        writer.add_scalar("epoch/loss", avg_loss, epoch)

        # Model weights histogram
        for name, param in model.named_parameters():
            writer.add_histogram(f"weights/{name}", param, epoch)

    # Log final parameters
    exp = tracelet.get_active_experiment()
    exp.log_params(
        {
            "model.type": "simple_mlp",
            "model.input_size": 784,
            "model.hidden_size": 128,
            "model.output_size": 10,
            "optimizer.type": "adam",
            "optimizer.learning_rate": 0.001,
            "training.batch_size": 32,
            "training.epochs": 10,
        }
    )

    # Cleanup
    writer.close()
    tracelet.stop_logging()

    print("✅ Training completed! View results with: aim up")


if __name__ == "__main__":
    main()
