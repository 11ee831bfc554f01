"""Resume and rewind: a job killed at step 30 restarts from its step-20 checkpoint in the same run.

The first attempt runs in a child process. It saves a checkpoint at step 20, marks it with
``exp.mark_checkpoint`` (a small ``tracelet-run.json`` beside the weights: run hash, step, repo),
logs on to step 30 and is then killed with SIGKILL, as a preempted job would be.

The second attempt starts with ``start_logging(resume_from=<checkpoint>)``. It continues the same
run and first rewinds it: the points the dead attempt logged after step 20 are removed (one warning
says how many), so the curve goes on from the checkpoint with no doubled steps. ``resume="append"``
keeps them instead; ``resume="never"`` starts a new run.

    python examples/resume_rewind.py

The AIM repository lands in the current directory (``./.aim``) unless ``TRACELET_AIM_REPO``
points somewhere else.
"""

import os
import shutil
import signal
import subprocess
import sys

import aim
import torch
from torch import nn

import tracelet_callbacks as tracelet

CHECKPOINT = os.path.join("checkpoints", "step-20")


def train(exp, model: nn.Module, steps: range) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)
    for step in steps:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        exp.log_metric("loss", loss.item(), step)
        if step == 20 and not os.path.exists(CHECKPOINT):
            os.makedirs(CHECKPOINT)
            torch.save(model.state_dict(), os.path.join(CHECKPOINT, "model.pt"))
            exp.mark_checkpoint(CHECKPOINT)  # this run, at the last step logged (20)


def first_attempt() -> None:
    exp = tracelet.start_logging(experiment_name="resume", run_name="preempted-job")
    train(exp, nn.Linear(4, 1), range(31))
    exp.flush()  # what was logged up to step 30 is stored; then the job dies without closing
    os.kill(os.getpid(), signal.SIGKILL)


def second_attempt() -> str:
    model = nn.Linear(4, 1)
    model.load_state_dict(torch.load(os.path.join(CHECKPOINT, "model.pt")))
    exp = tracelet.start_logging(resume_from=CHECKPOINT)  # the same run, rewound to step 20
    train(exp, model, range(21, 41))
    run_hash = exp.hash
    tracelet.stop_logging()
    return run_hash


def main() -> None:
    if sys.argv[1:] == ["--first-attempt"]:
        first_attempt()
        return
    shutil.rmtree(CHECKPOINT, ignore_errors=True)  # a checkpoint left by an earlier run of this script
    killed = subprocess.run([sys.executable, __file__, "--first-attempt"])
    if killed.returncode != -signal.SIGKILL:
        raise SystemExit(f"the first attempt should have been killed, it exited with {killed.returncode}")
    print("first attempt: killed by SIGKILL after step 30")

    run_hash = second_attempt()
    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    run = aim.Run(run_hash, repo=repo, read_only=True)
    (loss,) = [metric for metric in run.metrics() if metric.name == "loss"]
    steps = list(loss.data.items_list()[0])
    print(f"run {run_hash}: loss at steps {steps[0]}..{steps[-1]}, {len(steps)} points, each step once")
    print(f"resumed: {run['resumed']}")
    print(f"To browse it: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
