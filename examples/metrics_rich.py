"""Every kind of value a ``SummaryWriter`` can send to AIM: scalars, histograms, images, text.

* ``add_scalar`` becomes an AIM metric (``train/loss`` -> metric ``loss`` in context ``train``).
* ``add_histogram`` becomes an ``aim.Distribution``; it also accepts an iterable of tensors such
  as ``model.parameters()``.
* ``add_image`` becomes an ``aim.Image``, ``add_text`` an ``aim.Text``.

Run it from any folder:

    python examples/metrics_rich.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet


def main() -> None:
    torch.manual_seed(0)
    tracelet.start_logging(exp_name="rich_metrics", project="examples", backend="aim")

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x_train, y_train = torch.randn(256, 16), torch.randint(0, 2, (256,))
    x_val, y_val = torch.randn(64, 16), torch.randint(0, 2, (64,))

    writer = SummaryWriter()
    for epoch in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            acc = (model(x_val).argmax(dim=1) == y_val).float().mean().item()

        writer.add_scalar("train/loss", loss.item(), epoch)
        writer.add_scalar("val/accuracy", acc, epoch)
        writer.add_histogram("model/weights", model.parameters(), epoch)
        image_tensor = torch.rand(3, 32, 32)  # CHW, values in [0, 1]
        writer.add_image("predictions", image_tensor, epoch)
        writer.add_text("notes", f"Epoch {epoch}: training progressing well", epoch)
    writer.close()

    tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Logged run 'rich_metrics'. To browse it: cd {repo} && aim up  (http://localhost:43800)")
    print("Metrics, Distributions, Images and Texts each have their own explorer page.")


if __name__ == "__main__":
    main()
