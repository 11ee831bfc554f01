"""Copies between the spool and a shared ``aim server`` never replace what the server holds with less.

Issue 24's defects, each against a real ``aim server`` on 127.0.0.1 and real processes:

1. A resume killed (SIGKILL of the trainer and its writer) while it was starting, then started again
   from the same folder, must leave every point the server held, plus the new ones.
2. Resuming a server run from a folder whose spool never saw it does not copy the run's history into
   the spool before training may go on; the old points stay on the server, the new ones join them,
   and automatic steps go on from the server's last step.
4. A copy that did not finish does not look finished on the server: the run stays active, with a
   heartbeat, so ``runs close-stale`` can close it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import test_team
import tracelet_callbacks as tracelet
from test_team import CLI, Server, read_run

pytestmark = pytest.mark.slow
server = test_team.server  # the same fixture: an `aim server` over a fresh repo, stopped afterwards

SERIES, POINTS = 10, 20_000  # the server's run before the resume: 200,000 points
COPIED = 5_000  # points per series (4 of them) that sync sends


def _server_with_a_big_run(folder: Path) -> tuple[Server, str]:
    """A server whose repo holds one finished run of ``SERIES`` x ``POINTS`` points (written locally
    first: the fastest way to get them there)."""
    served = Server(folder)
    exp = tracelet.Experiment(repo_path=str(folder), experiment_name="big", run_name="big-run")
    for step in range(POINTS):
        exp.log_metrics({f"m{i}": float(step) for i in range(SERIES)}, step=step)
    exp.close()
    served.start()
    return served, exp.hash


@pytest.fixture
def big(tmp_path: Path):
    served, run_hash = _server_with_a_big_run(tmp_path / "server_repo")
    try:
        yield served, run_hash
    finally:
        served.kill(signal.SIGTERM)


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _wait_for(condition, what: str, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up after {deadline:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_a_resume_killed_while_starting_loses_nothing_on_the_server(
    big: tuple[Server, str], tmp_path: Path
) -> None:
    server, run_hash = big
    node = tmp_path / "node"
    node.mkdir()
    script = textwrap.dedent(
        f"""
        import time, tracelet_callbacks as tracelet
        tracelet.start_logging(remote_uri={server.uri!r}, run_hash={run_hash!r})
        print("STARTED", flush=True)
        time.sleep(600)
        """
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", script], cwd=node, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    chunk = node / ".aim-spool" / ".aim" / "meta" / "chunks" / run_hash
    try:
        # the moment the spool holds something of the run (before: mid-copy of its 200,000 points)
        _wait_for(lambda: chunk.exists() or trainer.poll() is not None, "the run in the spool")
        assert trainer.poll() is None, "the trainer ended by itself"
    finally:
        for pid in [*_descendants(trainer.pid), trainer.pid]:  # the writer runs in its own session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        trainer.wait(timeout=60)

    os.chdir(node)
    try:
        exp = tracelet.start_logging(remote_uri=server.uri, run_hash=run_hash)
        exp.log_metrics({"m0": -1.0}, step=POINTS)
        tracelet.stop_logging()
    finally:
        os.chdir(tmp_path)

    run = read_run(
        str(server.folder), run_hash
    )  # its files: reading 200,000 points through aim's client takes minutes
    assert [step for step, _ in run["series"]["m0{}"]] == list(range(POINTS + 1))
    assert run["series"]["m0{}"][-1] == [POINTS, -1.0]
    for i in range(1, SERIES):
        assert len(run["series"][f"m{i}{{}}"]) == POINTS, i
    assert run["status"] == "finished" and run["name"] == "big-run" and run["experiment"] == "big"


def test_a_server_run_resumed_where_no_spool_holds_it_is_not_copied_first(
    big: tuple[Server, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aim

    server, run_hash = big
    node = tmp_path / "new-node"
    node.mkdir()
    monkeypatch.chdir(node)
    exp = tracelet.start_logging(remote_uri=server.uri, run_hash=run_hash)
    assert exp.hash == run_hash
    for step in range(3):
        exp.log_metric("m0", float(step))  # automatic steps: after the server's last one
    exp.log_metrics({"m1": 7.0}, step=POINTS + 5)
    tracelet.stop_logging()
    spool = aim.Repo.from_path(str(node / ".aim-spool"))
    spooled = sum(
        len(m.values.values_list()) for m in aim.Run(run_hash, repo=spool, read_only=True).metrics()
    )
    assert spooled == 4, "the spool holds the new points only, not the server's history"

    run = read_run(
        str(server.folder), run_hash
    )  # its files: reading 200,000 points through aim's client takes minutes
    m0 = run["series"]["m0{}"]
    assert len(m0) == POINTS + 3 and m0[-3:] == [[POINTS, 0.0], [POINTS + 1, 1.0], [POINTS + 2, 2.0]]
    m1 = run["series"]["m1{}"]
    assert len(m1) == POINTS + 1 and m1[-1] == [POINTS + 5, 7.0]
    for i in range(2, SERIES):
        assert len(run["series"][f"m{i}{{}}"]) == POINTS, i
    assert run["status"] == "finished" and run["queried"] == SERIES  # indexed: every series is found


def test_a_copy_cut_short_stays_active_until_close_stale_closes_it(tmp_path: Path) -> None:
    """A ``sync`` killed mid-copy leaves the server's run active with a heartbeat; ``close-stale``
    marks it killed once the heartbeat is old, and a second ``sync`` completes it."""
    spool = tmp_path / "spool"
    server = Server(tmp_path / "server_repo")
    server.start()
    try:
        exp = tracelet.Experiment(
            remote_uri=server.uri, offline=True, spool_path=str(spool), experiment_name="offline"
        )
        for step in range(COPIED):  # fewer: a copy to a server is slow (issue 24), and sent twice here
            exp.log_metrics({f"m{i}": float(step) for i in range(4)}, step=step)
        exp.close()
        copying = subprocess.Popen(
            [*CLI, "sync", str(spool), "--to", server.uri],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        chunk = server.folder / ".aim" / "seqs" / "chunks" / exp.hash

        def points_arrived() -> bool:  # the server's database of the run's points has grown
            files = chunk.glob("*") if chunk.exists() else []
            return sum(path.stat().st_size for path in files if path.is_file()) > 200_000

        _wait_for(lambda: points_arrived() or copying.poll() is not None, "the copy to be under way")
        assert copying.poll() is None, "sync ended before it could be cut short"
        os.killpg(copying.pid, signal.SIGKILL)
        copying.wait(timeout=60)

        listed = subprocess.run(
            [*CLI, "runs", "ls", "--remote", server.uri], capture_output=True, text=True, timeout=120
        )
        assert listed.returncode == 0, listed.stderr
        (line,) = [line for line in listed.stdout.splitlines() if exp.hash in line]
        assert "finished" not in line, line  # an incomplete copy is not a finished run

        run = read_run(str(server.folder), exp.hash)
        assert run["active"], run["status"]
        stale = subprocess.run(
            [*CLI, "runs", "close-stale", "--remote", server.uri, "--older-than", "1s"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if exp.hash not in stale.stdout:  # the heartbeat was written less than a second ago
            time.sleep(1.5)  # the scenario itself: a heartbeat older than --older-than
            stale = subprocess.run(
                [*CLI, "runs", "close-stale", "--remote", server.uri, "--older-than", "1s"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        assert exp.hash in stale.stdout, stale.stdout + stale.stderr

        done = subprocess.run(
            [*CLI, "sync", str(spool), "--to", server.uri], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        run = read_run(str(server.folder), exp.hash)
        assert all(len(run["series"][f"m{i}{{}}"]) == COPIED for i in range(4))
        assert run["status"] == "finished" and not run["active"]
    finally:
        server.kill(signal.SIGTERM)


def _offline_runs(spool: Path, server_uri: str, count: int) -> list[str]:
    hashes = []
    for number in range(count):
        exp = tracelet.Experiment(
            remote_uri=server_uri, offline=True, spool_path=str(spool), run_name=f"r{number}"
        )
        for step in range(50):
            exp.log_metric("loss", float(step), iteration=step)
        exp.close()
        hashes.append(exp.hash)
    return hashes


def test_sync_sends_every_run_it_can_and_names_each_one_it_cannot(server: Server, tmp_path: Path) -> None:
    """Defect 3: a damaged spooled run, a mistyped ``--run`` and a run spooled for another server."""
    spool = tmp_path / "spool"
    hashes = _offline_runs(spool, server.uri, 3)
    damaged = sorted(hashes)[0]  # the first in hash order: once it blocked every run after it
    for table in (spool / ".aim" / "seqs" / "chunks" / damaged).glob("*.sst"):
        table.write_bytes(b"\0" * table.stat().st_size)  # a disk error: its points cannot be read
    elsewhere = _offline_runs(spool, "aim://127.0.0.1:9", 1)[0]

    done = subprocess.run(
        [*CLI, "sync", str(spool), "--to", server.uri], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes = dict(line.split(None, 1) for line in done.stdout.splitlines()[1:])
    assert outcomes[damaged].startswith("failed: "), outcomes
    for run_hash in hashes:
        if run_hash != damaged:
            assert outcomes[run_hash] == "copied", outcomes
            assert read_run(str(server.folder), run_hash)["series"]["loss{}"][-1] == [49, 49.0]
    assert outcomes[elsewhere].startswith("skipped: spooled for aim://127.0.0.1:9"), outcomes
    assert damaged in done.stderr and "could not be sent" in done.stderr

    typo = "0123456789abcdef01234567"
    named = subprocess.run(
        [*CLI, "sync", str(spool), "--to", server.uri, "--run", typo],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert named.returncode == 1 and "no such run in the spool" in named.stdout, named.stdout + named.stderr
    assert not (spool / ".aim" / "meta" / "chunks" / typo).exists()

    for table in (spool / ".aim" / "seqs" / "chunks" / damaged).glob("*"):  # the damaged run is removed
        table.unlink()
    (spool / ".aim" / "seqs" / "chunks" / damaged).rmdir()
    (spool / ".aim" / "meta" / "chunks" / damaged).rename(tmp_path / "removed")
    again = subprocess.run(
        [*CLI, "sync", str(spool), "--to", server.uri], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    sent = subprocess.run(
        [*CLI, "sync", str(spool), "--to", server.uri, "--run", elsewhere],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sent.returncode == 0 and f"{elsewhere}  copied" in sent.stdout, sent.stdout + sent.stderr


class _NotAim:
    """A web server on a free port that answers every GET with ``body`` (a page, or an error)."""

    def __init__(self, status: int, body: bytes, kind: str) -> None:
        import http.server
        import threading

        answer = (status, body, kind)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(answer[0])
                self.send_header("Content-Type", answer[2])
                self.send_header("Content-Length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"aim://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize(
    "answer",
    [(404, b"File not found", "text/html"), (200, b"<html>aim</html>", "text/html; charset=utf-8")],
    ids=["a web server", "aim's UI port"],
)
def test_an_address_that_is_not_an_aim_server_fails_at_construction(
    answer: tuple[int, bytes, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 5: the logger, the callback, the tracker and ``start_logging`` refuse it where they are
    built, naming the address; ``runs ls`` says so in one line. A server that is down is accepted
    (the spool takes the run until it answers)."""
    from tracelet_callbacks.sink import repo as repo_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(repo_module, "_verdicts", {})
    fake = _NotAim(*answer)
    try:
        for build in (
            lambda: tracelet.TraceletAimLogger(remote_uri=fake.uri),
            lambda: tracelet.TraceletCallback(remote_uri=fake.uri),
            lambda: tracelet.TraceletAimTracker("t", remote_uri=fake.uri),
            lambda: tracelet.start_logging(remote_uri=fake.uri),
        ):
            with pytest.raises(ValueError, match=f"{fake.uri} is not an AIM server"):
                build()
        if "html" in answer[2] and answer[0] == 200:
            with pytest.raises(ValueError, match="aim's UI"):
                tracelet.Experiment(remote_uri=fake.uri)
        listed = subprocess.run(
            [*CLI, "runs", "ls", "--remote", fake.uri], capture_output=True, text=True, timeout=120
        )
        assert listed.returncode == 1 and "Traceback" not in listed.stderr, listed.stderr
        assert f"{fake.uri} is not an AIM server" in listed.stderr
    finally:
        fake.close()
    assert not list(tmp_path.iterdir())  # nothing was made

    down = "aim://127.0.0.1:9"  # nothing listens there
    tracelet.TraceletAimLogger(remote_uri=down)
    tracelet.Experiment(remote_uri=down)


#: One member of a team: logs ``STEPS`` steps of 4 metrics to the server, then stops.
TEAM_JOB = """
import json, sys
import tracelet_callbacks as tracelet

uri, member, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
exp = tracelet.start_logging(
    exp_name=f"member-{member}", project="team", config={"remote_uri": uri, "system_tracking_interval": None}
)
for step in range(steps):
    exp.log_metrics({f"m{i}": member * 1000.0 + step + i / 10 for i in range(4)}, step=step)
tracelet.stop_logging()
print(json.dumps({"member": member, "hash": exp.hash}))
"""

#: Reads every run of ``sys.argv[2:]`` from the server's repo folder ``sys.argv[1]``, in one process.
READ_TEAM = """
import json, sys
import aim

repo = aim.Repo.from_path(sys.argv[1])
found = {}
for run_hash in sys.argv[2:]:
    run = aim.Run(run_hash, repo=repo, read_only=True)
    series = {}
    for metric in run.metrics():
        steps, (values, *_rest) = metric.data.items_list()
        series[metric.name] = [list(map(int, steps)), list(values)]
    found[run_hash] = {"name": run.name, "status": run.get("status"), "active": run.active, "series": series}
print(json.dumps(found))
"""


def test_eight_jobs_logging_into_one_server_at_once_keep_every_value(server: Server, tmp_path: Path) -> None:
    """Eight trainers started together, each its own process with its own writer and spool, all
    logging into one ``aim server``: every value of every job is on the server, in its own run."""
    steps, members = 500, 8
    script = tmp_path / "member.py"
    script.write_text(TEAM_JOB)
    jobs = []
    for member in range(members):
        folder = tmp_path / f"member{member}"  # each its own working folder, as on its own node
        folder.mkdir()
        command = [sys.executable, str(script), server.uri, str(member), str(steps)]
        jobs.append(
            subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    hashes = {}
    for member, job in enumerate(jobs):
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
        assert "tracelet" not in err, err[-3000:]  # nothing was dropped, stalled or failed
        hashes[member] = json.loads(out.strip().splitlines()[-1])["hash"]
    assert len(set(hashes.values())) == members

    read = subprocess.run(
        [sys.executable, "-c", READ_TEAM, str(server.folder), *hashes.values()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    runs = json.loads(read.stdout.strip().splitlines()[-1])
    for member, run_hash in hashes.items():
        run = runs[run_hash]
        assert (run["name"], run["status"], run["active"]) == (f"member-{member}", "finished", False)
        assert sorted(run["series"]) == ["m0", "m1", "m2", "m3"]
        for i in range(4):
            logged = [member * 1000.0 + step + i / 10 for step in range(steps)]
            assert run["series"][f"m{i}"] == [list(range(steps)), logged], (member, i)
