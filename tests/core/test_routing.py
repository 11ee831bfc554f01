"""The routing table: one tag -> (metric name, context) mapping shared by every adapter."""

from __future__ import annotations

from typing import Any

import pytest

from tracelet_callbacks.core.routing import DEFAULT_TABLE, Route, RoutingTable, make_table, route

ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    # subset prefixes, both separators
    ("train/loss", "loss", {"subset": "train"}),
    ("train_loss", "loss", {"subset": "train"}),
    ("training/loss", "loss", {"subset": "train"}),
    ("val_loss", "loss", {"subset": "val"}),
    ("val/loss", "loss", {"subset": "val"}),
    ("eval_loss", "loss", {"subset": "val"}),  # Hugging Face Trainer
    ("eval/loss", "loss", {"subset": "val"}),
    ("valid/x", "x", {"subset": "val"}),
    ("validation/x", "x", {"subset": "val"}),
    ("validation_x", "x", {"subset": "val"}),
    ("test_acc", "acc", {"subset": "test"}),
    ("test/acc", "acc", {"subset": "test"}),
    # only the first part names the subset; the rest of the path is the metric
    ("train/loss/total", "loss/total", {"subset": "train"}),
    # Lightning granularity suffixes
    ("loss_step", "loss", {"granularity": "step"}),
    ("loss_epoch", "loss", {"granularity": "epoch"}),
    ("train_loss_step", "loss", {"subset": "train", "granularity": "step"}),
    ("val/acc_epoch", "acc", {"subset": "val", "granularity": "epoch"}),
    # Lightning's multi-dataloader suffix
    ("val_acc_epoch/dataloader_idx_1", "acc", {"subset": "val", "granularity": "epoch", "dataloader": 1}),
    ("val_acc/dataloader_idx_0", "acc", {"subset": "val", "dataloader": 0}),
    ("loss/dataloader_idx_2", "loss", {"dataloader": 2}),
    # no known subset: name kept, empty context
    ("batch/loss", "batch/loss", {}),
    ("epoch/loss", "epoch/loss", {}),
    # the PyTorch TensorBoard tutorial's suffix spelling
    ("Loss/train", "Loss", {"subset": "train"}),
    ("Loss/validation", "Loss", {"subset": "val"}),
    ("accuracy/test", "accuracy", {"subset": "test"}),
    # suffix spelling logged through Lightning's on_step=True
    ("Loss/train_step", "Loss", {"subset": "train", "granularity": "step"}),
]


@pytest.mark.parametrize(("tag", "name", "context"), ROUTES, ids=[r[0] for r in ROUTES])
def test_default_routes(tag: str, name: str, context: dict[str, Any]) -> None:
    found = route(tag)
    assert found == Route(name, context)
    assert isinstance(found.context, dict)


def test_context_keys_have_a_fixed_order() -> None:
    # the same context however the tag was spelled, so AIM sees one series
    assert list(route("val_acc_epoch/dataloader_idx_1").context) == ["subset", "granularity", "dataloader"]


KEEP_WHOLE = [
    "global_step",
    "epoch",
    "step",
    "learning_rate",
    "lr-Adam",
    "trainer",
    "training",
    "train",
    "val",
    "test",
    "valid",
    "num_train_epochs",
    "max_epoch",
    "trainer/global_step",  # W&B / Lightning spelling: a quantity, not loss at step granularity
    "batch/global_step",
]


@pytest.mark.parametrize("tag", KEEP_WHOLE)
def test_names_that_must_not_split(tag: str) -> None:
    assert route(tag) == Route(tag, {})


def test_subset_prefix_then_kept_name() -> None:
    # HF logs train/global_step: the subset is split off but global_step itself is not cut
    assert route("train/global_step") == Route("global_step", {"subset": "train"})


@pytest.mark.parametrize("tag", ["train/loss", "val_acc_epoch/dataloader_idx_1", "batch/loss"])
def test_returned_contexts_are_fresh(tag: str) -> None:
    first = route(tag)
    expected = dict(first.context)
    first.context["mutated"] = True
    second = route(tag)
    assert second.context == expected
    assert second.context is not first.context
    assert "mutated" not in DEFAULT_TABLE(tag).context


def test_exact_route_contexts_are_fresh() -> None:
    table = RoutingTable(exact={"foo": ("bar", {"a": 1})})
    table("foo").context["a"] = 99
    assert table("foo") == Route("bar", {"a": 1})


def test_custom_table_exact_subsets_and_rules() -> None:
    def rule(tag: str) -> tuple[str, dict[str, Any]] | None:
        return ("custom", {"rule": tag}) if tag.startswith("r_") else None

    table = RoutingTable(
        exact={"foo": ("bar", {"a": 1}), "baz": "qux", "train/loss": Route("overridden", {})},
        subsets={"DEV": "val"},
        rules=[rule],
    )
    assert table("foo") == Route("bar", {"a": 1})
    assert table("baz") == Route("qux", {})
    assert table("train/loss") == Route("overridden", {})  # exact wins over the defaults
    assert table("r_x") == Route("custom", {"rule": "r_x"})
    assert table("dev/f1") == Route("f1", {"subset": "val"})  # subset words match case-insensitively
    assert table("val_loss") == Route("loss", {"subset": "val"})  # defaults still apply
    # the extra subset word does not leak into the default table
    assert route("dev/f1") == Route("dev/f1", {})


def test_rule_that_returns_none_falls_through() -> None:
    calls: list[str] = []

    def rule(tag: str) -> None:
        calls.append(tag)

    table = RoutingTable(rules=[rule])
    assert table("val_loss") == Route("loss", {"subset": "val"})
    assert calls == ["val_loss"]


def test_disabled_table_keeps_names_but_honours_exact() -> None:
    table = RoutingTable(exact={"a": "b"}, enabled=False)
    assert table("train/loss") == Route("train/loss", {})
    assert table("a") == Route("b", {})


@pytest.mark.parametrize("tag", ["train/loss", "val_acc_epoch/dataloader_idx_1", "loss_step"])
def test_make_table_false_keeps_names(tag: str) -> None:
    assert make_table(False)(tag) == Route(tag, {})


def test_make_table_defaults_and_shortcuts() -> None:
    assert make_table(None) is DEFAULT_TABLE
    assert make_table(True) is DEFAULT_TABLE
    custom = RoutingTable(subsets={"dev": "val"})
    assert make_table(custom) is custom
    assert make_table({"loss": ("objective", {"k": 1})})("loss") == Route("objective", {"k": 1})
    assert make_table(lambda tag: Route("x", {}) if tag == "y" else None)("y") == Route("x", {})
    assert make_table(lambda tag: None)("val_loss") == Route("loss", {"subset": "val"})


@pytest.mark.parametrize("bad", [3, 1.5, "train", ["a"]])
def test_make_table_rejects_other_types(bad: Any) -> None:
    with pytest.raises(TypeError, match=type(bad).__name__):
        make_table(bad)
