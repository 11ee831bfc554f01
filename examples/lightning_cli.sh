#!/usr/bin/env bash
# LightningCLI builds TraceletAimLogger from a YAML file, or from flags, and the parsed configuration
# is stored with the run (run["config"]) beside the module's hparams.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# from the YAML file (its trainer.logger section)
python "$here/cli/train.py" fit --config "$here/cli/config.yaml" --trainer.default_root_dir=runs/yaml

# from flags alone
python "$here/cli/train.py" fit \
    --trainer.logger=tracelet_callbacks.TraceletAimLogger \
    --trainer.logger.repo_path=aim --trainer.logger.experiment_name=cli --trainer.logger.run_name=from-flags \
    --trainer.max_epochs=1 --trainer.log_every_n_steps=1 --trainer.enable_progress_bar=false \
    --trainer.default_root_dir=runs/flags --model.lr=0.2

python - <<'PY'
import aim

for run in aim.Repo("aim").iter_runs():
    print(f"{run.name}: lr={run['hparams']['lr']}, max_epochs={run['config']['trainer']['max_epochs']}")
PY
echo "To browse them: aim up --repo aim"
