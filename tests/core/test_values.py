"""Value conversion: numbers, histograms, images, audio and figures -> the plain data records hold."""

from __future__ import annotations

import io
import math
import wave
from typing import Any

import numpy as np
import pytest

from tracelet_callbacks.core.values import (
    Unsupported,
    audio_to_wav,
    figure_to_pixels,
    histogram_from_buckets,
    histogram_from_values,
    image_to_pixels,
    images_to_pixels,
    to_scalar,
)

# -- scalars ----------------------------------------------------------------------------------------


NUMBERS = [
    (3, 3.0), (2.5, 2.5), (True, 1.0), (False, 0.0), (np.float32(0.5), 0.5), (np.float64(-1.25), -1.25),
    (np.int64(7), 7.0), (np.uint8(255), 255.0), (np.bool_(True), 1.0), (np.array(1.5), 1.5),
    (np.array([2.0]), 2.0), (np.array([[3]], dtype=np.int32), 3.0),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), NUMBERS, ids=repr)
def test_to_scalar_numbers(value: Any, expected: float) -> None:
    result = to_scalar(value)
    assert type(result) is float
    assert result == expected


@pytest.mark.parametrize("value", [float("nan"), np.float32("nan"), np.array([np.nan])], ids=repr)
def test_to_scalar_keeps_nan(value: Any) -> None:
    assert math.isnan(to_scalar(value))


@pytest.mark.parametrize("value", [float("inf"), -math.inf, np.float64("inf"), np.array(-np.inf)], ids=repr)
def test_to_scalar_keeps_inf(value: Any) -> None:
    result = to_scalar(value)
    assert math.isinf(result)
    assert (result > 0) == (float(np.asarray(value)) > 0)


class _Thing:
    pass


UNSUPPORTED = [
    (None, "None"), ("0.1", "str"), (b"1", "bytes"), ([1.0], "list"), (_Thing(), "_Thing"),
    (np.array([1.0, 2.0]), "array of shape (2,)"), (np.zeros((2, 3)), "(2, 3)"), (np.array([]), "(0,)"),
    (np.complex64(1 + 2j), "complex"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "named"), UNSUPPORTED, ids=repr)
def test_to_scalar_unsupported_names_the_type(value: Any, named: str) -> None:
    with pytest.raises(Unsupported) as info:
        to_scalar(value)
    assert named in str(info.value)


# -- histograms -------------------------------------------------------------------------------------


def _check_histogram(result: tuple[list[float], tuple[float, float]], total: int, bins: int) -> None:
    counts, (lo, hi) = result
    assert len(counts) == bins
    assert sum(counts) == total
    assert all(isinstance(c, float) and c >= 0 for c in counts)
    assert lo < hi


def test_histogram_from_array() -> None:
    counts, span = histogram_from_values(np.arange(10), bins=5)
    assert counts == [2.0, 2.0, 2.0, 2.0, 2.0]
    assert span == (0.0, 9.0)


def test_histogram_from_list() -> None:
    _check_histogram(histogram_from_values([1, 2, 3, 4], bins=2), total=4, bins=2)


def test_histogram_from_list_of_arrays_like_parameters() -> None:
    parameters = [np.ones((2, 2)), np.zeros(3), np.full((1, 5), 0.5)]
    counts, span = histogram_from_values(parameters, bins=2)
    assert sum(counts) == 12
    assert span == (0.0, 1.0)
    assert counts == [3.0, 9.0]  # 0.5 falls in the upper half-open bin


def test_histogram_from_generator() -> None:
    counts, span = histogram_from_values((np.full(2, float(i)) for i in range(3)), bins=3)
    assert counts == [2.0, 2.0, 2.0]
    assert span == (0.0, 2.0)


@pytest.mark.parametrize("value", [0.0, 3.0, -7.5])
def test_histogram_of_constant_array(value: float) -> None:
    counts, (lo, hi) = histogram_from_values(np.full(5, value), bins=4)
    assert sum(counts) == 5
    assert lo < value < hi


def test_histogram_of_large_constant_values_does_not_raise() -> None:
    # at this magnitude lo - 0.5 == lo, and numpy cannot make finite bins: must still be a histogram
    counts, (lo, hi) = histogram_from_values(np.full(3, 1e20), bins=4)
    assert sum(counts) == 3
    assert lo <= 1e20 <= hi


def test_histogram_leaves_out_nan_and_inf() -> None:
    values = np.array([1.0, np.nan, np.inf, -np.inf, 2.0, 3.0])
    counts, span = histogram_from_values(values, bins=2)
    assert sum(counts) == int(np.isfinite(values).sum()) == 3
    assert span == (1.0, 3.0)


@pytest.mark.parametrize("bins", [0, 1, 7, 10_000])
def test_histogram_bins_clamped(bins: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=1000)
    counts, _ = histogram_from_values(data, bins=bins)
    assert len(counts) == min(max(bins, 1), 512)
    assert sum(counts) == 1000


@pytest.mark.parametrize("empty", [np.array([]), [], np.array([np.nan, np.inf]), iter(())], ids=repr)
def test_histogram_empty_is_unsupported(empty: Any) -> None:
    with pytest.raises(Unsupported, match="no finite values"):
        histogram_from_values(empty)


@pytest.mark.parametrize("bad", ["abc", np.array(["a", "b"]), None], ids=repr)
def test_histogram_of_non_numbers_is_unsupported(bad: Any) -> None:
    with pytest.raises(Unsupported):
        histogram_from_values(bad)


def test_histogram_from_buckets_even_buckets_pass_through() -> None:
    counts, span = histogram_from_buckets(0, 10, [2.5, 5, 7.5, 10], [1, 2, 3, 4])
    assert counts == [1.0, 2.0, 3.0, 4.0]
    assert span == (0.0, 10.0)


def test_histogram_from_buckets_rebins_and_keeps_total() -> None:
    counts, span = histogram_from_buckets(-1, 1, [-0.5, 0, 0.5, 1, 1e6], [1, 2, 3, 4, 5])
    assert len(counts) == 5
    assert sum(counts) == 15
    assert counts[-1] == 9.0  # out-of-range limits are clipped into the last bin
    assert span == (-1.0, 1.0)


def test_histogram_from_buckets_equal_bounds() -> None:
    counts, (lo, hi) = histogram_from_buckets(5, 5, [5], [3])
    assert counts == [3.0]
    assert lo < 5 < hi


@pytest.mark.parametrize(
    "args",
    [(0, 10, [1, 2], [1]), (0, 10, [], []), (0, float("inf"), [1], [1]), (float("nan"), 1, [1], [1])],
    ids=repr,
)
def test_histogram_from_buckets_bad_input(args: tuple) -> None:
    with pytest.raises(Unsupported):
        histogram_from_buckets(*args)


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((3, 4, 5), "CHW", (4, 5, 3)),
        ((4, 4, 5), "CHW", (4, 5, 4)),
        ((4, 5, 3), "HWC", (4, 5, 3)),
        ((4, 5, 3), "hwc", (4, 5, 3)),
        ((4, 5), "HW", (4, 5)),
        ((1, 4, 5), "CHW", (4, 5)),
        ((4, 5, 1), "HWC", (4, 5)),
    ],
)
def test_image_layouts(shape: tuple, layout: str, expected: tuple) -> None:
    pixels = image_to_pixels(np.zeros(shape, dtype=np.float32), layout)
    assert pixels.shape == expected
    assert pixels.dtype == np.uint8


def test_image_chw_moves_channels_last() -> None:
    chw = np.zeros((3, 2, 2), dtype=np.uint8)
    chw[0] = 10
    chw[2] = 30
    pixels = image_to_pixels(chw, "CHW")
    assert pixels[0, 0].tolist() == [10, 0, 30]


def test_image_float_scaled_to_uint8() -> None:
    """As TensorBoard scales them (x * 255 in float32, truncated), so a live image equals its event
    file's: 0.5 -> 127."""
    pixels = image_to_pixels(np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]]), "HW")
    assert pixels.tolist() == [[0, 127, 255, 255, 0, 0]]


def test_image_uint8_passthrough() -> None:
    original = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(image_to_pixels(original, "HW"), original)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [((3, 4), "CHW"), ((2, 3, 4, 5), "HWC"), ((4,), "HW"), ((5, 4, 4), "CHW"), ((4, 4), "NCHW")],
)
def test_image_wrong_shape_or_layout_is_unsupported(shape: tuple, layout: str) -> None:
    with pytest.raises(Unsupported):
        image_to_pixels(np.zeros(shape), layout)


@pytest.mark.parametrize(("shape", "layout"), [((3, 4, 5), "NCHW"), ((2, 4), "NHW"), ((2, 3, 4, 5), "CHW")])
def test_images_wrong_shape_or_layout_is_unsupported(shape: tuple, layout: str) -> None:
    with pytest.raises(Unsupported):
        images_to_pixels(np.zeros(shape), layout)


def test_image_of_strings_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="numeric"):
        image_to_pixels(np.array([["a"]]), "HW")


@pytest.mark.parametrize(
    ("shape", "layout", "single", "count"),
    [
        ((2, 3, 4, 5), "NCHW", "CHW", 2),
        ((3, 4, 5, 3), "NHWC", "HWC", 3),
        ((2, 4, 5), "NHW", "HW", 2),
    ],
)
def test_images_batch(shape: tuple, layout: str, single: str, count: int) -> None:
    batch = np.random.default_rng(1).random(shape)
    out = images_to_pixels(batch, layout)
    assert len(out) == count
    for index, pixels in enumerate(out):
        assert np.array_equal(pixels, image_to_pixels(batch[index], single))


# -- audio and figures ------------------------------------------------------------------------------


def _read_wav(data: bytes) -> tuple[int, int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert wav.getsampwidth() == 2
        return wav.getframerate(), wav.getnframes(), wav.getnchannels(), frames


def test_audio_mono_round_trip() -> None:
    samples = np.sin(np.linspace(0, 20, 16000))
    rate, frames, channels, pcm = _read_wav(audio_to_wav(samples, 16000))
    assert (rate, frames, channels) == (16000, 16000, 1)
    assert np.allclose(pcm / 32767.0, samples, atol=1e-4)


def test_audio_channels_first_is_interleaved() -> None:
    rate, frames, channels, _ = _read_wav(audio_to_wav(np.zeros((2, 800)), 8000))
    assert (rate, frames, channels) == (8000, 800, 2)
    rate, frames, channels, _ = _read_wav(audio_to_wav(np.zeros((1, 300)), 22050))
    assert (rate, frames, channels) == (22050, 300, 1)


def test_audio_clips_out_of_range_and_nan() -> None:
    _, _, _, pcm = _read_wav(audio_to_wav(np.array([0.0, 1.0, -1.0, 2.0, np.nan]), 8000))
    assert pcm.tolist() == [0, 32767, -32767, 32767, 0]


@pytest.mark.parametrize("bad", [np.array([]), np.zeros((2, 2, 3)), np.array(["a"])], ids=repr)
def test_audio_bad_input_is_unsupported(bad: np.ndarray) -> None:
    with pytest.raises(Unsupported):
        audio_to_wav(bad, 8000)


def test_figure_to_pixels() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(2, 1), dpi=50)
    try:
        plt.plot([0, 1], [1, 0])
        pixels = figure_to_pixels(figure)
    finally:
        plt.close(figure)
    assert pixels.shape == (50, 100, 4)
    assert pixels.dtype == np.uint8
    assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 1  # something was drawn


def test_figure_to_pixels_rejects_non_figures() -> None:
    with pytest.raises(Unsupported, match="matplotlib figure"):
        figure_to_pixels(object())
