#!/usr/bin/env bash
# A Hydra sweep: each job of `-m` runs in a folder of its own (hydra.job.chdir=True) and makes its own
# AIM run in one shared repo, with its config as params and its artifact read from its folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

python "$here/hydra_job/train.py" -m lr=0.1,0.2,0.3 hydra.job.chdir=True

python - <<'PY'
import aim

for run in sorted(aim.Repo("aim").iter_runs(), key=lambda run: run.name):
    print(f"{run.name}: lr={run['hparams']['lr']}, artifacts {sorted(run.artifacts)}, status {run['status']}")
PY
echo "To browse them: aim up --repo aim"
