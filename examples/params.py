"""Record hyperparameters on the active run with ``Experiment.log_params``.

Flat keys and dotted keys (``"model.architecture"``) both work; the dotted style keeps related
settings next to each other when runs are compared in the AIM UI.

Run it from any folder:

    python examples/params.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os

import tracelet_callbacks as tracelet


def main() -> None:
    tracelet.start_logging(exp_name="param_logging", project="examples", backend="aim")

    exp = tracelet.get_active_experiment()
    exp.log_params(
        {
            "learning_rate": 0.001,
            "batch_size": 32,
            "optimizer": "adam",
            "model_architecture": "resnet50",
        }
    )
    # Structured names: one prefix per concern.
    exp.log_params(
        {
            "model.architecture": "resnet50",
            "model.layers": 50,
            "data.dataset": "cifar10",
            "training.stage": "development",
            "training.version": "v1.2",
            "optimizer.name": "adam",
            "optimizer.lr": 0.001,
        }
    )
    run_hash = exp.hash

    tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Logged params on run {run_hash}. To browse it: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
