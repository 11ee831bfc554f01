"""A team's shared ``aim server`` that goes away, offline runs sent later with ``sync``, and runs left
active by a writer that died with its trainer (``runs close-stale``).

Every server here is a real ``aim server`` on 127.0.0.1 started by the test; runs are read back in a
fresh process through aim's public API, as a teammate would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

import tracelet_callbacks as tracelet
from test_remote import AIM, free_port

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "tracelet_callbacks"]


class Server:
    """``aim server`` over one repo folder and port, which a test can kill and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.uri = f"aim://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        init = [AIM, "init", "--repo", str(folder), "-y"]
        subprocess.run(init, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        command = [AIM, "server", "--repo", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail(f"aim server exited with {self.proc.returncode}")
                time.sleep(0.2)
        pytest.fail("aim server did not start within 60 s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path: Path):
    served = Server(tmp_path / "server_repo")
    served.start()
    try:
        yield served
    finally:
        served.kill(signal.SIGTERM)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The trainer's working folder: the spool (.aim-spool) and artifacts land here by default."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def read_run(uri: str, run_hash: str) -> dict:
    """The run as a fresh process sees it through aim's public API."""
    code = textwrap.dedent(
        f"""
        import json, math, aim
        from aim.storage.context import Context
        repo = aim.Repo.from_path({uri!r})
        run = aim.Run({run_hash!r}, repo=repo, read_only=True)
        series = {{}}
        for metric in run.metrics():
            steps, (values, epochs, times) = metric.data.items_list()
            key = metric.name + json.dumps(metric.context.to_dict(), sort_keys=True)
            series[key] = [[int(s), None if math.isnan(v) else v] for s, v in zip(steps, values)]
        found = [m.run.hash for m in repo.query_metrics(f"run.hash == '{run_hash}'").iter()]
        try:
            pictures = run.get_image_sequence("pictures", Context({{}}))
            images = len(pictures.values.values_list()) if pictures else 0
        except KeyError:
            images = 0
        print(json.dumps({{
            "series": series,
            "status": run.get("status"),
            "active": run.active,
            "hparams": run.get("hparams"),
            "tags": sorted(run.tags),
            "name": run.name,
            "experiment": run.experiment,
            "artifacts": sorted(run.artifacts),
            "queried": len(found),
            "images": images,
        }}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "sync", *args], capture_output=True, text=True, timeout=300)


def test_server_killed_and_started_again_5_s_later_loses_nothing(server: Server, workdir: Path) -> None:
    exp = tracelet.start_logging(experiment_name="outage", remote_uri=server.uri)
    exp.log_params({"lr": 0.1})
    slowest = 0.0
    killed_at = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1500):
            began = time.monotonic()
            exp.log_metrics({"loss": step / 7}, step=step)
            slowest = max(slowest, time.monotonic() - began)
            if step == 500:
                server.kill()
                killed_at = time.monotonic()
            if step == 1000:
                while time.monotonic() - killed_at < 5.0:  # the scenario itself: down for 5 s
                    time.sleep(0.05)
                server.start()
            time.sleep(0.001)
        run_hash = exp.hash
        tracelet.stop_logging()
    assert slowest < 5.0, f"a log call blocked for {slowest:.1f} s while the server was down"
    run = read_run(server.uri, run_hash)
    assert run["series"]["loss{}"] == [[step, step / 7] for step in range(1500)]
    assert run["status"] == "finished" and not run["active"]
    assert run["hparams"] == {"lr": 0.1}
    assert run["queried"] == 1
    # aim's client may ride out a 5 s outage by itself (then nothing is said); if the forwarder saw it,
    # one warning named the spool and one said the server was back
    said = [str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning)]
    spool = str(workdir / ".aim-spool")
    behind = [text for text in said if "is behind" in text]
    assert len(behind) <= 1 and all(spool in text for text in behind), said
    assert bool(behind) == any("answers again" in text for text in said), said


def test_server_killed_for_good_the_spool_keeps_the_run_and_sync_completes_it(
    server: Server, workdir: Path
) -> None:
    exp = tracelet.start_logging(experiment_name="gone", remote_uri=server.uri)
    exp.log_params({"lr": 0.2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(1200):
            exp.log_metrics({"loss": step / 3}, step=step)
            if step == 400:
                server.kill()
        run_hash = exp.hash
        began = time.monotonic()
        tracelet.stop_logging()
        closing = time.monotonic() - began
    assert closing < 15.0, f"stop_logging took {closing:.1f} s with the server gone"
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning))
    assert "python -m tracelet_callbacks sync" in said and ".aim-spool" in said, said

    spooled = read_run(str(workdir / ".aim-spool"), run_hash)  # the spool holds the whole run
    assert spooled["series"]["loss{}"] == [[step, step / 3] for step in range(1200)]
    assert spooled["status"] == "finished"

    server.start()
    first = sync(str(workdir / ".aim-spool"), "--to", server.uri)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "1 of 1 runs sent" in first.stdout and f"{run_hash}  copied" in first.stdout
    on_server = read_run(server.uri, run_hash)
    assert on_server["series"] == spooled["series"]
    assert on_server["status"] == "finished" and not on_server["active"]
    assert on_server["hparams"] == {"lr": 0.2} and on_server["queried"] == 1

    second = sync(str(workdir / ".aim-spool"), "--to", server.uri)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 of 1 runs sent" in second.stdout and "up to date" in second.stdout
    assert read_run(server.uri, run_hash) == on_server


def _log_the_same_run(settings: dict, folder: Path) -> str:
    """One small run with params, tags, two contexts, an automatic-step series, images, an artifact."""
    import aim
    import numpy as np
    from PIL import Image

    exp = tracelet.start_logging(
        experiment_name="same",
        run_name="twin",
        tags=["team", "nightly"],
        system_tracking_interval=None,
        **settings,
    )
    exp.log_params({"lr": 0.3, "layers": [4, 2]})
    for step in range(50):
        exp.log_metrics({"train/loss": 1 / (step + 1), "val/loss": 2 / (step + 1)}, step=step)
        exp.log_metric("auto_counter", float(step))
    picture = aim.Image(Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)))
    exp.run.track(picture, name="pictures", step=3)
    notes = folder / "notes.txt"
    notes.write_text("trained twice\n")
    exp.log_artifact(notes)
    run_hash = exp.hash
    tracelet.stop_logging()
    return run_hash


def test_offline_then_sync_equals_a_run_logged_straight_to_the_server(
    server: Server, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = _log_the_same_run({"remote_uri": server.uri}, workdir)
    monkeypatch.setenv("TRACELET_OFFLINE", "1")
    offline = _log_the_same_run({"remote_uri": server.uri}, workdir)
    monkeypatch.delenv("TRACELET_OFFLINE")
    before = subprocess.run(
        [*CLI, "runs", "ls", "--remote", server.uri], capture_output=True, text=True, timeout=120
    )
    assert before.returncode == 0 and offline not in before.stdout  # offline: the server never saw it

    sent = sync("--to", server.uri)  # the spool's default place, in the working folder
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert f"{offline}  copied" in sent.stdout and f"{direct}  up to date" in sent.stdout

    expected, got = read_run(server.uri, direct), read_run(server.uri, offline)
    assert got == expected
    assert got["series"]["loss" + json.dumps({"subset": "val"})][-1] == [49, 2 / 50]
    assert got["series"]["auto_counter{}"] == [[step, float(step)] for step in range(50)]
    assert got["images"] == 1 and got["artifacts"] == ["notes.txt"]
    assert got["tags"] == ["nightly", "team"] and got["status"] == "finished"


def _trainer_script(repo: Path, report: Path) -> str:
    return textwrap.dedent(
        f"""
        import json, os, time
        import tracelet_callbacks as tracelet
        from tracelet_callbacks.sink.process import writer_pids
        exp = tracelet.start_logging(
            repo_path={str(repo)!r}, experiment_name="doomed", system_tracking_interval=None
        )
        for step in range(20):
            exp.log_metrics({{"loss": step}}, step=step)
        exp.flush()
        with open({str(report)!r} + ".tmp", "w") as handle:
            json.dump({{"hash": exp.hash, "writers": sorted(writer_pids())}}, handle)
        os.replace({str(report)!r} + ".tmp", {str(report)!r})
        while True:
            time.sleep(1)
        """
    )


def test_close_stale_marks_the_run_whose_trainer_and_writer_were_killed_and_nothing_else(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    finished = tracelet.start_logging(repo_path=str(repo), experiment_name="done")
    finished.log_metrics({"loss": 1.0}, step=0)
    finished_hash = finished.hash
    tracelet.stop_logging()

    report = tmp_path / "report.json"
    script = tmp_path / "trainer.py"
    script.write_text(_trainer_script(repo, report))
    trainer = subprocess.Popen([sys.executable, str(script)], start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not report.exists():
            assert trainer.poll() is None, "the trainer exited early"
            assert time.monotonic() < deadline, "the trainer never logged"
            time.sleep(0.1)
        started = json.loads(report.read_text())
        # both at once, so neither can close the run for the other
        for pid in [trainer.pid, *started["writers"]]:
            os.kill(pid, signal.SIGSTOP)
        for pid in [trainer.pid, *started["writers"]]:
            os.kill(pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(trainer.pid, signal.SIGKILL)
        trainer.wait(timeout=30)
    for pid in started["writers"]:
        while _exists(pid):  # reaped by init once its parent is gone
            time.sleep(0.05)

    # a run alive right now, in this process, with a fresh heartbeat: never touched
    alive = tracelet.start_logging(repo_path=str(repo), experiment_name="alive")
    alive.log_metrics({"loss": 2.0}, step=0)
    alive.flush()
    try:
        listing = subprocess.run(
            [*CLI, "runs", "ls", "--repo", str(repo)], capture_output=True, text=True, timeout=120
        )
        assert listing.returncode == 0, listing.stderr[-3000:]
        assert started["hash"] in listing.stdout and finished_hash in listing.stdout
        stale = [line for line in listing.stdout.splitlines() if line.startswith(started["hash"])]
        assert "running" in stale[0]

        time.sleep(5.5)  # the scenario itself: a heartbeat older than --older-than 5s
        closed = subprocess.run(
            [*CLI, "runs", "close-stale", "--repo", str(repo), "--older-than", "5s"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert closed.returncode == 0, closed.stderr[-3000:]
        assert "closed 1 stale runs" in closed.stdout and started["hash"] in closed.stdout
        alive_hash = alive.hash
    finally:
        tracelet.stop_logging()

    killed = read_run(str(repo), started["hash"])
    assert killed["status"] == "killed" and not killed["active"]
    assert killed["series"]["loss{}"] == [[step, float(step)] for step in range(20)]
    assert killed["queried"] == 1
    assert read_run(str(repo), finished_hash)["status"] == "finished"
    assert read_run(str(repo), alive_hash)["status"] == "finished"  # closed by its own writer, later


def _exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie no one has reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("command", [[], ["sync"], ["runs"], ["runs", "ls"], ["runs", "close-stale"]])
def test_every_command_has_help(command: list[str]) -> None:
    shown = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "Usage:" in shown.stdout


def test_sync_without_a_server_is_a_usage_error(workdir: Path) -> None:
    done = subprocess.run([*CLI, "sync"], capture_output=True, text=True, timeout=60, env=_without_remote())
    assert done.returncode == 2 and "--to" in done.stderr


def _without_remote() -> dict:
    env = dict(os.environ)
    env.pop("TRACELET_AIM_REMOTE", None)
    return env


def test_a_server_run_resumed_on_another_machine_continues_there_rewound(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second attempt starts where no spool holds the run (another node): it is fetched from the
    server, continued and rewound to the checkpoint's step, on the server too."""
    checkpoint = tmp_path / "shared" / "ckpt-20"
    for node in ("node-1", "node-2"):
        (tmp_path / node).mkdir()
    monkeypatch.chdir(tmp_path / "node-1")
    exp = tracelet.start_logging(experiment_name="moved", remote_uri=server.uri)
    for step in range(31):
        exp.log_metrics({"loss": float(step)}, step=step)
        if step == 20:
            checkpoint.mkdir(parents=True)
            exp.mark_checkpoint(checkpoint)
    exp.log_metrics({"only_first": 1.0}, step=25)
    run_hash = exp.hash
    tracelet.stop_logging("killed")

    monkeypatch.chdir(tmp_path / "node-2")
    exp = tracelet.start_logging(remote_uri=server.uri, resume_from=str(checkpoint))
    assert exp.hash == run_hash
    for step in range(21, 41):
        exp.log_metrics({"loss": step * 10.0}, step=step)
    tracelet.stop_logging()

    run = read_run(server.uri, run_hash)
    assert run["series"]["loss{}"] == [[s, float(s)] for s in range(21)] + [
        [s, s * 10.0] for s in range(21, 41)
    ]
    assert "only_first{}" not in run["series"]  # gone from the server's index too
    assert run["status"] == "finished" and run["queried"] == 1
    assert run["experiment"] == "moved"  # the continued run keeps its experiment
