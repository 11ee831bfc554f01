"""A LightningCLI script: the logger, like everything else, comes from the YAML file or the flags.

python examples/cli/train.py fit --config examples/cli/config.yaml
"""

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel


class Model(BoringModel):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()  # -> run["hparams"]

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])  # metric "loss", context {"subset": "train"}
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    LightningCLI(Model, BoringDataModule)
