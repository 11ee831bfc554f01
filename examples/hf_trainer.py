"""A Hugging Face ``Trainer`` logged to AIM with one callback: ``TraceletCallback``.

A tiny BERT (random weights, built from a config: nothing is downloaded) learns a toy task on CPU.
The callback stores the ``TrainingArguments``, the model config and parameter counts as params, the
train loss / learning rate / grad norm per step (subset ``train``), eval metrics (subset ``val``), and
the end-of-training figures under the run param ``summary``. The run is closed when ``train()``
returns, so it is queryable at once; the ``evaluate()`` afterwards continues the same run.

    python examples/hf_trainer.py
"""

import os

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import tracelet_callbacks as tracelet


class ToyTask(torch.utils.data.Dataset):
    """Label 1 when token 1 occurs in the sequence."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, 32, (n, 8), generator=generator)
        self.ids[: n // 2, 3] = 1
        self.labels = (self.ids == 1).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


def main() -> None:
    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        num_labels=2,
    )
    args = TrainingArguments(
        output_dir="hf_output",
        run_name="tiny-bert",
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        log_level="error",
    )
    callback = tracelet.TraceletCallback(experiment_name="hf_example", tags={"task": "toy"})
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=args,
        train_dataset=ToyTask(64, seed=0),
        eval_dataset=ToyTask(32, seed=1),
        callbacks=[callback],
    )
    callback.experiment.track(0.0, name="warmup_marker", step=0)  # the run is open before training
    trainer.train()
    metrics = trainer.evaluate()  # lands in the same run, subset "val"
    callback.close()  # otherwise the run is closed when the process exits

    print(f"run {callback.run_hash}: final eval loss {metrics['eval_loss']:.4f}")
    print(f"Open the run with: aim up --repo {os.path.abspath('.')}  (then http://localhost:43800)")


if __name__ == "__main__":
    main()
