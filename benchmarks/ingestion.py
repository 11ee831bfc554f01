"""Durable ingestion rate: N scalars into AIM, ours against ``aim.Run.track`` value by value.

For each writer it measures the time of the logging loop (the caller's side), the time from the last
call until everything is durable (``flush()``), and the rate over both. Afterwards it counts the
values through ``aim.Repo.query_metrics`` so a fast but lossy writer cannot pass.

    python benchmarks/ingestion.py [--values 1000000] [--series 8] [--writers process,thread,sync]

With ``--remote-uri aim://host:53800`` both write to that ``aim server`` instead of a local repo.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def log_with_aim(repo: str, values: int, series: int) -> tuple[float, float, str]:
    import aim

    run = aim.Run(repo=repo, system_tracking_interval=None, log_system_params=False)
    names = [f"metric_{i}" for i in range(series)]
    context = {"subset": "train"}
    start = time.perf_counter()
    for index in range(values):
        run.track(float(index), name=names[index % series], step=index // series, context=context)
    loop = time.perf_counter() - start
    if run.repo.is_remote_repo:  # aim's client queues a server's writes: durable once that queue is empty
        run.repo._client.get_queue().wait_for_finish()
    durable = time.perf_counter() - start - loop  # locally Run.track writes as it goes: about 0
    run_hash = run.hash
    run.close()
    return loop, durable, run_hash


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux's /proc; ``None`` elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_with_tracelet(
    repo: str, values: int, series: int, writer: str, cpu: dict[str, float | None]
) -> tuple[float, float, str]:
    """Times the loop and the wait for durability; ``cpu`` gets the trainer's and the writer
    process's CPU seconds over both."""
    import tracelet_callbacks as tracelet

    where = {"remote_uri": repo} if repo.startswith("aim://") else {"repo_path": repo}
    exp = tracelet.Experiment(writer=writer, system_tracking_interval=None, **where).open()
    run_hash = exp.hash  # waits for the writer to have opened the run, outside the timed part
    tags = [f"train/metric_{i}" for i in range(series)]
    log_metric = exp.log_metric
    pids = {"trainer": os.getpid()}
    proc = getattr(exp._sink, "_proc", None)  # the writer process serving this run (writer="process")
    if proc is not None:
        pids["writer process"] = proc.pid
    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    start = time.perf_counter()
    for index in range(values):
        log_metric(tags[index % series], float(index), index // series)
    loop = time.perf_counter() - start
    if "remote_uri" in where:
        # flush() answers for the local spool; the server has everything once close() returns (it
        # waits for the forwarder while the server takes data; the run is then closed and indexed)
        exp.close()
        durable = time.perf_counter() - start - loop
    else:
        exp.flush()
        durable = time.perf_counter() - start - loop
        for who, pid in pids.items():
            now, then = cpu_seconds(pid), before[who]
            cpu[who] = None if now is None or then is None else now - then
        exp.close()
    return loop, durable, run_hash


def count(repo: str, run_hash: str) -> int:
    import aim

    from tracelet_callbacks.sink.storage import index_run

    error = index_run(aim.Repo.from_path(repo), run_hash)  # aim's own runs wait for `aim up`
    if error:
        print(error)
    total = 0
    for metric in aim.Repo(repo).query_metrics(f"run.hash == {run_hash!r}").iter():
        steps, _ = metric.data.items_list()
        total += len(steps)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--aim-values", type=int, default=None, help="fewer for Run.track (default: same)")
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--writers", default="process,thread,sync")
    parser.add_argument("--remote-uri", default=None, help="an aim server (aim://host:port) to write to")
    args = parser.parse_args()

    import aim

    folder = args.remote_uri or tempfile.mkdtemp(prefix="tracelet-ingest-")
    if not args.remote_uri:
        aim.Repo.from_path(folder, init=True)
    rows = []
    aim_values = args.aim_values or args.values
    loop, durable, run_hash = log_with_aim(folder, aim_values, args.series)
    rows.append(("aim Run.track, value by value", aim_values, loop, durable, count(folder, run_hash)))
    spent: dict[str, dict[str, float | None]] = {}
    for writer in args.writers.split(","):
        cpu = spent[writer] = {}
        loop, durable, run_hash = log_with_tracelet(folder, args.values, args.series, writer, cpu)
        rows.append((f"tracelet writer={writer}", args.values, loop, durable, count(folder, run_hash)))

    reference = rows[0][1] / (rows[0][2] + rows[0][3])
    # the machine's load (1, 5, 15 minutes) as the runs end: a busy machine slows every writer
    load = ", ".join(f"{average:.2f}" for average in os.getloadavg())
    print(f"{args.series} series, repo {folder}, load average {load} on {os.cpu_count()} CPUs")
    columns = ("values", "loop s", "last->durable s", "values/s", "x Run.track", "readable")
    print(f"{'what':32} " + " ".join(f"{name:>15}" for name in columns))
    for label, values, loop, durable, readable in rows:
        rate = values / (loop + durable)
        cells = (f"{values:d}", f"{loop:.2f}", f"{durable:.3f}", f"{rate:.0f}", f"{rate / reference:.2f}")
        print(f"{label:32} " + " ".join(f"{cell:>15}" for cell in (*cells, f"{readable:d}")))
    for writer, cpu in spent.items():  # what each value cost, wherever it ran (a loaded machine hides it)
        costs = [
            f"{who} {1e6 * seconds / args.values:.2f}" for who, seconds in cpu.items() if seconds is not None
        ]
        if costs:
            print(f"writer={writer}: CPU µs a value, from the first call until durable: " + ", ".join(costs))


if __name__ == "__main__":
    os.environ.setdefault("TRACELET_SYSTEM_TRACKING_INTERVAL", "off")
    main()
