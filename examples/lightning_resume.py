"""Checkpoints as AIM artifacts, and a resumed ``fit`` that continues the same AIM run.

The first ``fit`` trains 2 epochs; ``log_model=True`` stores the best and the last checkpoint in the
run's artifact store when it ends. The second ``fit`` (a new trainer and a new logger, as after a
crash or in another job) resumes from ``last.ckpt`` up to 4 epochs: the logger reads which run wrote
that checkpoint (``tracelet-runs.json`` beside it) and continues that run, so its steps go on from
where they stopped. ``run_hash=...`` does the same explicitly.

    python examples/lightning_resume.py
"""

import os

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracelet_callbacks import TraceletAimLogger


class Classifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.net(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loader(seed: int) -> DataLoader:
    x = torch.randn(128, 4, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, (x.sum(dim=1) > 0).long()), batch_size=16)


def fit(max_epochs: int, ckpt_path=None) -> tuple[TraceletAimLogger, pl.callbacks.ModelCheckpoint]:
    logger = TraceletAimLogger(experiment_name="lightning-resume", log_model=True)
    checkpoint = pl.callbacks.ModelCheckpoint(monitor="val/acc", mode="max", save_last=True)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=[checkpoint],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), loader(0), loader(1), ckpt_path=ckpt_path)
    print(f"fit to epoch {max_epochs}: AIM run {logger.version}, global step {trainer.global_step}")
    return logger, checkpoint


def main() -> None:
    first, checkpoint = fit(2)
    resumed, _ = fit(4, ckpt_path=checkpoint.last_model_path)
    assert resumed.version == first.version, "the resumed fit should continue the first run"
    print(f"best and last checkpoints stored as artifacts: aim-artifacts/{first.version}/checkpoints/")

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"To browse it: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
