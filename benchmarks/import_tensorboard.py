"""TensorBoard import rate and memory: ``import-tensorboard`` on N scalars, against reading alone.

Writes N scalars with ``torch.utils.tensorboard.SummaryWriter`` (10 tags ``train/metric_<i>``, one
event per value, N / 10 steps), then imports the folder in a fresh process the way a user does,
``python -m tracelet_callbacks import-tensorboard LOGDIR --repo REPO``, into a fresh AIM repo. Beside
it, each in a fresh process of its own: the same file read by TensorBoard's ``EventFileLoader`` alone
(read only: what part of the import is reading), the importer's own record reader alone, and aim's
tracker loop without TensorFlow (``EventFileLoader`` + ``Run.track`` per value: what
``aim.ext.tensorboard_tracker`` does for scalars; ``aim convert tensorboard`` itself needs TensorFlow).

Wall seconds are the whole process (start, imports, reading, writing, closing). Peak RSS is each
process's high-water mark (``VmHWM``, polled from here every 50 ms), for the process itself and,
separately, the largest of its children (the import's writer process). Not ``ru_maxrss`` of the
children: Linux carries the forking process's peak into the child's at ``exec``, so it would report
this benchmark's own size (or the importer's, for its writer). Not a sum over the tree either: a
``git`` the writer forks shows the writer's pages as its own until it ``exec``s.

Afterwards every value is read back through ``aim.Repo.query_metrics`` and compared with what was
written. The issue's goal: at least 40,000 values/s and under 300 MB peak RSS.

    python benchmarks/import_tensorboard.py [--values 1000000] [--logdir DIR] [--aim-values 100000]

``--logdir`` keeps the event folder between runs (written once, reused while ``--values`` matches).
``Run.track`` gets the first 100,000 values unless told otherwise (a million take it over ten
minutes); its rates are per value, so its row compares all the same.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

TAGS = 10
MARKER = "benchmark.json"  # in the log dir: what was written there, to reuse it only when it matches

# Each child prints one JSON line last: {"values": read or tracked, "hash": the aim run, if any}.
READ_WITH_LOADER = r"""
import json, os, sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

values = 0
for folder, _dirs, files in sorted(os.walk(sys.argv[1])):
    for name in sorted(f for f in files if "tfevents" in f):
        for event in EventFileLoader(os.path.join(folder, name)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    t = value.tensor
                    number = t.float_val[0] if t.float_val else tensor_util.make_ndarray(t).item()
                    values += 1
print(json.dumps({"values": values}))
"""

READ_WITH_IMPORTER = r"""
import json, os, sys
from tensorboard.compat.proto import event_pb2
from tracelet_callbacks.integrations.tensorboard.events import read_records

values = 0
for folder, _dirs, files in sorted(os.walk(sys.argv[1])):
    for name in sorted(f for f in files if "tfevents" in f):
        for _end, data in read_records(os.path.join(folder, name)):
            event = event_pb2.Event.FromString(data)
            if event.HasField("summary"):
                for value in event.summary.value:
                    number = value.simple_value
                    values += 1
print(json.dumps({"values": values}))
"""

TRACK_WITH_AIM = r"""
import json, os, sys
import aim
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

logdir, repo, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = aim.Run(repo=repo, system_tracking_interval=None, log_system_params=False)
values = 0
for folder, _dirs, files in sorted(os.walk(logdir)):
    for name in sorted(f for f in files if "tfevents" in f):
        for event in EventFileLoader(os.path.join(folder, name)).Load():
            for value in event.summary.value:
                if values < limit and value.metadata.plugin_data.plugin_name == "scalars":
                    number = tensor_util.make_ndarray(value.tensor)  # as the tracker's create_ndarray
                    run.track(number.item(), name=value.tag, step=event.step)
                    values += 1
            if values >= limit:
                break
run_hash = run.hash
run.close()
print(json.dumps({"values": values, "hash": run_hash}))
"""


def write_logdir(logdir: str, values: int) -> float | None:
    """The event folder for ``values`` scalars under ``logdir/run``; the seconds ``SummaryWriter``
    took, or ``None`` when an earlier run's folder with the same values was reused."""
    marker = os.path.join(logdir, MARKER)
    wanted = {"values": values, "tags": TAGS}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as handle:
            if json.load(handle) == wanted:
                return None
        raise SystemExit(f"{logdir} holds a different benchmark folder; remove it or pass another --logdir")
    if os.path.isdir(logdir) and os.listdir(logdir):
        raise SystemExit(f"{logdir} is not empty and was not written by this benchmark")
    from torch.utils.tensorboard import SummaryWriter

    tags = [f"train/metric_{i}" for i in range(TAGS)]
    start = time.perf_counter()
    writer = SummaryWriter(log_dir=os.path.join(logdir, "run"))
    for index in range(values):
        writer.add_scalar(tags[index % TAGS], float(index), index // TAGS)
    writer.close()
    seconds = time.perf_counter() - start
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump(wanted, handle)
    return seconds


def _peak_rss(pid: int) -> int:
    """The peak RSS of ``pid`` so far in bytes: the kernel's own high-water mark (Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def measure(command: list[str]) -> dict:
    """Run ``command`` in a fresh process: its wall seconds, output and peak RSS (its own, and the
    largest of its children's)."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        peaks: dict[int, int] = {}
        done = threading.Event()

        def poll() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    pids = [proc.pid, *(child.pid for child in root.children(recursive=True))]
                except psutil.NoSuchProcess:
                    return
                for pid in pids:
                    peaks[pid] = max(peaks.get(pid, 0), _peak_rss(pid))
                done.wait(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        poller.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    own = peaks.pop(proc.pid, 0)
    return {
        "seconds": seconds,
        "stdout": stdout,
        "own_mb": own / 2**20,
        "children_mb": max(peaks.values(), default=0) / 2**20,
    }


def verify(repo: str, run_hash: str, values: int) -> tuple[int, int]:
    """(points read back through aim's API, points whose step or value differs from what was written)."""
    import aim
    import numpy as np
    from aim.sdk.types import QueryReportMode

    from tracelet_callbacks.sink.storage import index_run

    index_run(aim.Repo.from_path(repo), run_hash)  # aim's own runs are queryable once indexed
    found = wrong = 0
    for metric in aim.Repo(repo).query_metrics(f"run.hash == {run_hash!r}", QueryReportMode.DISABLED).iter():
        steps, (numbers, *_epochs_and_times) = metric.data.items_list()
        steps = np.asarray(steps, dtype=np.int64)
        tag = int(re.search(r"(\d+)$", metric.name).group(1))
        expected = (steps * TAGS + tag).astype(np.float32)  # SummaryWriter keeps float32
        found += len(steps)
        wrong += int(np.count_nonzero(np.asarray(numbers, dtype=np.float32) != expected))
        wrong += int(np.count_nonzero(steps >= -(-values // TAGS)))
    return found, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--logdir", default=None, help="keep the event folder here (written once)")
    parser.add_argument(
        "--aim-values", type=int, default=100_000, help="values for Run.track (the slowest); 0 skips it"
    )
    parser.add_argument("--keep", action="store_true", help="keep the AIM repos and events (printed)")
    args = parser.parse_args()

    logdir = args.logdir or tempfile.mkdtemp(prefix="tracelet-tb-events-")
    wrote = write_logdir(logdir, args.values)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(logdir) for f in fs)
    how = "reused" if wrote is None else f"SummaryWriter wrote it in {wrote:.1f} s"
    print(f"{args.values} scalars, {TAGS} tags, {size / 2**20:.1f} MB of events in {logdir} ({how})")

    repos = tempfile.mkdtemp(prefix="tracelet-tb-import-")
    try:
        compare(args, logdir, repos)
    finally:
        if args.keep:
            print(f"AIM repos kept in {repos}")
        else:
            shutil.rmtree(repos, ignore_errors=True)
            if args.logdir is None:  # a temporary event folder; --logdir keeps one for the next run
                shutil.rmtree(logdir, ignore_errors=True)


def compare(args: argparse.Namespace, logdir: str, repos: str) -> None:
    """Import, read and track into fresh repos under ``repos``; print the table and the verdict."""
    py = sys.executable
    rows = []  # (what, values, result, readable, wrong)

    repo = os.path.join(repos, "import")
    result = measure([py, "-m", "tracelet_callbacks", "import-tensorboard", logdir, "--repo", repo])
    hashes = re.findall(r"^\s+([0-9a-f]{24})\s", result["stdout"], flags=re.M)
    if len(hashes) != 1:
        raise SystemExit(f"expected one imported run, got:\n{result['stdout']}")
    said = re.search(r"\(([\d,]+) values/s\)", result["stdout"])
    readable, wrong = verify(repo, hashes[0], args.values)
    rows.append(("tracelet `import-tensorboard`", args.values, result, readable, wrong))

    for what, script in (
        ("`EventFileLoader` alone (read only)", READ_WITH_LOADER),
        ("importer's `read_records` alone (read only)", READ_WITH_IMPORTER),
    ):
        result = measure([py, "-c", script, logdir])
        rows.append((what, json.loads(result["stdout"].splitlines()[-1])["values"], result, None, None))

    aim_values = min(args.values, args.aim_values)
    if aim_values:
        repo = os.path.join(repos, "aim")
        import aim

        aim.Repo.from_path(repo, init=True)
        result = measure([py, "-c", TRACK_WITH_AIM, logdir, repo, str(aim_values)])
        line = json.loads(result["stdout"].splitlines()[-1])
        readable, wrong = verify(repo, line["hash"], args.values)
        what = "aim's tracker loop (`EventFileLoader` + `Run.track`)"
        rows.append((what, line["values"], result, readable, wrong))

    ours = rows[0][2]["seconds"]
    reference = rows[0][1] / ours
    print()
    print(
        "| what | values | wall s | values/s | x import rate | time per value vs import "
        "| peak RSS MB | children's peak RSS MB | readable back | wrong |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for what, values, result, readable, wrong in rows:
        seconds = result["seconds"]
        rate = values / seconds
        share = f"{seconds * args.values / values / ours:.0%}" if result is not rows[0][2] else "100%"
        children = f"{result['children_mb']:.0f}" if result["children_mb"] else "-"
        back = "-" if readable is None else f"{readable:,}"
        bad = "-" if wrong is None else f"{wrong:,}"
        print(
            f"| {what} | {values:,} | {seconds:.1f} | {rate:,.0f} | {rate / reference:.2f} | {share} "
            f"| {result['own_mb']:.0f} | {children} | {back} | {bad} |"
        )
    first = rows[0][2]
    print()
    print(
        f"import: the command's own rate {said.group(1) if said else '?'} values/s (its import pass, "
        "without the interpreter's start and the runs' close)"
    )
    rate = args.values / ours
    peak = max(first["own_mb"], first["children_mb"])
    print(
        f"goal: >= 40,000 values/s: {rate:,.0f} ({'met' if rate >= 40_000 else 'NOT met'}); "
        f"< 300 MB peak RSS per process: {peak:.0f} MB ({'met' if peak < 300 else 'NOT met'}); "
        f"every value back: {'yes' if rows[0][3] == args.values and not rows[0][4] else 'NO'}"
    )


if __name__ == "__main__":
    main()
