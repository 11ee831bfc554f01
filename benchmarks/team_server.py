"""A team's jobs logging into one ``aim server``: values per second, the lag until a value is visible,
and what the server's CPU pays per 100,000 values.

Starts a stock ``aim server`` over a new repo on a free port of 127.0.0.1, then runs, one workload
after the other:

* ``jobs=N`` for each N of ``--jobs``: N training processes at once, each logging ``--values`` scalars
  over 8 series through ``start_logging(remote_uri=...)`` and closing its run (a fresh process each,
  as a team's jobs are), logging as fast as they can: a flood the server falls behind;
* ``jobs=8 at P/s each``: 8 jobs logging ``--paced`` values a second each for 30 s, a team's pace
  rather than a flood: its lag is what someone watching the UI sees;
* ``sync``: one process logs ``--values`` scalars offline (``TRACELET_OFFLINE=1``, into its spool),
  then ``python -m tracelet_callbacks sync --to`` sends them; only the sync is timed;
* ``resume``: a job logs ``--resume-points`` scalars to the server (untimed); then a fresh process in
  an empty folder (a new node, whose spool never saw the run) resumes it with
  ``start_logging(remote_uri=..., run_hash=...)``, logs 800 more with automatic steps and closes;
  ``loop s`` is how long ``start_logging`` took to return, and every old and new value is read back.

For every workload it prints the wall time from the first job's start until every run is closed,
the values per second that makes, the server's CPU seconds per 100,000 values, and the lag: while
the jobs log, one probe process reads once a second, from the server's folder, how far each run's
first series has come (its ``last_step`` meta key, written only after the points it names are on the
server; the run's own meta chunk, which is what ``aim up``'s indexer reads every few seconds),
and the lag is how long before that moment the first step it cannot see yet was logged (median and
worst). Every value is read back from the server through aim's public API at the end.

    .venv/bin/python benchmarks/team_server.py --jobs 1 4 8 --values 100000 [--resume-points 400000]

For ``resume`` the ``values`` column counts the values the resumed job added and ``read back`` the
run's whole history with them; ``loop s`` is ``start_logging``'s time to return.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

AIM = str(Path(sys.executable).with_name("aim"))
SERIES = 8

JOB = textwrap.dedent(
    """
    import json, sys, time
    import tracelet_callbacks as tracelet

    uri, values, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    pace = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0  # values a second; 0: as fast as it can
    exp = tracelet.start_logging(experiment_name="team-bench", remote_uri=uri, system_tracking_interval=None)
    steps = values // {series}
    logged = {{}}  # step -> when it was logged, every 1/50 of the run
    started = time.time()
    for step in range(steps):
        exp.log_metrics({{f"m{{i}}": float(step * {series} + i) for i in range({series})}}, step=step)
        if pace:
            time.sleep(max(0.0, started + (step + 1) * {series} / pace - time.time()))
        if step % max(1, steps // 50) == 0 or step == steps - 1:
            logged[step] = time.time()
    looped = time.time()
    run_hash = exp.hash
    tracelet.stop_logging()
    with open(report, "w") as out:
        json.dump({{"hash": run_hash, "started": started, "looped": looped, "closed": time.time(),
                   "logged": logged}}, out)
    """
).format(series=SERIES)

PROBE = textwrap.dedent(
    """
    import json, sys, aim
    from aim.storage.context import Context
    # what `aim up` shows: its indexer reads each live run's own meta chunk in the server's folder
    # every few seconds (``aim.Run(hash)`` reads the index, which a stock server does not update)
    repo = aim.Repo.from_path(sys.argv[1])
    trace = ("traces", Context({}).idx, "m0", "last_step")
    for line in sys.stdin:  # the hashes to look at, once a second; one answer a line
        repo.container_pool.clear()  # open each chunk afresh, as aim's indexer does
        seen = {}
        for run_hash in json.loads(line):
            try:
                meta = repo.request_tree("meta", run_hash, read_only=True, skip_read_optimization=True)
                # the last step the run's meta keys name: they are written only after the points
                # they describe are on the server
                seen[run_hash] = meta.subtree(("meta", "chunks", run_hash)).get(trace, None)
            except Exception:  # not on the server yet
                seen[run_hash] = None
        print(json.dumps(seen), flush=True)
    """
)

RESUME = textwrap.dedent(
    """
    import json, sys, time
    import tracelet_callbacks as tracelet

    uri, run_hash, report = sys.argv[1], sys.argv[2], sys.argv[3]
    started = time.time()
    exp = tracelet.start_logging(remote_uri=uri, run_hash=run_hash, system_tracking_interval=None)
    returned = time.time()
    for _ in range(100):
        exp.log_metrics({{f"m{{i}}": -1.0 for i in range({series})}})  # automatic steps
    tracelet.stop_logging()
    with open(report, "w") as out:
        json.dump({{"started": started, "returned": returned, "closed": time.time()}}, out)
    """
).format(series=SERIES)

READ = textwrap.dedent(
    """
    import json, sys, aim
    repo = aim.Repo.from_path(sys.argv[1])
    counts = {}
    for run_hash in sys.argv[2:]:
        run = aim.Run(run_hash, repo=repo, read_only=True)
        counts[run_hash] = sum(len(m.values.values_list()) for m in run.metrics())
    print(json.dumps(counts))
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True)
    subprocess.run([AIM, "init", "--repo", str(folder), "-y"], check=True, capture_output=True)
    port = free_port()
    command = [AIM, "server", "--repo", str(folder), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"aim://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"aim server exited with {proc.returncode}") from None
            time.sleep(0.2)
    raise SystemExit("aim server did not start within 60 s")


def server_cpu(proc: subprocess.Popen) -> float:
    """CPU seconds of the server and every process under it so far."""
    total = 0.0
    server = psutil.Process(proc.pid)
    for process in [server, *server.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def read_back(uri: str, hashes: list[str]) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", READ, uri, *hashes], capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_jobs(
    uri: str, jobs: int, values: int, work: Path, server: subprocess.Popen, pace: float = 0.0
) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    name = f"job{jobs}" + ("paced" if pace else "")  # its jobs' folders
    cpu_before = server_cpu(server)
    began = time.time()
    procs, reports = [], []
    for index in range(jobs):
        folder = work / f"{name}-{index}"
        folder.mkdir()
        report = folder / "report.json"
        script = folder / "job.py"
        script.write_text(JOB)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), uri, str(values), str(report), str(pace)], cwd=folder, env=env
            )
        )
        reports.append(report)
    # the lag: one probe process asked once a second; it reads one meta key a run from the server's
    # folder, as `aim up` does, and costs the server nothing
    probe = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(work / "server")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen: list[tuple[float, int, dict]] = []  # (asked at, job index, {hash: last step})
    hashes: dict[int, str] = {}
    while any(proc.poll() is None for proc in procs):
        asked = time.time()
        known = [h for h in hashes.values()]
        if known:
            probe.stdin.write(json.dumps(known) + "\n")
            probe.stdin.flush()
            answer = probe.stdout.readline()
            if answer:
                seen.append((asked, 0, json.loads(answer)))
        for index, folder in enumerate(work.glob(f"{name}-*")):
            spooled = folder / ".aim-spool" / ".aim" / "meta" / "chunks"
            if index not in hashes and spooled.is_dir():
                found = [p.name for p in spooled.iterdir()]
                if found:
                    hashes[index] = found[0]
        time.sleep(max(0.0, 1.0 - (time.time() - asked)))
    probe.stdin.close()
    probe.wait(timeout=60)
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a job exited with {proc.returncode}")
    ended = time.time()
    results = [json.loads(report.read_text()) for report in reports]
    cpu = server_cpu(server) - cpu_before
    counts = read_back(uri, [r["hash"] for r in results])
    if os.environ.get("TEAM_BENCH_DEBUG"):
        print(began, results, seen, file=sys.stderr)
    lags = []
    for asked, _, steps in seen:
        for result in results:
            step = steps.get(result["hash"])
            logged = {int(k): v for k, v in result["logged"].items()}
            if asked > result["closed"] or asked < result["started"]:
                continue
            step = -1 if step is None else step  # nothing of the run visible yet
            later = [at for s, at in logged.items() if s > step and at < asked]  # logged, not yet seen
            if later:
                lags.append(asked - min(later))
            else:
                lags.append(0.0)
    total = jobs * (values // SERIES) * SERIES
    return {
        "workload": f"jobs={jobs}" + (f" at {pace:,.0f}/s each" if pace else ""),
        "values": total,
        "wall_s": ended - began,
        "loop_s": max(r["looped"] - r["started"] for r in results),
        "values_per_s": total / (ended - began),
        "server_cpu_per_100k": cpu / total * 100_000,
        "lag_median_s": statistics.median(lags) if lags else None,
        "lag_max_s": max(lags) if lags else None,
        "read_back": sum(counts.values()),
    }


def run_sync(uri: str, values: int, work: Path, server: subprocess.Popen) -> dict:
    folder = work / "offline"
    folder.mkdir()
    report = folder / "report.json"
    script = folder / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TRACELET_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, str(script), uri, str(values), str(report)], cwd=folder, env=env, check=True
    )
    run_hash = json.loads(report.read_text())["hash"]
    cpu_before = server_cpu(server)
    began = time.time()
    subprocess.run(
        [sys.executable, "-m", "tracelet_callbacks", "sync", "--to", uri],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    wall = time.time() - began
    cpu = server_cpu(server) - cpu_before
    total = (values // SERIES) * SERIES
    return {
        "workload": "sync",
        "values": total,
        "wall_s": wall,
        "loop_s": None,
        "values_per_s": total / wall,
        "server_cpu_per_100k": cpu / total * 100_000,
        "lag_median_s": None,
        "lag_max_s": None,
        "read_back": read_back(uri, [run_hash])[run_hash],
    }


def run_resume(uri: str, points: int, work: Path, server: subprocess.Popen) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    folder = work / "resumed-node-a"
    folder.mkdir()
    (folder / "job.py").write_text(JOB)
    report = folder / "report.json"
    subprocess.run([sys.executable, "job.py", uri, str(points), str(report)], cwd=folder, env=env, check=True)
    run_hash = json.loads(report.read_text())["hash"]
    node = work / "resumed-node-b"  # empty: its spool never saw the run
    node.mkdir()
    (node / "resume.py").write_text(RESUME)
    cpu_before = server_cpu(server)
    began = time.time()
    subprocess.run(
        [sys.executable, "resume.py", uri, run_hash, str(node / "report.json")], cwd=node, env=env, check=True
    )
    wall = time.time() - began
    timed = json.loads((node / "report.json").read_text())
    added = 100 * SERIES
    return {
        "workload": "resume",
        "values": added,
        "wall_s": wall,
        "loop_s": timed["returned"] - timed["started"],  # start_logging until it returned
        "values_per_s": added / wall,
        "server_cpu_per_100k": (server_cpu(server) - cpu_before) / added * 100_000,
        "lag_median_s": None,
        "lag_max_s": None,
        "read_back": read_back(uri, [run_hash])[run_hash],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--values", type=int, default=100_000, help="scalars each job logs")
    parser.add_argument(
        "--paced",
        type=float,
        default=500.0,
        help="after the flat-out workloads, 8 jobs logging this many values a second each (0: none)",
    )
    parser.add_argument("--no-sync", action="store_true")
    parser.add_argument(
        "--resume-points", type=int, default=400_000, help="the server run's size before a resume (0: none)"
    )
    args = parser.parse_args()
    # a SIGTERM (a timeout, a CI cancel) ends the benchmark through ``finally``: its server goes too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="tracelet-team-bench-"))
    server, uri = start_server(work / "server")
    print(f"{os.cpu_count()} cores; {args.values:,} values a job", flush=True)
    print(
        "| workload | values | loop s | wall s | values/s | lag median s | lag max s "
        "| server CPU s / 100k | read back |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    try:
        for jobs in args.jobs:
            show(run_jobs(uri, jobs, args.values, work, server))
        if args.paced:
            # a team's pace rather than a flood: the lag is what a user watching the UI sees
            show(run_jobs(uri, 8, min(args.values, int(args.paced * 30)), work, server, pace=args.paced))
        if not args.no_sync:
            show(run_sync(uri, args.values, work, server))
        if args.resume_points:
            show(run_resume(uri, args.resume_points, work, server))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def show(row: dict) -> None:
    """One table row, printed as soon as its workload is done."""

    def shown(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print(
        f"| {row['workload']} | {row['values']:,} | {shown(row['loop_s'])} | {row['wall_s']:.2f} | "
        f"{row['values_per_s']:,.0f} | {shown(row['lag_median_s'])} | {shown(row['lag_max_s'])} | "
        f"{row['server_cpu_per_100k']:.2f} | {row['read_back']:,} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
