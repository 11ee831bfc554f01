"""A plain PyTorch loop under ``accelerate``, logged to AIM with ``TraceletAimTracker``.

``init_trackers(config=...)`` stores the hyperparameters under ``hparams``; ``accelerator.log`` sends
``train_loss`` / ``val_loss`` into one AIM metric ``loss`` with subsets ``train`` and ``val``;
``end_training()`` closes the run as ``finished``. Only the main process writes.

    python examples/accelerate_loop.py
"""

import os

import numpy as np
import torch
from accelerate import Accelerator

import tracelet_callbacks as tracelet


def main() -> None:
    tracker = tracelet.TraceletAimTracker("linear-regression", experiment_name="accelerate_example")
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    hparams = {"lr": 0.05, "epochs": 20, "batch_size": 16}
    accelerator.init_trackers("accelerate_example", config=hparams)

    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(256, 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:192], y[:192]), batch_size=16)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=hparams["lr"])
    model, optimizer, train = accelerator.prepare(model, optimizer, train)

    step = 0
    for epoch in range(hparams["epochs"]):
        for inputs, targets in train:
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            accelerator.log({"train_loss": loss.item()}, step=step, log_kwargs={"tracelet": {"epoch": epoch}})
            step += 1
        with torch.no_grad():
            val_loss = torch.nn.functional.mse_loss(model(x[192:]), y[192:]).item()
        accelerator.log({"val_loss": val_loss}, step=step, log_kwargs={"tracelet": {"epoch": epoch}})

    weights = model.weight.detach().numpy().reshape(1, 4)
    picture = (np.repeat(np.repeat(np.abs(weights) / np.abs(weights).max(), 16, 0), 16, 1) * 255).astype(
        np.uint8
    )
    tracker.log_images({"weights": (picture, "|w| per input")}, step=step)
    run_hash = tracker.tracker.hash
    accelerator.end_training()

    print(f"run {run_hash}: final val loss {val_loss:.4f}")
    print(f"Open the run with: aim up --repo {os.path.abspath('.')}  (then http://localhost:43800)")


if __name__ == "__main__":
    main()
