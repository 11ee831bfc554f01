"""A Hydra job that logs to AIM: one run per job, also under `-m` (multirun) with `hydra.job.chdir=True`.

python examples/hydra_job/train.py -m lr=0.1,0.01 hydra.job.chdir=True
"""

import hydra
from omegaconf import DictConfig

import tracelet_callbacks as tracelet


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    exp = tracelet.start_logging(exp_name=f"lr={cfg.lr}", project="hydra", config={"repo_path": cfg.repo})
    exp.log_params(cfg)  # the job's whole config, OmegaConf resolved -> run["hparams"]
    loss = 1.0
    for step in range(20):
        loss *= 1 - cfg.lr
        exp.log_metric("train/loss", loss, step)
    with open("model.txt", "w") as handle:  # in the job's own folder: Hydra changed into it
        handle.write(f"final loss {loss:.4f}\n")
    exp.log_artifact("model.txt")  # a relative path, read in this job's folder
    tracelet.stop_logging()


if __name__ == "__main__":
    main()
