"""A Lightning job logged to AIM with one argument: ``Trainer(logger=TraceletAimLogger())``.

No logging code beyond ``self.log``: the run's params come from ``save_hyperparameters()``, the
trainer's settings, the optimizer and scheduler, and the parameter counts. ``train_loss`` and
``val_loss`` become one AIM metric ``loss`` in contexts ``subset=train`` / ``subset=val``; the test
metrics land in the same run. With the standalone ``pytorch_lightning`` package, import the logger
from ``tracelet_callbacks.pytorch_lightning`` instead.

    python examples/lightning_quickstart.py
"""

import os

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracelet_callbacks import TraceletAimLogger


class Regressor(pl.LightningModule):
    def __init__(self, hidden: int = 16, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()  # -> run["hparams"]
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def _loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss)  # metric "loss", context {"subset": "train"}
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        return [optimizer], [torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)]


def loader(seed: int, shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=generator)
    y = x[:, :1] * 2 - x[:, 1:2]
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=shuffle)


def main() -> None:
    pl.seed_everything(42)  # stored as run["trainer"]["seed"]
    logger = TraceletAimLogger(experiment_name="lightning-quickstart", run_name="regressor")
    trainer = pl.Trainer(
        max_epochs=5,
        logger=logger,
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Regressor()
    trainer.fit(model, loader(0, shuffle=True), loader(1))  # the run is closed and queryable here
    trainer.test(model, loader(2))  # ... and reopened for the test metrics

    repo = os.path.abspath(os.environ.get("TRACELET_AIM_REPO", "."))
    print(f"Logged AIM run {logger.version} (experiment {logger.name!r}).")
    print(f"To browse it: cd {repo} && aim up  (http://localhost:43800)")


if __name__ == "__main__":
    main()
