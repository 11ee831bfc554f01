"""Tiny random Hugging Face models and synthetic data for the adapter tests (no hub download)."""

from __future__ import annotations

from typing import Any

import torch

VOCAB, LENGTH = 32, 8


class TokenDataset(torch.utils.data.Dataset):
    """``n`` random sequences whose label is whether token 1 appears: learnable, deterministic."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, VOCAB, (n, LENGTH), generator=generator)
        self.ids[: n // 2, 0] = 1
        self.labels = (self.ids == 1).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[index],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[index],
        }


def tiny_bert(seed: int = 0, fail_at: int | None = None) -> Any:
    """A 1-layer BERT classifier with hidden size 16, random weights; with ``fail_at``, its forward
    pass number ``fail_at`` raises ``RuntimeError`` (a training step that crashes)."""
    from transformers import BertConfig, BertForSequenceClassification

    class FailingBert(BertForSequenceClassification):
        calls = 0

        def forward(self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None) -> Any:
            self.calls += 1
            if self.calls == fail_at:
                raise RuntimeError(f"boom at step {fail_at}")
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return (BertForSequenceClassification if fail_at is None else FailingBert)(config)


class LazyNet(torch.nn.Module):
    """A model whose second layer has no parameters yet (``LazyLinear``: shaped at the first forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)
        self.lazy = torch.nn.LazyLinear(4)


class BrokenPeftNet(torch.nn.Module):
    """A model whose PEFT config cannot be read (as a half-converted adapter model)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)

    @property
    def peft_config(self) -> Any:
        raise RuntimeError("adapter config unreadable")


def tiny_args(output_dir: str, **overrides: Any) -> Any:
    """CPU ``TrainingArguments`` that log every step, report to no other integration, and stay quiet."""
    from transformers import TrainingArguments

    settings: dict[str, Any] = {
        "output_dir": output_dir,
        "max_steps": 4,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "save_strategy": "no",
        "dataloader_num_workers": 0,
        "seed": 0,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)
