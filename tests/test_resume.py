"""Resume that continues the same run: a checkpoint carries its run, a new process continues it and
removes what the interrupted attempt logged after the checkpoint (unless ``resume="append"``).

The Hugging Face test kills a real ``Trainer`` with SIGKILL mid-run and resumes it in a new process,
as a preempted job would; every series is read back through aim's public API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import aim
import pytest
from aim.storage.context import Context
from PIL import Image

import tracelet_callbacks as tracelet

TESTS = Path(__file__).parent


def series(repo: Path, run_hash: str) -> dict[str, list[tuple[int, float]]]:
    run = aim.Run(run_hash, repo=str(repo), read_only=True)
    found = {}
    for metric in run.metrics():
        steps, (values, *_) = metric.data.items_list()
        key = metric.name + ("" if not metric.context.to_dict() else json.dumps(metric.context.to_dict()))
        found[key] = list(zip(steps, values, strict=True))
    return found


def _plain_attempt(repo: Path, checkpoint: Path, scale: float, steps: range, **settings) -> str:
    exp = tracelet.start_logging(repo_path=str(repo), experiment_name="plain", **settings)
    for step in steps:
        exp.log_metrics({"loss": step * scale}, step=step)
        if step % 5 == 0:
            exp.log_metrics({"val/acc": step * scale}, step=step)
        exp.log_metric("counter", step * scale)  # automatic steps
        if step in (10, 28) and "resume_from" not in settings:  # an object series (aim's first layout)
            exp.run.track(aim.Image(Image.new("RGB", (4, 4), (step, 0, 0))), name="pictures", step=step)
        if step == 20 and not checkpoint.exists():
            checkpoint.mkdir()
            exp.mark_checkpoint(checkpoint)  # the last step logged: 20
    if "resume_from" not in settings:
        exp.log_metrics({"only_first": 1.0}, step=25)
    run_hash = exp.hash
    tracelet.stop_logging("killed" if "resume_from" not in settings else "finished")
    return run_hash


def test_a_plain_script_resumed_from_a_marked_checkpoint_continues_and_rewinds(tmp_path: Path) -> None:
    repo, checkpoint = tmp_path / "repo", tmp_path / "ckpt-20"
    first = _plain_attempt(repo, checkpoint, 1.0, range(31))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _plain_attempt(repo, checkpoint, 10.0, range(21, 41), resume_from=str(checkpoint))
    assert second == first
    found = series(repo, first)
    assert found["loss"] == [(s, s * 1.0) for s in range(21)] + [(s, s * 10.0) for s in range(21, 41)]
    assert found["counter"] == [(s, s * 1.0) for s in range(21)] + [(s, s * 10.0) for s in range(21, 41)]
    assert found['acc{"subset": "val"}'] == [(s, s * 1.0) for s in range(0, 21, 5)] + [
        (s, s * 10.0) for s in range(25, 41, 5)
    ]
    assert "only_first" not in found  # logged only after the checkpoint, by the attempt that died
    pictures = aim.Run(first, repo=str(repo), read_only=True).get_image_sequence("pictures", Context({}))
    assert list(pictures.data.items_list()[0]) == [10]  # the one at 28 came after the checkpoint
    run = aim.Run(first, repo=str(repo), read_only=True)
    assert [entry["step"] for entry in run["resumed"]] == [20]
    assert run["status"] == "finished"
    said = [str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning)]
    # loss 21..30, counter 21..30, acc 25 and 30, only_first 25, the picture at 28: 24 points
    assert any("removed 24 points" in text and first in text for text in said), said


def test_resume_append_keeps_what_the_interrupted_attempt_logged(tmp_path: Path) -> None:
    repo, checkpoint = tmp_path / "repo", tmp_path / "ckpt-20"
    first = _plain_attempt(repo, checkpoint, 1.0, range(31))
    second = _plain_attempt(
        repo, checkpoint, 10.0, range(31, 33), resume_from=str(checkpoint), resume="append"
    )
    assert second == first
    found = series(repo, first)
    assert found["loss"] == [(s, s * 1.0) for s in range(31)] + [(31, 310.0), (32, 320.0)]
    assert found["only_first"] == [(25, 1.0)]
    assert [entry["step"] for entry in aim.Run(first, repo=str(repo), read_only=True)["resumed"]] == [20]


def test_resume_never_and_a_checkpoint_of_another_repo_start_new_runs(tmp_path: Path) -> None:
    repo, checkpoint = tmp_path / "repo", tmp_path / "ckpt-20"
    first = _plain_attempt(repo, checkpoint, 1.0, range(31))
    never = _plain_attempt(repo, checkpoint, 2.0, range(21, 23), resume_from=str(checkpoint), resume="never")
    elsewhere = _plain_attempt(
        tmp_path / "other", checkpoint, 2.0, range(21, 23), resume_from=str(checkpoint)
    )
    assert len({first, never, elsewhere}) == 3
    assert series(repo, first)["loss"][-1] == (30, 30.0)  # untouched


_HF_ATTEMPT = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from transformers import Trainer, TrainerCallback
from hf_helpers import TokenDataset, tiny_args, tiny_bert
from tracelet_callbacks import TraceletCallback

output, repo, report = sys.argv[1], sys.argv[2], sys.argv[3]
resume, seed = sys.argv[4] or None, int(sys.argv[5])
logged = {{}}

class Record(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            logged[state.global_step] = logs["loss"]
        with open(report, "w") as handle:
            json.dump(logged, handle)
        if state.global_step == 30 and resume is None:
            tracelet.flush()  # step 30 is durable: the resumed attempt must take it back
            os.kill(os.getpid(), signal.SIGKILL)  # preempted: no exit handler runs

tracelet = TraceletCallback(repo_path=repo, experiment_name="hf-resume", run_name="preempted")
args = tiny_args(output, max_steps=40, save_strategy="steps", save_steps=20, per_device_train_batch_size=4)
data = TokenDataset(64, seed=seed)  # other data after the resume: other losses, so the attempts differ
trainer = Trainer(model=tiny_bert(), args=args, train_dataset=data, callbacks=[tracelet, Record()])
trainer.train(resume_from_checkpoint=resume)
with open(report, "w") as handle:
    json.dump(logged, handle)
print("RUN", tracelet.run_hash)
"""


@pytest.mark.slow
def test_hf_trainer_killed_at_step_30_resumes_from_checkpoint_20_in_a_new_process(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    output, repo = tmp_path / "out", tmp_path / "repo"
    script = tmp_path / "attempt.py"
    script.write_text(textwrap.dedent(_HF_ATTEMPT.format(tests=str(TESTS))))

    def attempt(report: Path, resume: str, seed: int) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script), str(output), str(repo), str(report), resume, str(seed)]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    killed = attempt(tmp_path / "first.json", "", 0)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (output / "checkpoint-20" / "tracelet-run.json").exists()
    first_losses = {
        int(step): loss for step, loss in json.loads((tmp_path / "first.json").read_text()).items()
    }
    assert sorted(first_losses) == list(range(1, 31))

    resumed = attempt(tmp_path / "second.json", str(output / "checkpoint-20"), 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # loss, grad_norm and learning_rate at steps 21..30, logged by the attempt that was killed
    assert "removed 30 points" in resumed.stderr, resumed.stderr[-3000:]
    run_hash = resumed.stdout.split("RUN")[-1].strip()
    second = {int(step): loss for step, loss in json.loads((tmp_path / "second.json").read_text()).items()}
    assert sorted(second) == list(range(21, 41))
    assert any(abs(second[s] - first_losses[s]) > 1e-6 for s in range(22, 31))  # the attempts differ

    runs = list(aim.Repo.from_path(str(repo)).iter_runs())
    assert [run.hash for run in runs] == [run_hash]  # one run for the job, both attempts
    found = series(repo, run_hash)
    loss = found['loss{"subset": "train"}']
    assert [step for step, _ in loss] == list(range(1, 41))
    expected = {**{s: first_losses[s] for s in range(1, 21)}, **second}
    assert [value for _, value in loss] == pytest.approx([expected[s] for s in range(1, 41)], rel=1e-6)
    for key, points in found.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key} has a step twice"
    run = aim.Run(run_hash, repo=str(repo), read_only=True)
    assert [entry["step"] for entry in run["resumed"]] == [20]
    assert run["status"] == "finished"
    assert os.path.isdir(output / "checkpoint-40")


def _accelerate_attempt(repo: Path, state: Path, steps: range, scale: float, load: bool) -> str:
    import torch
    from accelerate import Accelerator

    from tracelet_callbacks import TraceletAimTracker

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = TraceletAimTracker("acc-resume", repo_path=str(repo))
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.init_trackers("resume", config={"lr": 0.1})
    if load:
        accelerator.load_state(str(state))
    for step in steps:
        accelerator.log({"train_loss": step * scale}, step=step)
        if step == 20 and not load:
            accelerator.save_state(str(state))
    run_hash = tracker.experiment.hash
    accelerator.end_training()
    return run_hash


def test_accelerate_load_state_continues_the_run_that_saved_it(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    repo, state = tmp_path / "repo", tmp_path / "state-20"
    first = _accelerate_attempt(repo, state, range(31), 1.0, load=False)
    assert (state / "tracelet-run.json").exists()
    second = _accelerate_attempt(repo, state, range(21, 41), 10.0, load=True)
    assert second == first
    assert [run.hash for run in aim.Repo.from_path(str(repo)).iter_runs()] == [first]
    found = series(repo, first)
    expected = [(s, s * 1.0) for s in range(21)] + [(s, s * 10.0) for s in range(21, 41)]
    assert found['loss{"subset": "train"}'] == expected
    run = aim.Run(first, repo=str(repo), read_only=True)
    assert [entry["step"] for entry in run["resumed"]] == [20]
    assert run["hparams"] == {"lr": 0.1}


def test_lightning_fit_from_a_checkpoint_continues_its_run_rewound_to_the_checkpoint_step(
    tmp_path: Path,
) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    sys.path.insert(0, str(TESTS))
    from lightning_helpers import classes, trainer_kwargs
    from tracelet_callbacks import TraceletAimLogger

    module_class, data_class = classes(pl)
    repo, folder = tmp_path / "repo", tmp_path / "ckpts"

    def attempt(max_steps: int, ckpt_path: str | None) -> str:
        logger = TraceletAimLogger(repo_path=str(repo), experiment_name="pl-resume")
        every = pl.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=8, save_top_k=-1)
        settings = trainer_kwargs(max_epochs=-1, max_steps=max_steps, enable_checkpointing=True)
        trainer = pl.Trainer(logger=logger, callbacks=[every], limit_val_batches=0, **settings)
        trainer.fit(module_class(), datamodule=data_class(), ckpt_path=ckpt_path)
        return logger.version

    first = attempt(12, None)  # "preempted" after step 12; its last checkpoint was taken at step 8
    (checkpoint,) = [path for path in folder.glob("*.ckpt") if "step=8" in path.name]
    second = attempt(16, str(checkpoint))
    assert second == first
    found = series(repo, first)
    # logged at every step with the value of the step: 0..15 once each, 9..11 of the second attempt
    assert found['step_seen{"subset": "train"}'] == [(step, float(step)) for step in range(16)]
    assert [entry["step"] for entry in aim.Run(first, repo=str(repo), read_only=True)["resumed"]] == [8]
