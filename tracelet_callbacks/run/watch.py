"""``watch(model)``: per-layer gradient and weight norms, their histograms, and a health check that
names the first step and layer where a gradient or the loss stopped being a finite number.

How it stays off the training loop's back:

* **One hook per optimizer step**, not one per parameter: torch's global optimizer step post-hook,
  for the first optimizer seen that holds the model's parameters. The gradients the step used are
  all there then (Lightning runs forward and backward inside ``optimizer.step(closure)``).
* **Nothing is read back per step.** Each step adds two device operations (one fused norm over every
  gradient, one stack) and keeps the result on the device. Every ``log_freq`` steps everything kept
  (the norms of each step, the weight norms, the histograms, built on the device without a host
  sync) is copied to the host **once**, which is when the records are written and the kept norms
  are searched for the first non-finite one, so the step and layer named are exact.
* **A non-finite loss** (a logged metric whose name holds ``loss``) is seen as it is logged; the
  kept gradient norms are then searched at once, so a gradient that went bad first is the one named.

Health is reported once per watcher: one :class:`~tracelet_callbacks.errors.TraceletWarning` and the
run param ``health`` (``{"status": "non-finite", "step": 23, "layer": "1.weight", "what": "gradient",
"value": "nan"}``). Training goes on; what it does with a NaN is the user's business.

The gradients measured are the ones the optimizer step used: after clipping, if the trainer clips.
A histogram of a tensor holding a NaN or inf is not written (it has no range); its norm still is.

Records: metrics ``grad_norm/<layer>``, ``grad_norm/total`` and ``weight_norm/<layer>``; distributions
``gradients/<layer>`` and ``weights/<layer>`` (64 bins), at the watcher's step: the optimizer steps
done, counted from the trainer's own step when the adapter gives one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from ..config import WATCH_CHOICES
from ..core import records as rec
from ..errors import TraceletWarning

__all__ = ["ModelWatcher", "check_watch_args"]

_BINS = 64


def check_watch_args(log: Any, log_freq: Any) -> None:
    """Fail at the call with the valid choices, as every configuration error does."""
    if log not in WATCH_CHOICES:
        raise ValueError(f"tracelet: watch log must be one of {WATCH_CHOICES}, got {log!r}")
    if not isinstance(log_freq, int) or isinstance(log_freq, bool) or log_freq < 1:
        raise ValueError(f"tracelet: watch log_freq must be a positive int, got {log_freq!r}")


class ModelWatcher:
    """Watches one model; see the module docstring.

    Args:
        model: a ``torch.nn.Module``.
        target: gives the translator of the run to write to now (``None``: nowhere, e.g. a closed run).
        log: ``"gradients"``, ``"parameters"``, ``"all"``, or ``None`` (the health check only).
        log_freq: write every this many optimizer steps.
        steps_done: the trainer's count of optimizer steps completed before the current one; without
            it the watcher counts its own steps from 0.
    """

    def __init__(
        self,
        model: Any,
        target: Callable[[], Any],
        *,
        log: str | None = "gradients",
        log_freq: int = 100,
        steps_done: Callable[[], int | None] | None = None,
    ) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        check_watch_args(log, log_freq)
        self._torch = torch
        self._target = target
        self.log = log
        self.log_freq = log_freq
        self._steps_done = steps_done
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if named and all(name.startswith("module.") for name, _ in named):  # a DDP / DataParallel wrapper
            named = [(name[len("module.") :], p) for name, p in named]
        self._named = named
        self._params = [p for _, p in named]
        self._ids = {id(p) for _, p in self._named}
        self._driver: int | None = None  # id of the optimizer whose steps are counted
        self._count = 0
        self._kept: list[tuple[int, tuple[str, ...], Any]] = []  # (step, layers, norms on the device)
        self._layouts: dict[tuple[bool, ...], tuple[tuple[str, ...], bool]] = {}
        self._healthy = True
        self._failed = False
        self._hooked: Any = None  # the translator whose logged losses we check
        self._handle = register_optimizer_step_post_hook(self._after_step)

    # -- the hook ------------------------------------------------------------------------------------

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._failed:
            return
        try:
            if self._driver is None:
                if not any(id(p) in self._ids for group in optimizer.param_groups for p in group["params"]):
                    return
                self._driver = id(optimizer)
            elif id(optimizer) != self._driver:
                return
            step = self._next_step()
            self._keep_gradient_norms(step)
            translator = self._target()
            if translator is not None and self._hooked is not translator:
                self._hooked = translator
                translator.watch_loss = self._loss_logged
            if step % self.log_freq == 0:
                self._write(step, translator)
        except Exception as exc:  # never stop training: say it once and stop watching
            self._failed = True
            warnings.warn(f"tracelet: watch() stopped after an error: {exc!r}", TraceletWarning, stacklevel=2)

    def _next_step(self) -> int:
        done = None
        if self._steps_done is not None:
            try:
                done = self._steps_done()
            except Exception:
                done = None
        self._count = (int(done) if done is not None else self._count) + 1
        return self._count

    def _keep_gradient_norms(self, step: int) -> None:
        # every optimizer step: kept to two device calls and as little Python as the layout allows
        grads = [p.grad for p in self._params]
        layout = self._layouts.get(tuple(grad is None for grad in grads))
        if layout is None:
            layout = self._layout(grads)
        layers, mixed = layout
        if not layers:
            return
        if len(layers) != len(grads):
            grads = [grad for grad in grads if grad is not None]
        norms = self._torch._foreach_norm(grads)
        if mixed:  # model parallel or mixed precision: one device and dtype to stack on
            first = norms[0].device
            norms = [n.to(first, self._torch.float32) for n in norms]
        self._kept.append((step, layers, self._torch.stack(norms)))

    def _layout(self, grads: list[Any]) -> tuple[tuple[str, ...], bool]:
        """Which layers have a gradient (the names, once per pattern), and whether they differ in
        device or dtype."""
        present = [
            (name, grad) for (name, _), grad in zip(self._named, grads, strict=True) if grad is not None
        ]
        kinds = {(grad.device, grad.dtype) for _, grad in present}
        layout = (tuple(name for name, _ in present), len(kinds) > 1)
        self._layouts[tuple(grad is None for grad in grads)] = layout
        return layout

    # -- writing and health -------------------------------------------------------------------------

    def _write(self, step: int, translator: Any) -> None:
        """Read back everything kept (one copy to the host), check health, write the records."""
        torch = self._torch
        kept, self._kept = self._kept, []
        layers_out: list[tuple[str, str, Any]] = []  # (kind, layer, tensor) to describe
        if self.log in ("parameters", "all"):
            layers_out += [("weights", name, p.detach()) for name, p in self._named]
        if self.log in ("gradients", "all"):
            layers_out += [
                ("gradients", name, p.grad.detach()) for name, p in self._named if p.grad is not None
            ]
        pieces = [norms.float().reshape(-1) for _, _, norms in kept]
        summaries = [_describe(torch, tensor) for _, _, tensor in layers_out]
        weight_norms = None
        if self.log in ("parameters", "all") and self._named:
            weight_norms = torch.stack(
                [n.float() for n in torch._foreach_norm([p.detach() for _, p in self._named])]
            )
            pieces.append(weight_norms.reshape(-1))
        pieces += summaries
        if not pieces:
            return
        device = pieces[0].device
        host = torch.cat([piece.to(device) for piece in pieces]).cpu().tolist()  # the one read-back
        rows, offset = _split(kept, host)
        self._check(rows, translator)
        if translator is None:
            return
        records: list[rec.Record] = []
        if self.log in ("gradients", "all") and rows and rows[-1][0] == step:
            _, layers, values = rows[-1]
            records += [
                rec.Scalar(f"grad_norm/{name}", value, step)
                for name, value in zip(layers, values, strict=True)
            ]
            total = math.sqrt(sum(value * value for value in values))
            records.append(rec.Scalar("grad_norm/total", total, step))
        if weight_norms is not None:
            values = host[offset : offset + len(self._named)]
            offset += len(self._named)
            records += [
                rec.Scalar(f"weight_norm/{name}", v, step)
                for (name, _), v in zip(self._named, values, strict=True)
            ]
        for kind, name, _ in layers_out:
            low, high, *counts = host[offset : offset + 2 + _BINS]
            offset += 2 + _BINS
            if math.isfinite(low) and math.isfinite(high):
                records.append(rec.Histogram(f"{kind}/{name}", counts, (low, high), step=step))
        if records:
            translator.sink.submit(records)

    def _check(self, rows: list[tuple[int, tuple[str, ...], list[float]]], translator: Any) -> bool:
        """Report the first non-finite gradient norm in ``rows``; whether one was found."""
        if not self._healthy:
            return False
        for step, layers, values in rows:
            for layer, value in zip(layers, values, strict=True):
                if not math.isfinite(value):
                    self._report(translator, step, layer, "gradient", value)
                    return True
        return False

    def _check_kept(self, translator: Any) -> bool:
        """Read back the norms kept since the last write (one copy) and check them."""
        kept, self._kept = self._kept, []
        if not kept:
            return False
        host = self._torch.cat([norms.float().reshape(-1) for _, _, norms in kept]).cpu().tolist()
        return self._check(_split(kept, host)[0], translator)

    def _loss_logged(self, name: str, value: float, step: Any) -> None:
        """The translator saw a non-finite value: if it is a loss, look at the kept gradients first."""
        if not self._healthy or "loss" not in name:
            return
        translator = self._hooked
        if not self._check_kept(translator):
            self._report(translator, step, name, "loss", value)

    def _report(self, translator: Any, step: Any, where: str, what: str, value: float) -> None:
        self._healthy = False
        shown = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        place = f"layer {where!r}" if what == "gradient" else f"metric {where!r}"
        warnings.warn(
            f"tracelet: the {what} of {place} became {shown} at step {step}; training goes on "
            "(reported once; see the run param 'health')",
            TraceletWarning,
            stacklevel=2,
        )
        if translator is not None:
            health = {"status": "non-finite", "step": step, "what": what, "value": shown}
            health["layer" if what == "gradient" else "metric"] = where
            translator.set_param("health", health)

    # -- ending -------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Check the steps kept since the last write (the run is ending)."""
        if self._kept and not self._failed:
            try:
                self._check_kept(self._target())
            except Exception as exc:
                warnings.warn(
                    f"tracelet: watch() could not check the last steps: {exc!r}",
                    TraceletWarning,
                    stacklevel=2,
                )

    def remove(self) -> None:
        """Take the hook off; nothing more is computed."""
        self._handle.remove()
        if self._hooked is not None and self._hooked.watch_loss == self._loss_logged:
            self._hooked.watch_loss = None
        self._kept = []


def _split(kept: list, host: list[float]) -> tuple[list[tuple[int, tuple[str, ...], list[float]]], int]:
    """The kept steps' norms as ``(step, layers, values)`` rows, and where the rest of ``host`` starts."""
    rows, offset = [], 0
    for step, layers, _ in kept:
        rows.append((step, layers, host[offset : offset + len(layers)]))
        offset += len(layers)
    return rows, offset


def _describe(torch: Any, tensor: Any) -> Any:
    """``[min, max, 64 bin counts]`` of ``tensor``, computed on its device without a host sync."""
    flat = tensor.reshape(-1).float()
    if flat.numel() == 0:
        return torch.full((2 + _BINS,), float("nan"), device=flat.device)
    low, high = torch.aminmax(flat)
    span = torch.clamp(high - low, min=1e-12)
    index = ((flat - low) / span * _BINS).nan_to_num(0.0).long().clamp_(0, _BINS - 1)
    counts = torch.zeros(_BINS, device=flat.device).index_add_(0, index, torch.ones_like(flat))
    return torch.cat([low.reshape(1), high.reshape(1), counts])


class Watchers:
    """The models one run owner watches, one watcher per model (watching again replaces it)."""

    def __init__(self) -> None:
        self._by_model: dict[int, ModelWatcher] = {}
        self._for_this_run: set[int] = set()  # watched by a setting: hooks off when the run ends

    def add(
        self,
        model: Any,
        target: Callable[[], Any],
        log: str | None,
        log_freq: int,
        *,
        for_this_run: bool = False,
        **kwargs: Any,
    ) -> None:
        """Watch ``model`` (again: the old watcher is replaced). ``for_this_run``: until
        :meth:`end_run`, so a k-fold loop's earlier models are not kept alive by their hooks."""
        check_watch_args(log, log_freq)
        if not callable(getattr(model, "named_parameters", None)):  # not a module: say what it needs
            raise TypeError(
                f"tracelet: watch() takes a torch.nn.Module (anything with named_parameters()), "
                f"got {type(model).__name__}"
            )
        self.remove(model)
        self._by_model[id(model)] = ModelWatcher(model, target, log=log, log_freq=log_freq, **kwargs)
        if for_this_run:
            self._for_this_run.add(id(model))

    def remove(self, model: Any = None) -> None:
        """Stop watching ``model`` (``None``: every model)."""
        for key in list(self._by_model) if model is None else [id(model)]:
            self._remove_key(key)

    def drain(self) -> None:
        for watcher in self._by_model.values():
            watcher.drain()

    def end_run(self) -> None:
        """The run ends: check the steps kept since the last write; unhook what was for this run."""
        self.drain()
        for key in list(self._for_this_run):
            self._remove_key(key)

    def _remove_key(self, key: int) -> None:
        self._for_this_run.discard(key)
        watcher = self._by_model.pop(key, None)
        if watcher is not None:
            watcher.remove()

    def __bool__(self) -> bool:
        return bool(self._by_model)
