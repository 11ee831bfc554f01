"""The translator, observed through RecordingSink: routing, conversion, the skip-or-raise policy."""

from __future__ import annotations

import io
import os
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest

from tracelet_callbacks.core import records as rec
from tracelet_callbacks.core.params import REDACTED
from tracelet_callbacks.core.translator import Translator, artifact_names
from tracelet_callbacks.errors import TraceletValueError, TraceletWarning
from tracelet_callbacks.testing import RecordingSink


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def tr(sink: RecordingSink) -> Translator:
    return Translator(sink)


def _tracelet_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TraceletWarning)]


# -- scalars ----------------------------------------------------------------------------------------


def test_scalar_routed_with_int_step_and_epoch(tr: Translator, sink: RecordingSink) -> None:
    assert tr.scalar("train/loss", np.float32(0.5), step=np.int64(3), epoch=np.int32(1)) is True
    (record,) = sink.records
    assert isinstance(record, rec.Scalar)
    assert (record.name, record.value, record.step, record.epoch) == ("loss", 0.5, 3, 1)
    assert record.context == {"subset": "train"}
    assert type(record.step) is int and type(record.epoch) is int
    assert type(record.value) is float


def test_scalar_float_step_becomes_int_and_none_stays_none(tr: Translator, sink: RecordingSink) -> None:
    tr.scalar("val_loss", 1, step=7.0)
    tr.scalar("val_loss", 2)
    assert sink.series("loss", subset="val") == [(7, 1.0), (None, 2.0)]
    assert type(sink.records[0].step) is int


def test_same_quantity_same_series_across_spellings(tr: Translator, sink: RecordingSink) -> None:
    tr.scalar("val_loss", 0.3, step=1)  # Lightning
    tr.scalar("eval_loss", 0.2, step=2)  # Hugging Face
    tr.scalar("val/loss", 0.1, step=3)  # TensorBoard
    assert sink.series("loss", subset="val") == [(1, 0.3), (2, 0.2), (3, 0.1)]


def test_base_and_call_context_merge(sink: RecordingSink) -> None:
    tr = Translator(sink, context={"rank": 1})
    tr.scalar("val_loss", 1.0, context={"extra": "x"})
    assert sink.records[0].context == {"rank": 1, "subset": "val", "extra": "x"}


def test_routing_false_keeps_names(sink: RecordingSink) -> None:
    Translator(sink, routing=False).scalar("train/loss", 1.0)
    assert (sink.records[0].name, sink.records[0].context) == ("train/loss", {})


def test_nan_and_inf_are_recorded(tr: Translator, sink: RecordingSink) -> None:
    tr.scalars({"a": float("nan"), "b": np.float32("inf")})
    values = [r.value for r in sink.scalars()]
    assert np.isnan(values[0]) and np.isinf(values[1])


class BatchSink(RecordingSink):
    """Also remembers how the records were grouped into submit calls."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[rec.Record]] = []

    def submit(self, records: list[rec.Record]) -> None:
        self.batches.append(list(records))
        super().submit(records)


def test_scalars_submits_one_batch() -> None:
    sink = BatchSink()
    values = {"train/loss": 1.0, "val_acc": np.array(0.9), "lr": 3e-4}
    Translator(sink).scalars(values, step=np.int64(5), epoch=2)
    assert len(sink.batches) == 1
    assert [(r.name, r.context, r.step, r.epoch) for r in sink.batches[0]] == [
        ("loss", {"subset": "train"}, 5, 2),
        ("acc", {"subset": "val"}, 5, 2),
        ("lr", {}, 5, 2),
    ]


def test_bad_value_warns_once_per_tag(tr: Translator, sink: RecordingSink) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert tr.scalar("bad_tag", "not-a-number") is False
        tr.scalars({"bad_tag": None, "other_bad": np.arange(3)})
    messages = _tracelet_warnings(caught)
    assert len(messages) == 2
    assert "'bad_tag'" in messages[0] and "str" in messages[0]
    assert "'other_bad'" in messages[1] and "(3,)" in messages[1]
    assert sink.records == []


def test_bad_value_does_not_drop_the_rest(tr: Translator, sink: RecordingSink) -> None:
    with pytest.warns(TraceletWarning, match="'broken'"):
        tr.scalars({"train/loss": 1.0, "broken": object(), "val/loss": 2.0}, step=1)
    assert sink.series("loss", subset="train") == [(1, 1.0)]
    assert sink.series("loss", subset="val") == [(1, 2.0)]
    assert len(sink.records) == 2


def test_all_bad_scalars_submit_nothing(tr: Translator, sink: RecordingSink) -> None:
    with pytest.warns(TraceletWarning):
        tr.scalars({"x": None})
    assert sink.records == []


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.scalar("x", "a"),
        lambda t: t.scalars({"ok": 1.0, "x": None}),
        lambda t: t.histogram("h", []),
        lambda t: t.text("t", 3),
        lambda t: t.image("i", np.zeros((2, 2)), dataformats="CHW"),
        lambda t: t.audio("a", np.array([])),
        lambda t: t.params(5),
    ],
)
def test_strict_raises(sink: RecordingSink, call) -> None:
    tr = Translator(sink, strict=True)
    with pytest.raises(TraceletValueError) as info:
        call(tr)
    assert isinstance(info.value, ValueError)
    assert sink.records == []


# -- rich types -------------------------------------------------------------------------------------


def test_histogram_record(tr: Translator, sink: RecordingSink) -> None:
    tr.histogram("train/weights", [np.ones(3), np.zeros(2)], step=np.int64(2), bins=4)
    (record,) = sink.records
    assert isinstance(record, rec.Histogram)
    assert (record.name, record.context, record.step) == ("weights", {"subset": "train"}, 2)
    assert record.counts == [2.0, 0.0, 0.0, 3.0]
    assert record.bin_range == (0.0, 1.0)


def test_histogram_of_extreme_values_never_raises(tr: Translator, sink: RecordingSink) -> None:
    # logging never crashes training: at worst a warning, never numpy's ValueError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr.histogram("w", np.full(3, 1e20))
        tr.histogram("w2", np.array([-1e308, 1e308]))
    for record in sink.of(rec.Histogram):
        assert sum(record.counts) in (2, 3)


def test_histogram_raw_record(tr: Translator, sink: RecordingSink) -> None:
    tr.histogram_raw("h", np.float32(0), 10, [5, 10], [1, 2], step=3)
    (record,) = sink.of(rec.Histogram)
    assert (record.counts, record.bin_range, record.step) == ([1.0, 2.0], (0.0, 10.0), 3)


def test_image_records(tr: Translator, sink: RecordingSink) -> None:
    tr.image("val/sample", np.ones((3, 4, 5), dtype=np.float32), step=1, caption="c")
    tr.images("batch", np.zeros((2, 4, 5, 3), dtype=np.uint8), step=2, dataformats="NHWC")
    single, batch = sink.of(rec.Images)
    assert (single.name, single.context, single.step) == ("sample", {"subset": "val"}, 1)
    (image,) = single.images
    assert image.caption == "c"
    assert image.pixels.shape == (4, 5, 3) and image.pixels.dtype == np.uint8
    assert int(image.pixels.min()) == 255
    assert len(batch.images) == 2 and batch.step == 2


def test_text_record(tr: Translator, sink: RecordingSink) -> None:
    tr.text("val/prediction", "hello", step=4)
    (record,) = sink.of(rec.Text)
    assert (record.name, record.text, record.step) == ("prediction", "hello", 4)
    assert record.context == {"subset": "val"}


def test_audio_record(tr: Translator, sink: RecordingSink) -> None:
    tr.audio("clip", np.zeros(800), step=1, sample_rate=8000, caption="silence")
    (record,) = sink.of(rec.Audio)
    assert (record.sample_rate, record.caption, record.step) == (8000, "silence", 1)
    with wave.open(io.BytesIO(record.wav)) as wav:
        assert (wav.getframerate(), wav.getnframes()) == (8000, 800)


# -- run-level data ---------------------------------------------------------------------------------


def test_params_redacted(tr: Translator, sink: RecordingSink) -> None:
    stored = tr.params({"lr": 0.1, "hub_token": "plain", "db": "postgresql://u:pw@h/db"})
    assert stored == {"lr": 0.1, "hub_token": REDACTED, "db": f"postgresql://u:{REDACTED}@h/db"}
    (record,) = sink.of(rec.Params)
    assert (record.key, record.values, record.merge) == ("hparams", stored, True)
    assert "plain" not in repr(sink.records) and ":pw@" not in repr(sink.records)


def test_params_under_a_custom_key(tr: Translator, sink: RecordingSink) -> None:
    tr.params({"a": 1}, key="model")
    assert sink.records == [rec.Params("model", {"a": 1})]


def test_tags_mapping(tr: Translator, sink: RecordingSink) -> None:
    tr.tags({"team": "nlp", "seed": 1, "api_key": "plain"})
    params, tags = sink.records
    assert params == rec.Params("tags", {"team": "nlp", "seed": 1, "api_key": REDACTED})
    assert tags == rec.Tags(add=("team=nlp", "seed=1", f"api_key={REDACTED}"))


def test_tags_list_string_and_none(tr: Translator, sink: RecordingSink) -> None:
    tr.tags(["baseline", "v2"])
    tr.tags("solo")
    tr.tags(None)
    assert sink.records == [rec.Tags(add=("baseline", "v2")), rec.Tags(add=("solo",))]


def test_run_info(tr: Translator, sink: RecordingSink) -> None:
    tr.run_info()
    tr.run_info(name="r", experiment="e")
    assert sink.records == [rec.RunInfo(name="r", experiment="e")]


# -- artifacts --------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "a.pt").write_text("a")
    (tmp_path / "ckpt" / "sub" / "b.pt").write_text("b")
    return tmp_path


def test_artifact_file_names(files: Path) -> None:
    source = str(files / "model.bin")
    assert artifact_names(source) == [(source, "model.bin")]
    assert artifact_names(files / "model.bin", "models/") == [(source, "models/model.bin")]
    assert artifact_names(source, "a/./b") == [(source, "a/b/model.bin")]


def test_artifact_folder_expands_to_one_name_per_file(files: Path) -> None:
    pairs = artifact_names(files / "ckpt", "runs")
    assert sorted(name for _, name in pairs) == ["runs/ckpt/a.pt", "runs/ckpt/sub/b.pt"]
    assert all(os.path.isfile(source) for source, _ in pairs)


@pytest.mark.parametrize("bad", ["../x", "..", "a/../../x", "/abs/path", "//x", "a\\..\\..\\x", "s3://b/x"])
def test_artifact_path_cannot_leave_the_store(files: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="artifact store"):
        artifact_names(files / "model.bin", bad)


def test_missing_artifact(files: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        artifact_names(files / "nope")


def test_translator_artifact_submits_records(tr: Translator, sink: RecordingSink, files: Path) -> None:
    names = tr.artifact(files / "ckpt")
    assert sorted(names) == ["ckpt/a.pt", "ckpt/sub/b.pt"]
    assert sorted(r.name for r in sink.of(rec.Artifact)) == sorted(names)


def test_flush_and_close_reach_the_sink(tr: Translator, sink: RecordingSink) -> None:
    tr.flush()
    tr.close("failed")
    assert (sink.flushes, sink.closed_with) == (1, "failed")
