"""How each ``SummaryWriter.add_*`` call reaches the translator, and the patch ``start_logging`` puts
on ``SummaryWriter`` itself so unchanged scripts log to AIM too.

Each ``add_*`` maps its arguments onto one translator call (the table ``_FORWARDS``); what AIM has no
home for (video, embeddings, meshes, PR curves) stays TensorBoard-only with one notice. ``WRAPPED``
holds the methods that do this, for the patch and for :class:`TraceletWriter` alike.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from threading import get_ident
from typing import Any

from ...core.translator import Translator
from ...core.values import Unsupported, flatten_values, is_tensor
from ...errors import TraceletValueError, WarnOnce
from ...run.experiment import active as active_experiment

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as exc:  # torch or tensorboard missing
    raise ModuleNotFoundError(
        'TraceletWriter needs torch and tensorboard: pip install "tracelet-callbacks[tensorboard]"'
    ) from exc

__all__ = ["WRAPPED", "patch_summary_writer", "unpatch_summary_writer"]

Forward = Callable[[Translator, dict], Any]


def _scalars(t: Translator, a: dict) -> None:
    t.scalars(
        {f"{a['main_tag']}/{key}": value for key, value in a["tag_scalar_dict"].items()}, a["global_step"]
    )


def _hparams(t: Translator, a: dict) -> None:
    t.params(a["hparam_dict"])
    t.scalars(a["metric_dict"] or {}, a["global_step"])


def _tensor(t: Translator, a: dict) -> None:
    value = a["tensor"]
    if (is_tensor(value) and value.numel() == 1) or getattr(value, "size", None) == 1:
        t.scalar(a["tag"], value, a["global_step"])
    else:
        t.notice("add_tensor of a multi-element tensor", "AIM series hold scalars; it stays in TensorBoard")


def _graph(t: Translator, a: dict) -> None:
    model = a["model"]
    t.params(
        {"class": f"{type(model).__module__}.{type(model).__qualname__}", "graph": repr(model)}, key="model"
    )


def _boxes(t: Translator, a: dict) -> None:
    boxes = a["box_tensor"]
    if boxes is not None and a.get("rescale", 1) != 1:
        boxes = flatten_values(boxes).reshape(-1, 4) * a["rescale"]
    t.image_with_boxes(a["tag"], a["img_tensor"], boxes, a["global_step"], a["dataformats"], a["labels"])


def _tensorboard_only(feature: str) -> Forward:
    def forward(t: Translator, a: dict) -> None:
        t.notice(feature, "AIM has no matching object type; it stays in TensorBoard")

    return forward


#: SummaryWriter method -> how its (bound, defaulted) arguments become translator calls.
_FORWARDS: dict[str, Forward] = {
    "add_scalars": _scalars,
    "add_hparams": _hparams,
    "add_tensor": _tensor,
    "add_histogram": lambda t, a: t.histogram(a["tag"], a["values"], a["global_step"]),
    "add_histogram_raw": lambda t, a: t.histogram_raw(
        a["tag"], a["min"], a["max"], a["bucket_limits"], a["bucket_counts"], a["global_step"]
    ),
    "add_image": lambda t, a: t.image(a["tag"], a["img_tensor"], a["global_step"], a["dataformats"]),
    "add_images": lambda t, a: t.images(a["tag"], a["img_tensor"], a["global_step"], a["dataformats"]),
    "add_image_with_boxes": _boxes,
    "add_figure": lambda t, a: t.figure(a["tag"], a["figure"], a["global_step"]),
    "add_text": lambda t, a: t.text(a["tag"], a["text_string"], a["global_step"]),
    "add_audio": lambda t, a: t.audio(a["tag"], a["snd_tensor"], a["global_step"], a["sample_rate"]),
    "add_graph": _graph,
    "add_video": _tensorboard_only("add_video"),
    "add_embedding": _tensorboard_only("add_embedding"),
    "add_pr_curve": _tensorboard_only("add_pr_curve"),
    "add_pr_curve_raw": _tensorboard_only("add_pr_curve_raw"),
    "add_mesh": _tensorboard_only("add_mesh"),
    "add_onnx_graph": _tensorboard_only("add_onnx_graph"),
    "add_custom_scalars": _tensorboard_only("add_custom_scalars"),
}

#: The real methods, captured before anything is patched.
_ORIGINALS: dict[str, Callable] = {
    name: SummaryWriter.__dict__[name]
    for name in ["add_scalar", *_FORWARDS]
    if name in SummaryWriter.__dict__
}


#: The threads now inside TensorBoard's own method: what it calls internally (``add_hparams`` opens a
#: child writer and calls its ``add_scalar``) must not be translated a second time. A set checked for
#: emptiness first, since every logged value asks.
_inside_tensorboard: set[int] = set()


def _active_translator(writer: SummaryWriter) -> Translator | None:
    """Where this writer's values go: its own experiment, else the ``start_logging`` session."""
    if _inside_tensorboard and get_ident() in _inside_tensorboard:
        return None
    own = writer._tracelet_experiment
    if own is not None:
        return own.translator
    active = active_experiment()
    return active.translator if active is not None else None


def _tensorboard_call(
    writer: SummaryWriter, name: str, call: Callable[[], Any], strict: bool, tag: Any = None
) -> Any:
    """Run the real TensorBoard method; its failure on a strange value must not stop training (one
    warning per tag and method)."""
    if not writer._tracelet_tensorboard:
        return None
    thread = get_ident()
    outer = thread in _inside_tensorboard
    _inside_tensorboard.add(thread)
    try:
        return call()
    except Exception as exc:
        if strict:
            raise TraceletValueError(f"tracelet: TensorBoard's {name} failed for {tag!r}: {exc}") from exc
        told = writer.__dict__.setdefault("_tracelet_told", WarnOnce())
        told(
            (name, str(tag)),
            f"tracelet: TensorBoard's {name} failed for {tag!r} ({exc!r}); it is skipped in the event "
            "files only (reported once per tag)",
            stacklevel=3,
        )
        return None
    finally:
        if not outer:
            _inside_tensorboard.discard(thread)


def _add_scalar(
    self: SummaryWriter,
    tag: str,
    scalar_value: Any,
    global_step: Any = None,
    walltime: Any = None,
    new_style: bool = False,
    double_precision: bool = False,
) -> None:
    # once per logged value: the writer's own open run is found with two attribute reads (a plain
    # SummaryWriter has both attributes from its class while patched, a TraceletWriter its own)
    own = self._tracelet_experiment
    translator = own._live if own is not None and not _inside_tensorboard else None
    if translator is None:
        translator = _active_translator(self)
        if translator is None and (quiet := own if own is not None else active_experiment()) is not None:
            quiet.note_step(global_step)  # a rank > 0 writes nothing, but its step time counts
    if translator is not None and not translator.scalar(tag, scalar_value, global_step):
        return  # skipped with a warning; TensorBoard would have raised on it
    if not self._tracelet_tensorboard:
        return  # no event files: the one call per logged value ends here
    strict = translator.strict if translator is not None else False
    original = _ORIGINALS["add_scalar"]
    _tensorboard_call(
        self,
        "add_scalar",
        lambda: original(self, tag, scalar_value, global_step, walltime, new_style, double_precision),
        strict,
        tag,
    )


def _wrap(name: str, forward: Forward) -> Callable:
    original = _ORIGINALS[name]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def method(self: SummaryWriter, *args: Any, **kwargs: Any) -> Any:
        translator = _active_translator(self)
        if translator is None:
            return original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if name == "add_histogram" and not (
            is_tensor(arguments["values"]) or hasattr(arguments["values"], "dtype")
        ):
            # model.parameters() is a one-shot generator that TensorBoard itself cannot read: read it once
            try:
                arguments["values"] = flatten_values(arguments["values"])
            except Unsupported as exc:
                translator.skip(arguments["tag"], str(exc), "histogram")
                return None
        try:
            forward(translator, arguments)
        except TraceletValueError:
            raise
        except Exception as exc:  # a bug of ours or an odd argument: say so, keep training
            translator.skip(str(arguments.get("tag", name)), f"{name} could not be converted: {exc!r}", name)
        if name == "add_figure" and arguments.get("close") and not self._tracelet_tensorboard:
            _close_figures(arguments["figure"])  # TensorBoard's add_figure would have closed them
        tag = arguments.get("tag", arguments.get("main_tag"))
        return _tensorboard_call(self, name, lambda: original(**arguments), translator.strict, tag)

    return method


def _close_figures(figure: Any) -> None:
    import matplotlib.pyplot as plt

    for item in figure if isinstance(figure, (list, tuple)) else [figure]:
        plt.close(item)


WRAPPED: dict[str, Callable] = {"add_scalar": _add_scalar}
WRAPPED.update({name: _wrap(name, forward) for name, forward in _FORWARDS.items() if name in _ORIGINALS})


_patched = False
#: What a plain SummaryWriter reads as its own while patched (every wrapped method reads these two
#: attributes, which a TraceletWriter sets itself): no experiment of its own, event files on.
_DEFAULTS = {"_tracelet_experiment": None, "_tracelet_tensorboard": True}


def patch_summary_writer() -> None:
    """Make every ``SummaryWriter`` (already created or not) send to the active session too."""
    global _patched
    if _patched:
        return
    for name, method in WRAPPED.items():
        setattr(SummaryWriter, name, method)
    for name, default in _DEFAULTS.items():
        setattr(SummaryWriter, name, default)
    _patched = True


def unpatch_summary_writer() -> None:
    """Give ``SummaryWriter`` its own methods back."""
    global _patched
    for name, original in _ORIGINALS.items():
        setattr(SummaryWriter, name, original)
    for name in _DEFAULTS:
        if name in SummaryWriter.__dict__:
            delattr(SummaryWriter, name)
    _patched = False
