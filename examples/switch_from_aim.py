"""Switching from aim's own adapters is a change of import: the keywords stay as they were.

The two training jobs below were written for ``aim.pytorch_lightning.AimLogger`` and
``aim.hugging_face.AimCallback``, with aim's keyword names (``repo``, ``experiment``,
``system_tracking_interval``, ``log_system_params``, ``capture_terminal_logs``). Only the import
lines changed. The script then reads both runs back with aim's own API.

    python examples/switch_from_aim.py
"""

import os

import aim
import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

# was: from aim.pytorch_lightning import AimLogger
from tracelet_callbacks import TraceletAimLogger as AimLogger

# was: from aim.hugging_face import AimCallback
from tracelet_callbacks import TraceletCallback as AimCallback

REPO = os.path.abspath("switched")


class Regressor(pl.LightningModule):
    def __init__(self, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def lightning_job() -> str:
    x = torch.randn(64, 4)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16)
    logger = AimLogger(
        repo=REPO,
        experiment="switched-lightning",
        system_tracking_interval=None,
        log_system_params=False,
        capture_terminal_logs=False,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), data)
    return logger.version


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        ids = torch.randint(0, 32, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": torch.tensor(i % 2)}


def hf_job() -> str:
    config = BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    callback = AimCallback(repo=REPO, experiment="switched-hf", system_tracking_interval=None)
    args = TrainingArguments(
        output_dir=os.path.abspath("hf-out"),
        max_steps=4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = Trainer(
        model=BertForSequenceClassification(config), args=args, train_dataset=Tokens(), callbacks=[callback]
    )
    trainer.train()
    return callback.experiment.hash


if __name__ == "__main__":
    runs = {"switched-lightning": lightning_job(), "switched-hf": hf_job()}
    repo = aim.Repo(REPO)
    for experiment, run_hash in runs.items():
        run = aim.Run(run_hash, repo=REPO, read_only=True)
        found = repo.query_metrics(f"metric.name == 'loss' and run.hash == '{run_hash}'")
        points = sum(len(metric.values.values_list()) for metric in found.iter())
        assert run.experiment == experiment and points > 0, (experiment, points)
        print(f"{experiment}: run {run_hash}, {points} loss points, status {run['status']}")
    print(f"To browse them: aim up --repo {REPO}  (http://localhost:43800)")
