"""A tiny CPU model and datamodule for the Lightning tests, for either flavour, and a script mode.

``python tests/lightning_helpers.py --repo R --experiment E --max-epochs N [--ckpt PATH]`` fits in a
fresh process (the resume test) and prints ``HASH <run hash>`` and ``STEPS <global step>``.
"""

from __future__ import annotations

import argparse
import types
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

TRAIN_BATCHES = 4  # batches per training epoch
BATCH = 8


def _data(seed: int, batches: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH, 4, generator=generator)
    return TensorDataset(x, (x.sum(dim=1, keepdim=True) > 0).float())


def classes(pl: types.ModuleType) -> tuple[type, type]:
    """``(TinyModule, TinyData)`` built on ``pl`` (``lightning.pytorch`` or ``pytorch_lightning``)."""

    class TinyModule(pl.LightningModule):
        """Linear(4, 3) -> Linear(3, 1), the first layer frozen: 19 parameters, 4 trainable."""

        def __init__(self, lr: float = 0.05, hidden: int = 3, fail_at_step: int = -1):
            super().__init__()
            self.save_hyperparameters()
            self.body = nn.Linear(4, hidden)
            self.body.requires_grad_(False)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

        def _loss(self, batch: Any) -> torch.Tensor:
            x, y = batch
            return nn.functional.binary_cross_entropy_with_logits(self(x), y)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == self.hparams.fail_at_step:
                raise RuntimeError(f"boom at step {self.global_step}")
            loss = self._loss(batch)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.log("train/step_seen", float(self.global_step))
            return loss

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("val_loss", self._loss(batch))
            self.log("val/acc", 0.5 + 0.25 * dataloader_idx)

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self.log("test_acc", 0.75)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.Adam(self.head.parameters(), lr=self.hparams.lr, weight_decay=0.01)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    class TinyData(pl.LightningDataModule):
        def __init__(self, batch_size: int = BATCH, val_loaders: int = 1):
            super().__init__()
            self.save_hyperparameters()

        def train_dataloader(self) -> DataLoader:
            return DataLoader(_data(0, TRAIN_BATCHES), batch_size=self.hparams.batch_size)

        def val_dataloader(self) -> Any:
            loaders = [DataLoader(_data(1 + i, 2), batch_size=BATCH) for i in range(self.hparams.val_loaders)]
            return loaders[0] if len(loaders) == 1 else loaders

        def test_dataloader(self) -> DataLoader:
            return DataLoader(_data(9, 2), batch_size=BATCH)

    return TinyModule, TinyData


def trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Quiet, small, CPU: what every test's Trainer takes."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--max-epochs", type=int, required=True)
    parser.add_argument("--ckpt", default=None)
    args = parser.parse_args()

    import lightning.pytorch as pl

    from tracelet_callbacks import TraceletAimLogger

    module, data = classes(pl)
    logger = TraceletAimLogger(
        repo_path=args.repo, experiment_name=args.experiment, system_tracking_interval=None
    )
    checkpoint = pl.callbacks.ModelCheckpoint(save_last=True, save_top_k=-1)
    trainer = pl.Trainer(
        logger=logger,
        callbacks=[checkpoint],
        **trainer_kwargs(max_epochs=args.max_epochs, enable_checkpointing=True),
    )
    trainer.fit(module(), datamodule=data(), ckpt_path=args.ckpt)
    print("HASH", logger.version)
    print("STEPS", trainer.global_step)
    print("CKPT", checkpoint.last_model_path)


if __name__ == "__main__":
    main()
