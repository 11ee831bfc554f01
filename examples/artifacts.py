"""Store files with a run: a model checkpoint and a small JSON file of dataset statistics.

``Experiment.log_artifact(path, artifact_path=...)`` copies the file into the run's artifact
store (by default a folder next to the AIM repository), under the given sub-folder, so the files
survive even when the originals are deleted. Here the originals live in a temporary folder that
is removed as soon as the script ends.

Run it from any folder:

    python examples/artifacts.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

import tracelet_callbacks as tracelet


def main() -> None:
    tracelet.start_logging(exp_name="artifact_logging", project="examples", backend="aim")
    exp = tracelet.get_active_experiment()

    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.pth"
        torch.save(nn.Linear(4, 2).state_dict(), model_path)

        data = torch.randn(100, 4)
        stats_path = Path(tmp) / "data_stats.json"
        stats = {"samples": len(data), "mean": data.mean().item(), "std": data.std().item()}
        stats_path.write_text(json.dumps(stats, indent=2))

        exp.log_artifact(str(model_path), artifact_path="models/")
        exp.log_artifact(str(stats_path), artifact_path="data/")
        run_hash = exp.hash
        # Close the run while the originals still exist, so the copies are certainly complete.
        tracelet.stop_logging()

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Stored models/model.pth and data/data_stats.json with run {run_hash}.")
    print(f"To browse it: cd {repo} && aim up  (http://localhost:43800); the run page lists its artifacts.")


if __name__ == "__main__":
    main()
