"""Smallest possible AIM logging: two scalars from an ordinary TensorBoard ``SummaryWriter``.

``start_logging(backend="aim")`` makes every ``SummaryWriter`` created while logging is active
forward its ``add_*`` calls to an AIM run (the writer still writes its usual event files under
``./runs``). ``stop_logging()`` closes the run.

Run it from any folder:

    python examples/quickstart.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os

from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet


def main() -> None:
    tracelet.start_logging(exp_name="aim_experiment", project="my_project", backend="aim")

    writer = SummaryWriter()
    writer.add_scalar("loss", 0.5, 1)
    writer.add_scalar("accuracy", 0.9, 1)
    writer.close()

    tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Logged run 'aim_experiment'. To browse it: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
