"""Configure the AIM run through ``start_logging(config=...)``.

Shows the configuration keys from the backend description: a custom repository folder, the AIM
experiment name, the run name and tags (a dict: each entry becomes a queryable run param and a
``key=value`` AIM tag).

Run it from any folder:

    python examples/planned_configuration.py

The repository is created in ``./aim_repo`` below the current directory. An explicit
``repo_path`` in ``config`` takes precedence over the ``TRACELET_AIM_REPO`` environment variable.
"""

import math
import os

from torch.utils.tensorboard import SummaryWriter

import tracelet_callbacks as tracelet

REPO_PATH = "./aim_repo"


def main() -> None:
    tracelet.start_logging(
        backend="aim",
        config={
            "repo_path": REPO_PATH,
            "experiment_name": "My Experiments",
            "run_name": "baseline_run",
            "tags": {"model": "resnet", "dataset": "cifar10"},
            # To log to a shared AIM server instead of a local folder, add
            #     "remote_uri": "aim://aim-server:53800",
            # It is left out here because this example runs without a server.
        },
    )

    writer = SummaryWriter()
    for step in range(20):
        writer.add_scalar("train/loss", math.exp(-step / 5), step)
    writer.close()

    tracelet.stop_logging()

    repo = os.path.abspath(REPO_PATH)
    print(f"Logged run 'baseline_run'. To browse it: aim up --repo {repo}  (http://localhost:43800)")
    print('Find it by tag with the query: "dataset=cifar10" in run.tags')


if __name__ == "__main__":
    main()
