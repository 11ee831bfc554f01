"""Real two-process CPU jobs (gloo): each writes exactly one AIM run, from rank 0 (DESIGN, "Distributed").

Each job is a small script written to ``tmp_path`` and run in a fresh process tree, the way a user
runs one: Lightning's own DDP launcher (it re-runs the script once per extra device), and
``torch.distributed.run`` (what ``torchrun`` and ``accelerate launch`` start) for the Hugging Face
Trainer and an Accelerate loop. The runs are read back with aim's public API.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import open_repo

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
TIMEOUT = 150  # seconds per job; each takes about 15 s on two cores


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gloo_works() -> str | None:
    """Why a gloo process group cannot form on this machine, or ``None`` when it can."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        return "this torch build has no torch.distributed gloo backend"
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
    except OSError as exc:
        return f"cannot bind a loopback port for the rendezvous: {exc}"
    return None


def _run_job(tmp_path: Path, script: str, *, torchrun: bool) -> tuple[Path, list[list[str]]]:
    """Write ``script``, run it as a 2-process job, and return the repo and each rank's report."""
    reason = _gloo_works()
    if reason:
        pytest.skip(reason)
    repo = tmp_path / "aim"
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MASTER_", "LOCAL_RANK"))}
    env.update(
        TRACELET_SYSTEM_TRACKING_INTERVAL="off",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS), env.get("PYTHONPATH", "")]),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    command = [sys.executable]
    if torchrun:
        command += ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_addr", "127.0.0.1", "--master_port", env["MASTER_PORT"]]
    command += [str(path), str(repo)]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return repo, _reports(tmp_path)


def _reports(folder: Path) -> list[list[str]]:
    """What each rank's script wrote to ``report-<rank>.txt`` (world size, steps, run hash ...), by rank;
    files, because two ranks printing at once interleave their lines."""
    return [path.read_text().split() for path in sorted(folder.glob("report-*.txt"))]


def _one_run(repo: Path) -> Any:
    runs = list(open_repo(repo).iter_runs())
    assert len(runs) == 1, f"expected one AIM run for the job, found {[run.hash for run in runs]}"
    return runs[0]


def _series(run: Any, name: str, context: dict) -> dict[int, float]:
    for metric in run.metrics():
        if metric.name == name and metric.context.to_dict() == context:
            steps, (values, *_rest) = metric.data.items_list()
            return dict(zip(steps, values, strict=True))
    return {}


LIGHTNING_JOB = """
    import sys

    import lightning.pytorch as pl

    from lightning_helpers import classes, trainer_kwargs
    from tracelet_callbacks import TraceletAimLogger

    TinyModule, TinyData = classes(pl)
    logger = TraceletAimLogger(repo_path=sys.argv[1], experiment_name="ddp", run_name="lightning-ddp")
    trainer = pl.Trainer(logger=logger, **trainer_kwargs(devices=2, strategy="ddp", max_epochs=2))
    trainer.fit(TinyModule(), datamodule=TinyData())
    hash_ = logger.version if trainer.global_rank == 0 else None
    with open(f"report-{trainer.global_rank}.txt", "w") as report:
        print(trainer.world_size, trainer.global_step, hash_, file=report)
"""


def test_lightning_ddp_on_two_cpu_processes_writes_one_run(tmp_path: Path) -> None:
    repo, reports = _run_job(tmp_path, LIGHTNING_JOB, torchrun=False)
    run = _one_run(repo)
    # 32 samples, 8 a batch, split over 2 ranks: 2 optimizer steps per epoch
    assert reports == [["2", "4", run.hash], ["2", "4", "None"]]
    assert run["status"] == "finished" and run.name == "lightning-ddp"
    assert run["trainer"]["strategy"] == "DDPStrategy" and run["trainer"]["world_size"] == 2
    assert run["hparams"]["lr"] == 0.05
    steps = _series(run, "loss", {"subset": "train", "granularity": "step"})
    assert sorted(steps) == [0, 1, 2, 3]  # Lightning's global steps, each once
    assert sorted(_series(run, "loss", {"subset": "val"})) == [1, 3]


HF_JOB = """
    import os
    import sys

    from transformers import Trainer

    from hf_helpers import TokenDataset, tiny_args, tiny_bert
    from tracelet_callbacks import TraceletCallback

    callback = TraceletCallback(repo_path=sys.argv[1], experiment_name="hf-ddp", run_name="hf-ddp")
    args = tiny_args(os.path.join(os.getcwd(), "out"), ddp_backend="gloo", max_steps=3)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(), callbacks=[callback])
    trainer.train()
    hash_ = callback.run_hash if trainer.is_world_process_zero() else None
    with open(f"report-{args.process_index}.txt", "w") as report:
        print(args.world_size, trainer.state.global_step, hash_, file=report)
"""


def test_hf_trainer_under_torch_distributed_run_writes_one_run(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    repo, reports = _run_job(tmp_path, HF_JOB, torchrun=True)
    run = _one_run(repo)
    assert reports == [["2", "3", run.hash], ["2", "3", "None"]]
    assert run["status"] == "finished" and run.name == "hf-ddp"
    assert sorted(_series(run, "loss", {"subset": "train"})) == [1, 2, 3]


ACCELERATE_JOB = """
    import sys

    import torch
    from accelerate import Accelerator

    from tracelet_callbacks import TraceletAimTracker

    tracker = TraceletAimTracker("accelerate-ddp", repo_path=sys.argv[1], experiment_name="acc-ddp")
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("acc-ddp", config={"lr": 0.1, "batch_size": 4, "hub_token": "hf_x"})
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for step, (x, y) in enumerate(loader):
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.log({"train_loss": accelerator.gather(loss.detach()).mean().item()}, step=step)
    accelerator.log({"val_loss": 0.5}, step=step)
    accelerator.end_training()
    hash_ = tracker.tracker.hash if accelerator.is_main_process else None
    with open(f"report-{accelerator.process_index}.txt", "w") as report:
        print(accelerator.num_processes, step + 1, hash_, accelerator.distributed_type.value, file=report)
"""


def test_accelerate_under_torch_distributed_run_writes_one_run(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    repo, reports = _run_job(tmp_path, ACCELERATE_JOB, torchrun=True)
    run = _one_run(repo)
    # 32 samples, 4 a batch, sharded over 2 processes: 4 steps each
    assert reports == [["2", "4", run.hash, "MULTI_CPU"], ["2", "4", "None", "MULTI_CPU"]]
    assert run["status"] == "finished" and run.name == "accelerate-ddp"
    assert run["hparams"] == {"lr": 0.1, "batch_size": 4, "hub_token": "<redacted>"}
    assert sorted(_series(run, "loss", {"subset": "train"})) == [0, 1, 2, 3]
    assert _series(run, "loss", {"subset": "val"}) == {3: 0.5}
