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


def _run_job(
    tmp_path: Path, script: str, *, torchrun: bool, system_interval: float | None = None
) -> tuple[Path, list[list[str]]]:
    """Write ``script``, run it as a 2-process job, and return the repo and each rank's report.

    System metrics are off unless ``system_interval`` (seconds) is given."""
    reason = _gloo_works()
    if reason:
        pytest.skip(reason)
    repo = tmp_path / "aim"
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MASTER_", "LOCAL_RANK"))}
    env.update(
        TRACELET_SYSTEM_TRACKING_INTERVAL="off" if system_interval is None else str(system_interval),
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
    reports = _reports(tmp_path)
    # On a busy machine a rank sometimes aborts in torch's C++ teardown after the script has ended
    # ("terminate called without an active exception", SIGABRT at exit). When every rank wrote its
    # report, the job's work is done and what it left is checked by the caller.
    torn_down = "terminate called without an active exception" in done.stderr and len(reports) == 2
    assert done.returncode == 0 or torn_down, f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return repo, reports


def _reports(folder: Path) -> list[list[str]]:
    """What each rank's script wrote to ``report-<rank>.txt`` (world size, steps, run hash ...), by rank;
    files, because two ranks printing at once interleave their lines."""
    return [path.read_text().split() for path in sorted(folder.glob("report-*.txt"))]


def _one_run(repo: Path) -> Any:
    runs = list(open_repo(repo).iter_runs())
    assert len(runs) == 1, f"expected one AIM run for the job, found {[run.hash for run in runs]}"
    return runs[0]


def _system_series(repo: Path, run: Any, name: str) -> dict[int, list[float]]:
    """``{rank: values}`` of one ``__system__`` metric, read back with ``Repo.query_metrics``."""
    found: dict[int, list[float]] = {}
    for metric in open_repo(repo).query_metrics(f"metric.name == {name!r}"):
        assert metric.run.hash == run.hash
        context = metric.context.to_dict()
        _steps, (values, *_rest) = metric.data.items_list()
        found.setdefault(context["rank"], []).extend(values)
    return found


def _assert_system_metrics_of_both_ranks(repo: Path, run: Any) -> None:
    """Rank 0's run holds each rank's CPU and step time under ``{"rank": r}``, and where each rank ran."""
    cpu = _system_series(repo, run, "__system__cpu")
    step_time = _system_series(repo, run, "system/step_time_s")
    assert sorted(cpu) == [0, 1] and all(cpu.values()), cpu
    assert sorted(step_time) == [0, 1], step_time
    assert all(value > 0 for values in step_time.values() for value in values), step_time
    # every system reading carries its rank, and both ranks report the same metrics
    names: dict[Any, set[str]] = {}
    for metric in run.metrics():
        if metric.name.startswith(("__system__", "system/")):
            names.setdefault(metric.context.to_dict().get("rank"), set()).add(metric.name)
    assert sorted(names, key=str) == [0, 1] and names[0] == names[1], names
    ranks = run["ranks"]
    assert sorted(ranks) == ["0", "1"], ranks
    assert all(where["host"] and where["pid"] > 0 for where in ranks.values()), ranks
    assert ranks["0"]["pid"] != ranks["1"]["pid"]


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
    from rank_exit import leave

    callback = TraceletCallback(repo_path=sys.argv[1], experiment_name="hf-ddp", run_name="hf-ddp")
    args = tiny_args(os.path.join(os.getcwd(), "out"), ddp_backend="gloo", max_steps=3)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=TokenDataset(), callbacks=[callback])
    trainer.train()
    hash_ = callback.run_hash if trainer.is_world_process_zero() else None
    with open(f"report-{args.process_index}.txt", "w") as report:
        print(args.world_size, trainer.state.global_step, hash_, file=report)
    leave()  # see tests/rank_exit.py: torch's gloo teardown can abort a rank
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
    from rank_exit import leave

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
    leave()  # see tests/rank_exit.py: torch's gloo teardown can abort a rank
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


# Each step does at least STEP_WORK seconds of arithmetic, so the 24 steps outlast several sampling
# intervals however fast the machine (a busy one only makes them longer); nothing sleeps.
LIGHTNING_SYSTEM_JOB = """
    import sys
    import time

    import lightning.pytorch as pl
    import torch

    from lightning_helpers import classes, trainer_kwargs
    from tracelet_callbacks import TraceletAimLogger

    STEP_WORK = 0.06
    TinyModule, TinyData = classes(pl)


    class BusyModule(TinyModule):
        def training_step(self, batch, batch_idx):
            until, work = time.perf_counter() + STEP_WORK, torch.ones(64, 64)
            while time.perf_counter() < until:
                work = torch.tanh(work @ work)
            return super().training_step(batch, batch_idx)


    logger = TraceletAimLogger(repo_path=sys.argv[1], experiment_name="ddp", run_name="ddp-system")
    kwargs = trainer_kwargs(devices=2, strategy="ddp", max_epochs=3, log_every_n_steps=1)
    trainer = pl.Trainer(logger=logger, **kwargs)
    trainer.fit(BusyModule(), datamodule=TinyData(batch_size=2))
    hash_ = logger.version if trainer.global_rank == 0 else None
    with open(f"report-{trainer.global_rank}.txt", "w") as report:
        print(trainer.world_size, trainer.global_step, hash_, file=report)
"""


def test_lightning_ddp_writes_system_metrics_of_both_ranks_into_one_run(tmp_path: Path) -> None:
    repo, reports = _run_job(tmp_path, LIGHTNING_SYSTEM_JOB, torchrun=False, system_interval=0.25)
    run = _one_run(repo)
    # 32 samples, 2 a batch, split over 2 ranks: 8 optimizer steps per epoch, 3 epochs
    assert reports == [["2", "24", run.hash], ["2", "24", "None"]]
    assert run["status"] == "finished" and run.name == "ddp-system"
    _assert_system_metrics_of_both_ranks(repo, run)
    # the training values themselves carry no rank: only rank 0 writes them
    assert sorted(_series(run, "loss", {"subset": "train", "granularity": "step"})) == list(range(24))


# Plain API on every rank. The ranks agree through all_reduce when each has seen enough samples after
# its first step, then log one more step, so each rank's last sample (rank 1's flush, rank 0's close)
# comes after a step change that an earlier sample missed: a step time on both ranks, with no timing.
TORCHRUN_SYSTEM_JOB = """
    import sys

    import torch
    import torch.distributed as dist

    import tracelet_callbacks as tracelet
    from rank_exit import leave
    from tracelet_callbacks.run.monitor import monitor

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tracelet.start_logging(exp_name="torchrun-system", project="torchrun", config={"repo_path": sys.argv[1]})
    system = monitor(tracelet.get_active_experiment().config)
    torch.manual_seed(rank)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step, first = 0, None
    while True:
        x = torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        loss.backward()
        for parameter in model.parameters():
            dist.all_reduce(parameter.grad)
        optimizer.step()
        optimizer.zero_grad()
        tracelet.get_active_experiment().log_metric("train/loss", loss.item(), iteration=step)
        if first is None:
            first = system.samples  # a sample in progress now may have read no step yet
        ready = torch.tensor([float(system.samples >= first + 3)])
        dist.all_reduce(ready, op=dist.ReduceOp.MIN)
        step += 1
        if ready.item():
            break
    tracelet.get_active_experiment().log_metric("train/loss", 0.0, iteration=step)
    if rank > 0:
        tracelet.get_active_experiment().flush()  # the stand-in hands this rank's last sample on
    dist.barrier()
    hash_ = tracelet.get_active_experiment().hash
    tracelet.stop_logging()
    dist.barrier()
    with open(f"report-{rank}.txt", "w") as report:
        print(dist.get_world_size(), step, hash_, system.dropped, file=report)
    dist.destroy_process_group()
    leave()  # see tests/rank_exit.py: torch's gloo teardown can abort a rank
"""


def test_plain_api_under_torch_distributed_run_writes_system_metrics_of_both_ranks(tmp_path: Path) -> None:
    repo, reports = _run_job(tmp_path, TORCHRUN_SYSTEM_JOB, torchrun=True, system_interval=0.25)
    run = _one_run(repo)
    (world, steps, hash_, dropped), (world_1, steps_1, hash_1, dropped_1) = reports
    assert (world, hash_, dropped) == ("2", run.hash, "0")
    assert (world_1, steps_1, hash_1, dropped_1) == ("2", steps, "None", "0")
    assert run["status"] == "finished" and run.name == "torchrun-system"
    _assert_system_metrics_of_both_ranks(repo, run)
    assert sorted(_series(run, "loss", {"subset": "train"})) == list(range(int(steps) + 1))


# Two runs in one job, with training between them and no run open. Each session ends the way
# TORCHRUN_SYSTEM_JOB does (rank 1 flushes, a barrier, rank 0 closes); then both ranks keep stepping,
# all-reduced, until rank 0 has seen GAP_INTERVALS sampling intervals pass (a busy machine only makes the
# gap longer). Each session's steps wait after start_logging for both ranks, so rank 1's step of the
# second session (which starts its sampling again) comes after rank 0 opened that run.
TORCHRUN_TWO_RUNS_JOB = """
    import sys
    import time

    import torch
    import torch.distributed as dist

    import tracelet_callbacks as tracelet
    from rank_exit import leave
    from tracelet_callbacks.run.monitor import monitor

    GAP_INTERVALS = 6
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)


    def train_step():
        x = torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        loss.backward()
        for parameter in model.parameters():
            dist.all_reduce(parameter.grad)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()


    def agree(flag):
        found = torch.tensor([float(flag)])
        dist.all_reduce(found, op=dist.ReduceOp.MIN)
        return bool(found.item())


    def session(name):
        tracelet.start_logging(exp_name=name, project="torchrun", config={"repo_path": sys.argv[1]})
        dist.barrier()
        system = monitor(tracelet.get_active_experiment().config)
        before = system.samples
        step, first = 0, None
        while True:
            tracelet.get_active_experiment().log_metric("train/loss", train_step(), iteration=step)
            if first is None:
                first = system.samples
            step += 1
            if agree(system.samples >= first + 3):
                break
        tracelet.get_active_experiment().log_metric("train/loss", 0.0, iteration=step)
        if rank > 0:
            tracelet.get_active_experiment().flush()  # this rank's last sample of the run
        dist.barrier()
        hash_ = tracelet.get_active_experiment().hash
        tracelet.stop_logging()
        ended = time.time()
        dist.barrier()
        return system, hash_, before, system.samples, ended


    system, hash_1, _, after_first, ended = session("first")
    gap_start = time.monotonic()
    while not agree(rank > 0 or time.monotonic() - gap_start >= GAP_INTERVALS * system.interval):
        train_step()
    started = time.time()
    system, hash_2, before_second, _, _ = session("second")
    with open(f"report-{rank}.txt", "w") as report:
        print(hash_1, hash_2, ended, started, after_first, before_second, system.dropped, file=report)
    dist.destroy_process_group()
    leave()  # see tests/rank_exit.py: torch's gloo teardown can abort a rank
"""


def _system_points(repo: Path, name: str) -> dict[tuple[str, int], list[float]]:
    """``{(run hash, rank): timestamps}`` of one ``__system__`` metric, read with ``Repo.query_metrics``."""
    found: dict[tuple[str, int], list[float]] = {}
    for metric in open_repo(repo).query_metrics(f"metric.name == {name!r}"):
        _steps, (_values, _epochs, timestamps) = metric.data.items_list()
        key = (metric.run.hash, metric.context.to_dict()["rank"])
        found.setdefault(key, []).extend(timestamps)
    return found


def test_rank_samples_taken_between_two_runs_land_in_neither(tmp_path: Path) -> None:
    """Rank 1 stops sampling when its run ends (its flush), so nothing it samples while no run is open
    reaches the job's next run: regression for rank-1 samples of the gap landing in the second run."""
    repo, reports = _run_job(tmp_path, TORCHRUN_TWO_RUNS_JOB, torchrun=True, system_interval=0.25)
    (hash_1, hash_2, ended, started, _, _, dropped), rank_1 = reports
    _, _, _, _, after_first, before_second, dropped_1 = rank_1
    runs = {run.hash: run for run in open_repo(repo).iter_runs()}
    assert sorted(runs) == sorted([hash_1, hash_2]) and hash_1 != hash_2, sorted(runs)
    assert [runs[hash_1].name, runs[hash_2].name] == ["first", "second"]
    assert (dropped, dropped_1) == ("0", "0")
    # rank 1 took no sample from the end of its first run to its first step of the second
    assert after_first == before_second, (after_first, before_second)
    cpu = _system_points(repo, "__system__cpu")
    assert sorted(cpu) == sorted((hash_, rank) for hash_ in (hash_1, hash_2) for rank in (0, 1)), cpu
    assert all(cpu.values()), cpu
    ended, started = float(ended), float(started)
    assert started - ended >= 6 * 0.25, (ended, started)  # the gap lasted several sampling intervals
    # each run holds only samples of its own time: none of rank 1's from the gap in either
    assert max(cpu[hash_1, 1]) <= ended < started <= min(cpu[hash_2, 0]), (ended, started, cpu)
    assert min(cpu[hash_2, 1]) >= started, (started, sorted(cpu[hash_2, 1])[:3])
