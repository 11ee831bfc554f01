"""Peak memory while logging N scalars as fast as possible (the writer must push back, not grow).

Runs the logging loop in a fresh process per writer mode and reports that process's peak RSS growth
over its RSS just before the loop (``ru_maxrss``), plus the writer process's own peak for
``writer="process"``, and checks every value arrived.

    python benchmarks/memory.py [--values 5000000] [--writers process,thread]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from ingestion import count  # the same read-back, run as `python benchmarks/memory.py`

CHILD = r"""
import json, resource, sys, time
import psutil
import tracelet_callbacks as tracelet

values, writer, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
exp = tracelet.Experiment(repo_path=folder, writer=writer, system_tracking_interval=None).open()
run_hash = exp.hash
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
log_metric = exp.log_metric
writer_peak = 0
worker = getattr(exp._sink, "_proc", None)
start = lap = time.perf_counter()
rates = []  # values per second over each million: does the pace hold as the run grows?
for index in range(values):
    log_metric("train/metric_%d" % (index % 8), float(index), index // 8)
    if worker is not None and index % 200_000 == 0:
        writer_peak = max(writer_peak, psutil.Process(worker.pid).memory_info().rss)
    if index % 1_000_000 == 999_999:
        now = time.perf_counter()
        rates.append(round(1_000_000 / (now - lap)))
        lap = now
exp.flush()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
exp.close()
print(json.dumps({"hash": run_hash, "growth_mb": (peak - before) / 1024, "seconds": seconds,
                  "writer_peak_mb": writer_peak / 2**20, "rates": rates}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=5_000_000)
    parser.add_argument("--writers", default="process,thread")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="tracelet-memory-")
    env = dict(os.environ, TRACELET_SYSTEM_TRACKING_INTERVAL="off")
    print(f"{args.values} scalars, 8 series, folder {folder}")
    print(f"{'writer':10} {'seconds':>9} {'peak RSS growth MB':>19} {'writer peak MB':>15} {'readable':>10}")
    for writer in args.writers.split(","):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.values), writer, folder],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        readable = count(folder, result["hash"])
        writer_peak = f"{result['writer_peak_mb']:.0f}" if writer == "process" else "-"
        seconds, growth = result["seconds"], result["growth_mb"]
        print(f"{writer:10} {seconds:9.1f} {growth:19.1f} {writer_peak:>15} {readable:10d}")
        print(f"{'':10} values/s over each million: {', '.join(map(str, result['rates']))}")


if __name__ == "__main__":
    main()
