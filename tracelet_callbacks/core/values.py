"""Value conversion: whatever a training loop hands us -> the plain data a record holds.

Tensors are recognised by their shape of API (``detach`` / ``numel``), never by importing torch, so
this module stays importable in a process without torch. Every converter either returns a value or
raises :class:`Unsupported` with a short reason; the caller decides whether that is a warning or an
error (``strict``).
"""

from __future__ import annotations

import io
import math
import numbers
import wave
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "Deferred",
    "Unsupported",
    "audio_to_wav",
    "draw_boxes",
    "figure_to_pixels",
    "flatten_values",
    "histogram_from_buckets",
    "histogram_from_values",
    "image_to_pixels",
    "images_to_pixels",
    "is_tensor",
    "resolve_deferred",
    "to_numpy",
    "to_scalar",
    "to_step",
    "to_value",
]

MAX_BINS = 512


class Unsupported(Exception):
    """A value that cannot become the record asked for; ``str(exc)`` says why."""


def is_tensor(value: Any) -> bool:
    """True for torch (and torch-like) tensors, without importing torch."""
    return hasattr(value, "detach") and hasattr(value, "numel") and hasattr(value, "cpu")


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__name__ if module in ("builtins", None) else f"{module.split('.')[0]}.{kind.__name__}"


def to_scalar(value: Any) -> float:
    """Turn a number-like value into a float; NaN and inf are kept as values.

    >>> to_scalar(3), to_scalar(True), to_scalar(np.float32(0.5))
    (3.0, 1.0, 0.5)
    >>> to_scalar("0.1")
    Traceback (most recent call last):
    ...
    tracelet_callbacks.core.values.Unsupported: expected a number, got str
    """
    if type(value) is float:  # the common case first: it is on every logged value's path
        return value
    try:
        number = _to_float(value)
    except Unsupported:
        raise
    except Exception as exc:  # 1j tensors, 10**400, meta or sparse tensors, a __float__ that fails
        raise Unsupported(f"{_type_name(value)} cannot be read as a real number ({exc})") from None
    if number - number != 0.0 and number == number and not _equals(value, number):
        # an infinity that the value itself is not: a long double beyond float's range
        raise Unsupported(f"{_type_name(value)} is too large for a 64-bit float")
    return number


def _equals(value: Any, number: float) -> bool:
    try:
        return bool(value == number)
    except Exception:
        return False


def _to_float(value: Any) -> float:
    if type(value) is int:
        return float(value)
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        raise Unsupported("the value is masked (numpy.ma): there is no number to store")
    if isinstance(value, numbers.Real):
        return float(value)
    if is_tensor(value):
        count = value.numel()
        if count != 1:
            raise Unsupported(f"expected a one-element tensor, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().reshape(()).item())
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise Unsupported(f"expected a one-element array, got an array of shape {value.shape}")
        return _numeric_item(value.reshape(()).item(), value)
    if isinstance(value, np.generic):
        return _numeric_item(value.item(), value)
    if value is None:
        raise Unsupported("expected a number, got None")
    raise Unsupported(f"expected a number, got {_type_name(value)}")


class Deferred:
    """A one-element accelerator tensor whose value is read later, many at once.

    Reading a CUDA value with ``.item()`` stalls the training loop until the GPU has caught up. The
    record keeps the (detached) device tensor instead; the writer reads a whole batch of them with one
    copy (:func:`resolve_deferred`) when it hands the batch on, long after the GPU has finished.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor.detach()

    def __float__(self) -> float:
        return float(self.tensor.item())


def resolve_deferred(values: list[Deferred]) -> list[float]:
    """The floats of many deferred values: one stacked copy per device and dtype, not one per value."""
    import torch  # deferred values exist only where torch does

    found: list[float] = [0.0] * len(values)
    groups: dict[tuple, list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault((value.tensor.device, value.tensor.dtype), []).append(index)
    for indices in groups.values():
        stacked = torch.stack([values[i].tensor.reshape(()) for i in indices]).to(torch.float64).cpu()
        for i, number in zip(indices, stacked.tolist(), strict=True):
            found[i] = number
    return found


def to_value(value: Any) -> float | Deferred:
    """:func:`to_scalar`, except that a one-element CUDA tensor is not read yet (see :class:`Deferred`)."""
    if type(value) is float:
        return value
    if is_tensor(value) and getattr(getattr(value, "device", None), "type", "cpu") == "cuda":
        if value.numel() != 1:
            raise Unsupported(f"expected a one-element tensor, got a tensor of shape {tuple(value.shape)}")
        if value.is_complex():
            return to_scalar(value)  # which names the problem
        return Deferred(value)
    return to_scalar(value)


#: AIM stores steps and epochs as signed 64-bit integers.
STEP_LIMIT = 2**63 - 1


def to_step(value: Any) -> int | None:
    """A step as an int (tensors and numpy ints too); ``None`` (AIM's automatic step) stays ``None``.

    Anything else (a string, NaN, 1.7, a number beyond int64) raises :class:`Unsupported` rather than
    land silently on some other step.

    >>> to_step(np.int64(3)), to_step(None), to_step(4.0)
    (3, None, 4)
    >>> to_step(1.7)
    Traceback (most recent call last):
    ...
    tracelet_callbacks.core.values.Unsupported: a step must be a whole number, got 1.7
    """
    if value is None or (type(value) is int and -STEP_LIMIT <= value <= STEP_LIMIT):
        return value
    number = _position(value, "step")
    if isinstance(number, float):
        if not number.is_integer():
            raise Unsupported(f"a step must be a whole number, got {value!r}")
        number = int(number)
    return number


def to_epoch(value: Any) -> int | float | None:
    """An epoch: an int, or a float when it is fractional (HF's ``state.epoch`` is 0.25 a quarter
    into the first epoch, and AIM keeps it so); ``None`` stays ``None``; the rest raises as
    :func:`to_step` does.

    >>> to_epoch(2.0), to_epoch(0.25), to_epoch(np.int64(3))
    (2, 0.25, 3)
    """
    if value is None or (type(value) is int and -STEP_LIMIT <= value <= STEP_LIMIT):
        return value
    number = _position(value, "epoch")
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def _position(value: Any, what: str) -> int | float:
    """A step or epoch as an int or a finite float within int64, else :class:`Unsupported`."""
    if isinstance(value, (str, bytes)) or value is None:
        raise Unsupported(f"a {what} must be a number, got {_type_name(value)} {value!r}")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number: int | float = int(value)
    else:
        try:
            number = to_scalar(value)
        except Unsupported as exc:
            raise Unsupported(f"a {what} must be a number: {exc}") from None
        if not math.isfinite(number):
            raise Unsupported(f"a {what} must be a finite number, got {value!r}")
    if not -STEP_LIMIT <= number <= STEP_LIMIT:
        raise Unsupported(f"a {what} must fit in 64 bits, got {value!r}")
    return number


def _numeric_item(item: Any, original: Any) -> float:
    if isinstance(item, (bool, numbers.Real)):
        return float(item)
    raise Unsupported(f"expected a number, got {_type_name(original)} of {type(item).__name__}")


def to_numpy(value: Any) -> np.ndarray:
    """A tensor, array, number or (nested) list as a numpy array, detached and on the CPU."""
    if is_tensor(value):
        tensor = value.detach()
        if getattr(tensor, "dtype", None) is not None and "bfloat16" in str(tensor.dtype):
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise Unsupported(f"cannot read {_type_name(value)} as an array: {exc}") from exc


def flatten_values(values: Any) -> np.ndarray:
    """A tensor, array, list, or iterable of tensors (``model.parameters()``) as one flat float array."""
    if is_tensor(values) or isinstance(values, np.ndarray):
        flat = to_numpy(values).ravel()
    elif isinstance(values, Iterable) and not isinstance(values, (str, bytes)):
        parts = [to_numpy(item).ravel() for item in values]
        flat = np.concatenate(parts) if parts else np.empty(0)
    else:
        flat = to_numpy(values).ravel()
    if flat.dtype.kind not in "fiub":
        raise Unsupported(f"expected numbers, got dtype {flat.dtype}")
    return flat.astype(np.float64, copy=False)


def histogram_from_values(values: Any, bins: int = 64) -> tuple[list[float], tuple[float, float]]:
    """Histogram of anything :func:`flatten_values` reads; returns ``(counts, (lo, hi))``.

    Non-finite entries are left out (a histogram has no bin for them).
    """
    flat = flatten_values(values)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        raise Unsupported("no finite values to make a histogram of")
    bins = max(1, min(int(bins), MAX_BINS))
    lo, hi = _widen(float(flat.min()), float(flat.max()))
    try:
        counts, _ = np.histogram(flat, bins=bins, range=(lo, hi))
    except ValueError as exc:  # a span numpy cannot cut into bins (overflow near the float limits)
        raise Unsupported(f"cannot bin values spanning [{lo}, {hi}]: {exc}") from exc
    return counts.astype(float).tolist(), (lo, hi)


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """A range of width > 0 around a constant, wide enough to survive float rounding at any scale."""
    if lo != hi:
        return lo, hi
    pad = max(0.5, abs(lo) * 1e-6)
    return lo - pad, hi + pad


def histogram_from_buckets(
    lo: float, hi: float, bucket_limits: Any, bucket_counts: Any
) -> tuple[list[float], tuple[float, float]]:
    """``add_histogram_raw``'s buckets as an even-binned histogram over ``[lo, hi]``.

    AIM distributions have evenly spaced bins, so uneven TensorBoard buckets are re-binned: each
    bucket's count goes to the even bin holding its upper limit (clipped to the range).
    """
    limits = to_numpy(bucket_limits).astype(np.float64).ravel()
    counts = to_numpy(bucket_counts).astype(np.float64).ravel()
    if limits.size != counts.size or counts.size == 0:
        raise Unsupported("bucket_limits and bucket_counts must be non-empty and of equal length")
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise Unsupported("min and max must be finite")
    lo, hi = _widen(lo, hi)
    bins = min(counts.size, MAX_BINS)
    edges = np.linspace(lo, hi, bins + 1)
    where = np.clip(np.searchsorted(edges, np.clip(limits, lo, hi), side="left") - 1, 0, bins - 1)
    even = np.zeros(bins)
    np.add.at(even, where, counts)
    return even.tolist(), (lo, hi)


_LAYOUTS = {"CHW", "HWC", "HW", "NCHW", "NHWC", "NHW", "CNHW"}


def image_to_pixels(image: Any, dataformats: str = "CHW") -> np.ndarray:
    """One image in any TensorBoard ``dataformats`` -> ``uint8`` array ``(H, W[, C])``.

    Floats are taken to lie in ``[0, 1]`` (TensorBoard's convention) and scaled to 0..255.
    """
    array = _as_image_array(image)
    layout = dataformats.upper()
    if layout not in {"CHW", "HWC", "HW"}:
        raise Unsupported(f"dataformats {dataformats!r} is not a single-image layout (CHW, HWC, HW)")
    if array.ndim != len(layout):
        raise Unsupported(f"expected {len(layout)} dimensions for {layout}, got shape {array.shape}")
    if layout == "CHW":
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 1 or channels == 2:
            array = array[:, :, 0]
        elif channels not in (3, 4):
            raise Unsupported(f"expected 1, 3 or 4 channels, got {channels}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise Unsupported(f"an image needs pixels, got height x width {array.shape[0]} x {array.shape[1]}")
    return _to_uint8(array)


def images_to_pixels(images: Any, dataformats: str = "NCHW") -> list[np.ndarray]:
    """A batch of images (``NCHW``, ``NHWC``, ``NHW``, ``CNHW``) -> one array per image."""
    array = _as_image_array(images)
    layout = dataformats.upper()
    if layout not in {"NCHW", "NHWC", "NHW", "CNHW"}:
        raise Unsupported(f"dataformats {dataformats!r} is not a batch layout (NCHW, NHWC, NHW)")
    if array.ndim != len(layout):
        raise Unsupported(f"expected {len(layout)} dimensions for {layout}, got shape {array.shape}")
    if layout == "CNHW":
        array, layout = np.transpose(array, (1, 0, 2, 3)), "NCHW"
    single = layout[1:]
    return [image_to_pixels(item, single) for item in array]


def _as_image_array(image: Any) -> np.ndarray:
    if hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "getdata"):  # a PIL image
        return np.asarray(image)
    array = to_numpy(image)
    if array.dtype.kind not in "fiub":
        raise Unsupported(f"expected numeric pixels, got dtype {array.dtype}")
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind == "f":
        # as TensorBoard scales them (float32, truncated), so a live image and its event file agree
        array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        array = np.clip(array, 0.0, 1.0) * np.float32(255.0)
    elif array.dtype.kind == "b":
        array = array.astype(np.float64) * 255.0
    return np.ascontiguousarray(np.clip(array, 0, 255).astype(np.uint8))


def draw_boxes(pixels: np.ndarray, boxes: Any, labels: list[str] | None = None) -> np.ndarray:
    """Outline ``boxes`` (``N x 4``, x1 y1 x2 y2 in pixels) on a copy of ``pixels``."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    picture = PILImage.fromarray(pixels).convert("RGB")
    pen = ImageDraw.Draw(picture)
    for index, box in enumerate(to_numpy(boxes).reshape(-1, 4).tolist()):
        pen.rectangle(box, outline=(255, 0, 0), width=2)
        if labels and index < len(labels):
            pen.text((box[0] + 2, box[1] + 2), str(labels[index]), fill=(255, 0, 0))
    return np.asarray(picture)


def figure_to_pixels(figure: Any) -> np.ndarray:
    """Render a matplotlib figure to an RGBA ``uint8`` array."""
    canvas = getattr(figure, "canvas", None)
    if canvas is None or not hasattr(canvas, "draw"):
        raise Unsupported(f"expected a matplotlib figure, got {_type_name(figure)}")
    if not hasattr(canvas, "buffer_rgba"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)


def audio_to_wav(samples: Any, sample_rate: int) -> bytes:
    """Mono or ``(channels, n)`` / ``(1, n)`` float samples in ``[-1, 1]`` -> 16-bit PCM WAV bytes."""
    array = to_numpy(samples)
    if array.dtype.kind not in "fiu":
        raise Unsupported(f"expected numeric audio samples, got dtype {array.dtype}")
    array = np.squeeze(array)
    if array.ndim == 0 or array.size == 0:
        raise Unsupported("audio has no samples")
    if array.ndim == 2:
        # TensorBoard passes (channels, samples); WAV interleaves (samples, channels)
        array = array.T if array.shape[0] < array.shape[1] else array
    elif array.ndim != 1:
        raise Unsupported(f"expected 1-D or 2-D audio, got shape {array.shape}")
    channels = 1 if array.ndim == 1 else array.shape[1]
    if array.dtype.kind == "f":
        pcm = (np.clip(np.nan_to_num(array), -1.0, 1.0) * 32767.0).astype("<i2")
    else:
        pcm = array.astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()
