#!/usr/bin/env bash
# Bring TensorBoard event files you already have into AIM, without TensorFlow:
#   pip install "tracelet-callbacks[tensorboard]"
#   bash examples/import_tensorboard.sh [LOGDIR]      # LOGDIR: runs/ by default
# Every folder under LOGDIR that holds event files becomes one AIM run in ./aim_repo.
set -euo pipefail
logdir="${1:-runs}"
if [ ! -d "$logdir" ]; then  # nothing to import yet: make event files with a plain SummaryWriter
    python -c "
import os, sys
from torch.utils.tensorboard import SummaryWriter
for name, rate in (('baseline', 0.9), ('wider', 0.8)):
    writer = SummaryWriter(os.path.join(sys.argv[1], name))
    for step in range(50):
        writer.add_scalar('train/loss', rate ** step, step)
    writer.close()" "$logdir"
fi

python -m tracelet_callbacks import-tensorboard "$logdir" --repo ./aim_repo
python -m tracelet_callbacks import-tensorboard "$logdir" --repo ./aim_repo  # again: adds nothing
# The console script does the same; into a shared server, under an experiment of your choosing:
#   tracelet-callbacks import-tensorboard runs/ --remote aim://aim.example.com:53800 --experiment legacy
echo "To browse it: aim up --repo ./aim_repo  (http://localhost:43800)"
