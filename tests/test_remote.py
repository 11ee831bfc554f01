"""Logging to a real ``aim server`` on 127.0.0.1, started by the test, as a team's shared store."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
from test_seed import SEED, run_block, seed_block
from tracelet_callbacks.aim_ui import free_port

pytestmark = pytest.mark.slow

AIM = str(Path(sys.executable).with_name("aim"))


@contextlib.contextmanager
def running_server(tmp_path: Path):
    """``aim server`` over a fresh repo; yields its ``aim://`` address and the repo folder."""
    folder = tmp_path / "server_repo"
    folder.mkdir()
    subprocess.run([AIM, "init", "--repo", str(folder), "-y"], check=True, capture_output=True, timeout=120)
    port = free_port()
    server = subprocess.Popen(
        [AIM, "server", "--repo", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("aim server did not start within 60 s")
        yield f"aim://127.0.0.1:{port}", folder
    finally:
        gc.collect()  # let aim's remote handles release their server resources while it still runs
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture
def aim_server(tmp_path: Path):
    with running_server(tmp_path) as address:
        yield address


def read_back(uri: str, run_hash: str) -> str:
    """Read the run from a fresh process, as a teammate would."""
    code = textwrap.dedent(
        f"""
        import aim
        run = aim.Run({run_hash!r}, repo={uri!r}, read_only=True)
        (metric,) = aim.Repo({uri!r}).query_metrics(
            "metric.name == 'loss' and run.hash == {run_hash!r}").iter()
        steps, columns = metric.data.items_list()
        print(run.name, run.experiment, run["status"], run.active, run["hparams"], run["tags"],
              metric.context.to_dict(), list(steps), list(columns[0]))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not SEED.exists(), reason="the seed is not beside the checkout")
def test_planned_configuration_with_a_live_server(repo_dir: Path, aim_server) -> None:
    uri, _folder = aim_server
    code = seed_block("Planned Configuration (Future Release)")
    code = re.sub(r"http://aim-server:53800", uri.replace("aim://", "http://"), code)
    run_block(code)
    exp = tracelet.get_active_experiment()
    for step in range(5):
        exp.log_metric("train/loss", 1.0 / (step + 1), step)
    exp.log_params({"lr": 0.01, "hub_token": "hf_abcdefghijklmnopqrstuvwxyz"})
    tracelet.stop_logging()
    line = read_back(uri, exp.hash)
    assert line.startswith("baseline_run My Experiments finished False")
    assert "'hub_token': '<redacted>'" in line and "'lr': 0.01" in line and "hf_abc" not in line
    assert "'model': 'resnet'" in line and "'dataset': 'cifar10'" in line
    assert line.endswith("{'subset': 'train'} [0, 1, 2, 3, 4] [1.0, 0.5, 0.3333333333333333, 0.25, 0.2]")
    assert not (repo_dir / "aim_repo").exists(), "a remote run must not create the local repo"


def test_server_down_is_a_clear_error_within_seconds(repo_dir: Path) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(tracelet.TraceletError, match=f"127.0.0.1:{port}"):
        tracelet.start_logging(backend="aim", config={"remote_uri": f"aim://127.0.0.1:{port}"})
    assert time.monotonic() - start < 10
    assert tracelet.get_active_experiment() is None


def test_a_writer_that_served_a_server_since_stopped_still_exits(repo_dir: Path, tmp_path: Path) -> None:
    from tracelet_callbacks.sink import process

    with running_server(tmp_path) as (uri, _):
        exp = tracelet.Experiment(remote_uri=uri, writer="process")
        exp.log_metric("loss", 1.0, 0)
        exp.close()
    worker = process.take_worker()  # the writer kept for a next run; let go, it must end by itself
    os.close(worker.out)
    os.close(worker.inp)
    try:
        assert worker.proc.wait(timeout=30) == 0  # aim's exit handlers once waited for the server forever
    finally:
        worker.proc.kill()


def test_batched_ingestion_on_a_server_equals_run_track(repo_dir: Path, aim_server) -> None:
    import aim

    from test_writer import _key, expected_series, indexed_series, same, trace_meta, workload
    from tracelet_callbacks.sink.storage import index_run

    uri, folder = aim_server
    events = workload(300)
    run = aim.Run(
        repo=uri, system_tracking_interval=None, log_system_params=False, capture_terminal_logs=False
    )
    for _tag, name, context, value, step, epoch in events:
        run.track(value, name=name, step=step, epoch=epoch, context=context)
    reference = run.hash
    run.close()
    assert index_run(aim.Repo.from_path(uri), reference) is None  # `aim server` never indexes

    # the process writer: an aim client for a server lives there, not in this process (aim's exit
    # handler would wait for a server the fixture has stopped)
    exp = tracelet.Experiment(remote_uri=uri, writer="process", buffer_size=500)
    for tag, _name, _context, value, step, epoch in events:
        exp.log_metric(tag, value, step, epoch=epoch)
    exp.close()

    ours, theirs = indexed_series(folder, exp.hash), indexed_series(folder, reference)
    assert ours.keys() == theirs.keys() == expected_series(events).keys()
    for key, points in expected_series(events).items():
        assert ours[key][0] == sorted(points), key
        assert same(ours[key], theirs[key]), key
    ours_meta, theirs_meta = trace_meta(folder, exp.hash), trace_meta(folder, reference)
    assert same(ours_meta, theirs_meta)
    assert ours_meta[_key("loss", {"subset": "train"})]["min"] == -1000.0


def test_import_tensorboard_into_a_server_twice_adds_nothing_the_second_time(
    repo_dir: Path, aim_server
) -> None:
    """``import-tensorboard --remote``: the runs land on the server, routed as live, and a second import
    finds each folder's run there (no new run, no new points)."""
    from torch.utils.tensorboard import SummaryWriter

    uri, _folder = aim_server
    logs = repo_dir / "tb"
    with SummaryWriter(str(logs / "baseline")) as writer:
        for step in range(25):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)
    command = [sys.executable, "-m", "tracelet_callbacks", "import-tensorboard", str(logs), "--remote", uri]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "imported 25 values from 1 event files into 1 runs" in first.stdout
    run_hash = first.stdout.splitlines()[1].split()[0]
    code = textwrap.dedent(
        f"""
        import aim
        run = aim.Run({run_hash!r}, repo={uri!r}, read_only=True)
        query = "metric.name == 'loss' and run.hash == {run_hash!r}"
        (metric,) = aim.Repo({uri!r}).query_metrics(query).iter()
        steps = list(metric.data.items_list()[0])
        print(run.name, run["status"], run["tags"], metric.context.to_dict(), steps)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = f"baseline finished {{'source': 'tensorboard'}} {{'subset': 'train'}} {list(range(25))}"
    assert done.stdout.strip().splitlines()[-1] == expected
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "imported 0 values from 0 event files into 1 runs" in again.stdout
    assert again.stdout.splitlines()[1].split()[0] == run_hash
