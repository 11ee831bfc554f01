"""One AIM run per job, whatever launches it, in a local repo and on a live ``aim server``.

Each job is a small script written to ``tmp_path`` and started the way a user starts it: ``torchrun``
(``python -m torch.distributed.run``) with ``start_logging`` and an unchanged ``SummaryWriter`` on
every rank; ``accelerate launch`` with a ``TraceletAimTracker``; Lightning's ``ddp_spawn``; and a
Lightning fit whose DataLoader forks its workers while the run is open on the server. Every rank
reports what it logged to ``report-<rank>.json``; the runs are then read back with aim's public API
in a fresh process (``aim.Repo(path or "aim://...")``), as a teammate would, and the job must have
left exactly one new run holding rank 0's values and the job's params.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_distributed import _gloo_works
from test_remote import free_port, running_server

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent
TIMEOUT = 180  # seconds per job; each takes about 20 s on two cores
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``aim server`` for the module's jobs; each job counts the runs it added."""
    with running_server(tmp_path_factory.mktemp("launchers")) as (uri, _folder):
        yield uri


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the job logs: a fresh local repo folder, or the module's ``aim://`` server.

    torchrun and ``accelerate launch`` run against the server only, to keep the suite short
    (tests/test_distributed.py runs a plain torchrun script and Accelerate under
    ``torch.distributed.run`` locally); ``ddp_spawn`` runs against both, since its run is made under a
    hash chosen before the spawn, which a server's run reaches by another path (the spool)."""
    if request.param == "local":
        return str(tmp_path / "aim")
    return request.getfixturevalue("server")


# -- running a job and reading it back ---------------------------------------------------------------


def _launch(tmp_path: Path, script: str, launcher: list[str], *args: str, **env_extra: str) -> list[dict]:
    """Write ``script``, start it under ``launcher`` in its own session, wait for it to exit, and return
    each rank's report (``report-<rank>.json``) by rank."""
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(script))
    launched = ("TRACELET_", "MASTER_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launched)}
    env.update(
        TRACELET_SYSTEM_TRACKING_INTERVAL="off",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])),
        HF_HOME=str(tmp_path / "hf"),  # no accelerate config of this machine's user
        HF_HUB_OFFLINE="1",
    )
    env.update(env_extra)
    job = subprocess.Popen(
        [*launcher, str(path), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = job.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # the launcher and the ranks it started
        out, err = job.communicate()
        pytest.fail(f"the job did not end within {TIMEOUT} s\n{out[-2000:]}\n{err[-4000:]}")
    assert job.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    reports = sorted(tmp_path.glob("report-*.json"))
    return [json.loads(report.read_text()) for report in reports]


def _torchrun(port: int) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return [*command, "--master_addr", "127.0.0.1", "--master_port", str(port)]


READ_RUNS = """
import json
import sys

import aim

found = {}
for run in aim.Repo(sys.argv[1]).iter_runs():
    series = []
    for metric in run.metrics():
        steps, (values, *_rest) = metric.data.items_list()
        series.append([metric.name, metric.context.to_dict(), list(steps), list(values)])
    found[run.hash] = {
        "name": run.name,
        "experiment": run.experiment,
        "active": run.active,
        "status": run.get("status"),
        "hparams": run.get("hparams"),
        "trainer": run.get("trainer"),
        "series": series,
    }
print(json.dumps(found, default=str))
"""


def _runs(target: str) -> dict[str, dict]:
    """``{hash: run}`` of every run in ``target`` (a repo folder or ``aim://``), read in a fresh process."""
    if not target.startswith("aim://") and not Path(target, ".aim").exists():
        return {}
    done = subprocess.run(
        [sys.executable, "-c", READ_RUNS, target], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _new_runs(target: str, before: dict[str, dict]) -> dict[str, dict]:
    """The runs the job added to ``target``."""
    return {h: run for h, run in _runs(target).items() if h not in before}


def _summary(runs: dict[str, dict]) -> dict[str, tuple]:
    return {h: (run["name"], run["experiment"], run["status"], len(run["series"])) for h, run in runs.items()}


def _the_one_run(new: dict[str, dict], rank_0_hash: str) -> dict:
    """Rank 0's run, the job's only one: any other (a second rank's, a launcher's) fails."""
    assert list(new) == [rank_0_hash], f"expected rank 0's run {rank_0_hash} alone, found {_summary(new)}"
    run = new[rank_0_hash]
    assert run["status"] == "finished" and run["active"] is False, run["status"]
    return run


def _series(run: dict, name: str, context: dict) -> dict[int, float]:
    for found, found_context, steps, values in run["series"]:
        if found == name and found_context == context:
            return dict(zip(steps, values, strict=True))
    return {}


def _steps(report: dict) -> dict[int, float]:
    """The ``{step: loss}`` a rank reported (JSON keys are strings)."""
    return {int(step): value for step, value in report["losses"].items()}


def _before(target: str) -> dict[str, dict]:
    """The runs in ``target`` before a distributed job (which is skipped where gloo cannot run)."""
    reason = _gloo_works()
    if reason:
        pytest.skip(reason)
    return _runs(target)


def _assert_no_local_repo(target: str, tmp_path: Path) -> None:
    """A job logging to the server leaves no AIM repo in its working folder."""
    if target.startswith("aim://"):
        assert not (tmp_path / ".aim").exists(), "a job logging to a server must not create a local repo"


# -- torchrun: start_logging and an unchanged SummaryWriter on every rank ----------------------------

# Each rank trains on its own data (seeded by rank), so its losses differ from the other's; gradients
# are all-reduced as DDP would. Both ranks call the same logging code.
TORCHRUN_JOB = """
    import json
    import sys

    import torch
    import torch.distributed as dist
    from torch.utils.tensorboard import SummaryWriter

    import tracelet_callbacks as tracelet
    from rank_exit import leave

    target, experiment = sys.argv[1:3]
    where = {"remote_uri": target} if target.startswith("aim://") else {"repo_path": target}
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tracelet.start_logging(exp_name="torchrun-tb", project=experiment, backend="aim", config=where)
    writer = SummaryWriter(f"tb/rank{rank}")
    torch.manual_seed(rank)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = {}
    for step in range(6):
        x = torch.randn(8, 4)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        loss.backward()
        for parameter in model.parameters():
            dist.all_reduce(parameter.grad)
        optimizer.step()
        optimizer.zero_grad()
        losses[step] = loss.item()
        writer.add_scalar("train/loss", losses[step], step)
        writer.add_scalar("train/rank", float(rank), step)
    writer.add_hparams({"lr": 0.1, "batch_size": 8}, {"val/loss": losses[5] / 2}, global_step=5)
    writer.close()
    hash_ = tracelet.get_active_experiment().hash
    tracelet.stop_logging()
    dist.barrier()
    with open(f"report-{rank}.json", "w") as report:
        json.dump({"world": dist.get_world_size(), "hash": hash_, "losses": losses}, report)
    dist.destroy_process_group()
    leave()  # see tests/rank_exit.py: torch's gloo teardown can abort a rank
"""


@pytest.mark.parametrize("target", ["server"], indirect=True)
def test_torchrun_with_summary_writer_on_every_rank_writes_one_run(target: str, tmp_path: Path) -> None:
    before = _before(target)
    experiment = f"torchrun-{tmp_path.name}"
    rank_0, rank_1 = _launch(tmp_path, TORCHRUN_JOB, _torchrun(free_port()), target, experiment)
    assert (rank_0["world"], rank_1["world"], rank_1["hash"]) == (2, 2, None)
    run = _the_one_run(_new_runs(target, before), rank_0["hash"])
    assert (run["name"], run["experiment"]) == ("torchrun-tb", experiment)
    assert run["hparams"] == {"lr": 0.1, "batch_size": 8}
    assert _steps(rank_0) != _steps(rank_1)  # so the values below say whose they are
    assert _series(run, "loss", {"subset": "train"}) == _steps(rank_0)
    assert _series(run, "rank", {"subset": "train"}) == dict.fromkeys(range(6), 0.0)
    assert _series(run, "loss", {"subset": "val"}) == {5: rank_0["losses"]["5"] / 2}
    _assert_no_local_repo(target, tmp_path)


# -- accelerate launch: Accelerator(log_with=TraceletAimTracker(...)) --------------------------------

ACCELERATE_JOB = """
    import json
    import sys

    import torch
    from accelerate import Accelerator

    from tracelet_callbacks import TraceletAimTracker
    from rank_exit import leave

    target, experiment = sys.argv[1:3]
    where = {"remote_uri": target} if target.startswith("aim://") else {"repo_path": target}
    tracker = TraceletAimTracker("accelerate-launch", experiment_name=experiment, **where)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(experiment, config={"lr": 0.1, "batch_size": 4, "optimizer": {"name": "sgd"}})
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = {}
    for step, (x, y) in enumerate(loader):  # each process its own shard: its own losses
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses[step] = loss.item()
        accelerator.log({"train_loss": losses[step], "process": float(accelerator.process_index)}, step=step)
    accelerator.end_training()
    hash_ = tracker.tracker.hash if accelerator.is_main_process else None
    with open(f"report-{accelerator.process_index}.json", "w") as report:
        world, kind = accelerator.num_processes, accelerator.distributed_type.value
        json.dump({"world": world, "kind": kind, "hash": hash_, "losses": losses}, report)
    leave()  # see tests/rank_exit.py: torch's gloo teardown can abort a rank
"""


@pytest.mark.parametrize("target", ["server"], indirect=True)
def test_accelerate_launch_writes_one_run(target: str, tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` with ``Accelerator(cpu=True)``: two gloo
    processes (``--cpu --num_processes 2`` starts one process where no ``mpirun`` is installed)."""
    pytest.importorskip("accelerate")
    before = _before(target)
    experiment = f"accelerate-{tmp_path.name}"
    launcher = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher += ["--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]
    rank_0, rank_1 = _launch(tmp_path, ACCELERATE_JOB, launcher, target, experiment)
    assert [(r["world"], r["kind"]) for r in (rank_0, rank_1)] == [(2, "MULTI_CPU")] * 2
    assert rank_1["hash"] is None
    run = _the_one_run(_new_runs(target, before), rank_0["hash"])
    assert (run["name"], run["experiment"]) == ("accelerate-launch", experiment)
    assert run["hparams"] == {"lr": 0.1, "batch_size": 4, "optimizer": {"name": "sgd"}}
    # 32 samples, 4 a batch, sharded over 2 processes: 4 steps each
    assert list(_steps(rank_0)) == [0, 1, 2, 3] and _steps(rank_0) != _steps(rank_1)
    assert _series(run, "loss", {"subset": "train"}) == _steps(rank_0)
    assert _series(run, "process", {}) == dict.fromkeys(range(4), 0.0)
    _assert_no_local_repo(target, tmp_path)


# -- Lightning ddp_spawn -----------------------------------------------------------------------------

# The classes are made at the top level (spawned processes re-import this script to unpickle them).
# Each rank keeps the losses it logged; a callback writes them out when fit ends on that rank. The
# launching process then reads ``logger.version``, as a script that prints where its run went does.
DDP_SPAWN_JOB = """
    import json
    import sys

    import lightning.pytorch as pl

    from lightning_helpers import classes, trainer_kwargs
    from tracelet_callbacks import TraceletAimLogger

    TinyModule, TinyData = classes(pl)


    class Module(TinyModule):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.losses = {}

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.losses[self.global_step] = loss.item()
            self.log("train/rank", float(self.global_rank))
            return loss


    class Data(TinyData):
        pass


    class Report(pl.Callback):
        def on_fit_end(self, trainer, module):
            hash_ = trainer.logger.version if trainer.global_rank == 0 else None
            with open(f"report-{trainer.global_rank}.json", "w") as report:
                world, steps = trainer.world_size, trainer.global_step
                json.dump({"world": world, "steps": steps, "hash": hash_, "losses": module.losses}, report)


    if __name__ == "__main__":
        target, experiment = sys.argv[1:3]
        where = {"remote_uri": target} if target.startswith("aim://") else {"repo_path": target}
        logger = TraceletAimLogger(experiment_name=experiment, run_name="ddp-spawn", **where)
        kwargs = trainer_kwargs(strategy="ddp_spawn", devices=2, max_epochs=2)
        trainer = pl.Trainer(logger=logger, callbacks=[Report()], **kwargs)
        trainer.fit(Module(lr=0.02), datamodule=Data())
        with open("report-main.json", "w") as report:
            json.dump({"version": trainer.logger.version}, report)
"""


@pytest.mark.parametrize("target", ["local", "server"], indirect=True)
def test_lightning_ddp_spawn_writes_one_run(target: str, tmp_path: Path) -> None:
    before = _before(target)
    experiment = f"ddp-spawn-{tmp_path.name}"
    rank_0, rank_1, launching = _launch(tmp_path, DDP_SPAWN_JOB, [sys.executable], target, experiment)
    # 32 samples, 8 a batch, split over 2 ranks: 2 optimizer steps per epoch, 2 epochs
    assert [(r["world"], r["steps"]) for r in (rank_0, rank_1)] == [(2, 4)] * 2
    assert rank_1["hash"] is None and rank_0["hash"]
    new = _new_runs(target, before)
    assert rank_0["hash"] in new, _summary(new)
    run = new[rank_0["hash"]]  # what the ranks wrote, checked before what the launching process adds
    assert (run["name"], run["experiment"]) == ("ddp-spawn", experiment)
    assert run["hparams"]["lr"] == 0.02 and run["hparams"]["batch_size"] == 8
    assert run["trainer"]["strategy"] == "DDPStrategy" and run["trainer"]["world_size"] == 2
    assert sorted(_steps(rank_0)) == [0, 1, 2, 3] and _steps(rank_0) != _steps(rank_1)
    assert _series(run, "loss", {"subset": "train", "granularity": "step"}) == _steps(rank_0)
    assert _series(run, "rank", {"subset": "train"}) == dict.fromkeys(range(4), 0.0)
    # the launching process's logger names the run its ranks wrote (``version`` is the run hash), and
    # asking for it after fit opens no run of its own
    assert launching["version"] == rank_0["hash"], (
        f"after fit, the launching process's logger.version is {launching['version']}, not the job's run "
        f"{rank_0['hash']}; runs the job left: {_summary(new)}"
    )
    _the_one_run(new, rank_0["hash"])
    _assert_no_local_repo(target, tmp_path)


# -- forked DataLoader workers while the run is open on the server -----------------------------------

# Every epoch's train and val loaders fork two workers (after the run opened, with the writer, the
# system-metrics sampler and the server connection live); each worker leaves a file named by its pid.
FORKED_WORKERS_JOB = """
    import json
    import os
    import sys

    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from lightning_helpers import classes, trainer_kwargs
    from tracelet_callbacks import TraceletAimLogger

    TinyModule, TinyData = classes(pl)


    def mark_worker(worker_id):
        with open(f"worker-{os.getpid()}.txt", "w") as mark:
            mark.write(str(worker_id))


    def forked(loader):
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            num_workers=2,
            multiprocessing_context="fork",
            worker_init_fn=mark_worker,
        )


    class Module(TinyModule):
        losses = {}

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.losses[self.global_step] = loss.item()
            return loss


    class Data(TinyData):
        def train_dataloader(self):
            return forked(super().train_dataloader())

        def val_dataloader(self):
            return forked(super().val_dataloader())


    uri, experiment = sys.argv[1:3]
    logger = TraceletAimLogger(remote_uri=uri, experiment_name=experiment, run_name="forked-workers")
    trainer = pl.Trainer(logger=logger, **trainer_kwargs(max_epochs=2))
    trainer.fit(Module(), datamodule=Data())
    with open("report-0.json", "w") as report:
        json.dump({"pid": os.getpid(), "steps": trainer.global_step, "hash": logger.version,
                   "losses": Module.losses}, report)
"""


def test_forked_dataloader_workers_with_a_remote_run_finish_with_one_run(server: str, tmp_path: Path) -> None:
    before = _runs(server)
    experiment = f"forked-{tmp_path.name}"
    # the system-metrics sampler runs (it reads the workers' CPU) while the workers fork
    (report,) = _launch(
        tmp_path,
        FORKED_WORKERS_JOB,
        [sys.executable],
        server,
        experiment,
        TRACELET_SYSTEM_TRACKING_INTERVAL="0.2",
    )
    workers = {int(path.stem.split("-")[1]) for path in tmp_path.glob("worker-*.txt")}
    # 2 epochs x (train + val) x 2 workers, each a fresh fork of the trainer
    assert len(workers) == 8 and report["pid"] not in workers, workers
    assert report["steps"] == 8
    run = _the_one_run(_new_runs(server, before), report["hash"])
    assert (run["name"], run["experiment"]) == ("forked-workers", experiment)
    assert run["hparams"]["lr"] == 0.05
    assert _series(run, "loss", {"subset": "train", "granularity": "step"}) == _steps(report)
    assert sorted(_series(run, "loss", {"subset": "val"})) == [3, 7]
    _assert_no_local_repo(server, tmp_path)


@pytest.mark.parametrize("job", ["lightning-ddp", "hf-torchrun"])
def test_lightning_ddp_and_hf_under_torchrun_write_one_run_on_a_server(
    job: str, server: str, tmp_path: Path
) -> None:
    """The jobs tests/test_distributed.py runs against a local repo, sent to the server instead: the
    scripts name only ``repo_path``, and ``TRACELET_AIM_REMOTE`` in their environment adds a server."""
    from test_distributed import HF_JOB, LIGHTNING_JOB

    pytest.importorskip("transformers" if job == "hf-torchrun" else "lightning")
    before = _runs(server)
    port = str(free_port())
    script, launcher = (
        (LIGHTNING_JOB, [sys.executable]) if job == "lightning-ddp" else (HF_JOB, _torchrun(port))
    )
    _launch(
        tmp_path,
        script,
        launcher,
        str(tmp_path / "unused"),
        TRACELET_AIM_REMOTE=server,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        TOKENIZERS_PARALLELISM="false",
    )
    reports = [path.read_text().split() for path in sorted(tmp_path.glob("report-*.txt"))]
    added = _new_runs(server, before)
    assert list(added) == [reports[0][2]] and reports[1][2] == "None", _summary(added)
    (run,) = added.values()
    assert run["name"] == job.replace("-torchrun", "-ddp") and run["status"] == "finished"
    assert not run["active"] and run["hparams"]
    wanted = {"subset": "train", "granularity": "step"} if job == "lightning-ddp" else {"subset": "train"}
    losses = [steps for name, context, steps, _ in run["series"] if name == "loss" and context == wanted]
    # rank 0's steps, each once (Lightning counts from 0, HF from 1)
    assert losses == ([[0, 1, 2, 3]] if job == "lightning-ddp" else [[1, 2, 3]])
    assert not (tmp_path / "unused").exists()  # nothing went to the local repo
