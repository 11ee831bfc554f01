"""Moving an existing TensorBoard script to AIM takes one added call.

Before, the script only had ``writer = SummaryWriter()``. After ``start_logging(backend="aim")``
the same, unchanged writer still writes its TensorBoard event files under ``./runs`` and also
sends every value to AIM, so both UIs show the run.

Run it from any folder:

    python examples/migration_from_tensorboard.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os

from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet


def main() -> None:
    # Before (TensorBoard only):
    #     writer = SummaryWriter("./runs")
    # After (TensorBoard and AIM): the one new line is start_logging.
    tracelet.start_logging(backend="aim")
    writer = SummaryWriter()  # unchanged TensorBoard code from here on

    for step in range(10):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    writer.close()

    tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"AIM: cd {repo} && aim up  (http://localhost:43800)")
    print(f"TensorBoard, as before: tensorboard --logdir {os.path.abspath('runs')}")


if __name__ == "__main__":
    main()
