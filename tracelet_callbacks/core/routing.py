"""Tag -> (metric name, context): the one table every adapter routes through.

The same quantity lands in the same AIM series whichever framework logged it::

    >>> route("train/loss")
    Route(name='loss', context={'subset': 'train'})
    >>> route("val_loss")
    Route(name='loss', context={'subset': 'val'})
    >>> route("eval_loss")
    Route(name='loss', context={'subset': 'val'})
    >>> route("train/loss/total")
    Route(name='loss/total', context={'subset': 'train'})
    >>> route("val_acc_epoch/dataloader_idx_1")
    Route(name='acc', context={'subset': 'val', 'granularity': 'epoch', 'dataloader': 1})
    >>> route("batch/loss")
    Route(name='batch/loss', context={})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_TABLE", "HF_PREFIXES", "Route", "RoutingTable", "route"]


@dataclass(frozen=True)
class Route:
    name: str
    context: dict[str, Any] = field(default_factory=dict)


#: Words that name a data subset, as they appear at the start (``val_loss``, ``val/loss``) or the
#: end (``Loss/train``, the PyTorch TensorBoard tutorial's spelling) of a tag.
SUBSET_WORDS: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "val",
    "evaluation": "val",
    "test": "test",
    "testing": "test",
    "predict": "test",
}

#: Lightning's ``self.log(..., on_step=True, on_epoch=True)`` suffixes.
GRANULARITY_SUFFIXES: dict[str, str] = {"_step": "step", "_epoch": "epoch"}

#: Names that end like a suffix but are quantities in their own right, never split.
_KEEP_WHOLE = frozenset({"step", "epoch", "global_step", "num_step", "num_epoch", "max_epoch", "max_step"})

_DATALOADER = re.compile(r"^(?P<rest>.+)/dataloader_idx_(?P<idx>\d+)$")
_PREFIX = re.compile(r"^(?P<word>[A-Za-z]+)(?P<sep>[/_])(?P<rest>.+)$")
_SUFFIX = re.compile(r"^(?P<rest>.+)/(?P<word>[A-Za-z]+)$")

#: Hugging Face ``Trainer``'s own key prefixes (``metric_key_prefix``): keys with them name their own
#: subset, so they never take a table's ``default_subset``, even when a custom table leaves them whole.
HF_PREFIXES: tuple[str, ...] = ("eval_", "test_", "predict_")

RouteFn = Callable[[str], Route | tuple | None]


class RoutingTable:
    """Maps a logged tag to the AIM metric name and context it belongs in.

    Args:
        exact: tags routed verbatim to a ``(name, context)`` pair, checked first.
        subsets: extra or replacement subset words (``{"dev": "val"}``), merged over the defaults.
        rules: callables tried before the table; each returns a :class:`Route`, a ``(name, context)``
            tuple, or ``None`` to fall through.
        enabled: ``False`` keeps every tag as its own metric name with an empty context.
        default_subset: the subset of a tag the rules leave as it is (HF's ``Trainer`` logs ``loss``
            and ``grad_norm`` of training without saying so); tags starting with one of
            ``own_prefixes`` never take it.
        own_prefixes: see ``default_subset``.

    Example::

        >>> table = RoutingTable(subsets={"dev": "val"})
        >>> table("dev/f1")
        Route(name='f1', context={'subset': 'val'})
        >>> hf = RoutingTable(default_subset="train", own_prefixes=HF_PREFIXES)
        >>> hf("grad_norm"), hf("eval_loss")
        (Route(name='grad_norm', context={'subset': 'train'}), Route(name='loss', context={'subset': 'val'}))
    """

    def __init__(
        self,
        exact: Mapping[str, Any] | None = None,
        subsets: Mapping[str, str] | None = None,
        rules: list[RouteFn] | None = None,
        enabled: bool = True,
        default_subset: str | None = None,
        own_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.exact = {tag: _as_route(value) for tag, value in (exact or {}).items()}
        self.subsets = {**SUBSET_WORDS, **{k.lower(): v for k, v in (subsets or {}).items()}}
        self.rules = list(rules or [])
        self.enabled = enabled
        self.default_subset = default_subset
        self.own_prefixes = tuple(own_prefixes)
        self._cache: dict[str, Route] = {}

    def defaulting(self, subset: str, own_prefixes: tuple[str, ...] = ()) -> RoutingTable:
        """This table, with ``subset`` for the tags it leaves as they are (see ``default_subset``)."""
        table = RoutingTable(
            subsets=self.subsets,
            rules=self.rules,
            enabled=self.enabled,
            default_subset=subset,
            own_prefixes=own_prefixes,
        )
        table.exact = self.exact
        return table

    def __call__(self, tag: str) -> Route:
        cached = self._cache.get(tag)
        if cached is not None:
            return Route(cached.name, dict(cached.context))
        found = self._route(tag)
        if len(self._cache) < 65536:
            self._cache[tag] = found
        return Route(found.name, dict(found.context))

    def _route(self, tag: str) -> Route:
        found = self._found(tag)
        if (
            self.default_subset is None
            or "subset" in found.context
            or found.name != tag
            or tag.startswith(self.own_prefixes)
        ):
            return found
        return Route(found.name, {"subset": self.default_subset, **found.context})

    def _found(self, tag: str) -> Route:
        if tag in self.exact:
            return self.exact[tag]
        for rule in self.rules:
            hit = rule(tag)
            if hit is not None:
                return _as_route(hit)
        if not self.enabled:
            return Route(tag, {})
        return self._default(tag)

    def _default(self, tag: str) -> Route:
        name = tag
        context: dict[str, Any] = {}

        match = _DATALOADER.match(name)
        if match:
            name, context["dataloader"] = match["rest"], int(match["idx"])

        name, granularity = _split_granularity(name)
        prefix = _PREFIX.match(name)
        suffix = _SUFFIX.match(name)
        if prefix and prefix["word"].lower() in self.subsets:
            context["subset"] = self.subsets[prefix["word"].lower()]
            name = prefix["rest"]
        elif suffix and suffix["word"].lower() in self.subsets:
            context["subset"] = self.subsets[suffix["word"].lower()]
            name = suffix["rest"]
        if granularity is None:
            name, granularity = _split_granularity(name)
        if granularity is not None:
            context["granularity"] = granularity

        # Fixed key order keeps contexts identical however the tag was spelled.
        ordered = {key: context[key] for key in ("subset", "granularity", "dataloader") if key in context}
        return Route(name, ordered)


def _split_granularity(name: str) -> tuple[str, str | None]:
    """``loss_step`` -> (``loss``, ``step``); names such as ``global_step`` are left whole."""
    if name.rsplit("/", 1)[-1] in _KEEP_WHOLE:
        return name, None
    for ending, granularity in GRANULARITY_SUFFIXES.items():
        if name.endswith(ending) and len(name) > len(ending) and not name.endswith("/" + ending[1:]):
            return name[: -len(ending)], granularity
    return name, None


def _as_route(value: Any) -> Route:
    if isinstance(value, Route):
        return value
    if isinstance(value, str):
        return Route(value, {})
    name, context = value
    return Route(str(name), dict(context or {}))


def make_table(routing: Any) -> RoutingTable:
    """Build the table an entry point's ``routing=`` keyword asks for.

    ``None`` -> the default table; ``False`` -> names kept verbatim; a :class:`RoutingTable`;
    a mapping of exact tags; or a callable rule tried before the defaults.
    """
    if routing is None or routing is True:
        return DEFAULT_TABLE
    if routing is False:
        return RoutingTable(enabled=False)
    if isinstance(routing, RoutingTable):
        return routing
    if isinstance(routing, Mapping):
        return RoutingTable(exact=routing)
    if callable(routing):
        return RoutingTable(rules=[routing])
    raise TypeError(
        f"routing must be None, False, a RoutingTable, a mapping of tags or a callable; "
        f"got {type(routing).__name__}"
    )


DEFAULT_TABLE = RoutingTable()


def route(tag: str) -> Route:
    """Route ``tag`` with the default table."""
    return DEFAULT_TABLE(tag)
