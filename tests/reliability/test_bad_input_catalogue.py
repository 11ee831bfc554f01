"""The bad-input catalogue (reliability issue): every odd value, tag and step a training loop may hand
us, sent through every entry point it applies to, each with its outcome pinned.

A row has one of these outcomes, the same in every entry point unless the row says otherwise:

* ``stored`` -- the value lands in the run as given (a float);
* ``stored converted`` -- it lands as the plain float (or int step) in ``stored``;
* ``skipped`` -- nothing lands for that tag, exactly one :class:`TraceletWarning` names the tag and the
  reason (``reason``, a regex), the rest of the same dict is kept, training goes on; with
  ``strict=True`` the same row raises :class:`TraceletValueError` instead;
* and three an entry point's own contract adds: ``stored as text`` (accelerate's ``log`` keeps strings
  as text), ``the batch's epoch`` (a metrics dict's ``epoch`` key, never a series) and ``stored, not in
  TensorBoard`` (in AIM, with one warning naming the tag that TensorBoard's own writer refused it).

Where today's behaviour breaks that principle (a crash, a silent change of value, a warning that does
not name the tag or not at the caller's line) the row states the correct outcome and is marked
``xfail(strict=True)`` with what happens instead: a fix shows up as an XPASS, and the mark comes off.

The entry points are the contract test's four drivers plus ``Experiment.log_metrics``,
``Experiment.log_metric`` and ``start_logging`` with a plain ``SummaryWriter`` (event files and all),
each over a recording sink; a few checks then read a real AIM repo back.
"""

from __future__ import annotations

import datetime
import enum
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo  # noqa: E402
from test_contract import ADAPTERS as FRAMEWORK_ADAPTERS  # noqa: E402
from test_contract import _recording  # noqa: E402
from tracelet_callbacks import TraceletValueError, TraceletWarning  # noqa: E402
from tracelet_callbacks.core import records as rec  # noqa: E402
from tracelet_callbacks.testing import RecordingSink  # noqa: E402

STORED, CONVERTED, SKIPPED = "stored", "stored converted", "skipped"
TEXT, AS_EPOCH, AIM_ONLY = "stored as text", "the batch's epoch", "stored, not in TensorBoard"

TAG = "val_loss"  # every value and step row is logged under it: metric "loss", subset "val"
KEPT = {"train/loss": 0.5}  # logged beside it: a skipped row must leave it alone


class Case(NamedTuple):
    name: str
    value: Any
    outcome: str
    stored: Any = None  # what lands: a float (values), (name, context) (tags), a step (steps)
    reason: str = ""  # a regex the one warning (and strict's error) must match
    where: Mapping[str, Case] | None = None  # entry point -> its outcome, where it differs
    broken: Mapping[str, str] | None = None  # entry point ("*": all) -> what happens today (xfail)


# -- the entry points --------------------------------------------------------------------------------


def _experiment(settings: dict[str, Any], batches: list[tuple[Any, dict]]) -> str | None:
    with tracelet.Experiment(**settings) as exp:
        for step, values in batches:
            exp.log_metrics(values, step)
        return exp.hash


def _log_metric(settings: dict[str, Any], batches: list[tuple[Any, dict]]) -> str | None:
    with tracelet.Experiment(**settings) as exp:
        for step, values in batches:
            for tag, value in values.items():
                exp.log_metric(tag, value, step)
        return exp.hash


def _session(settings: dict[str, Any], batches: list[tuple[Any, dict]]) -> str | None:
    """The seed's script API: ``start_logging``, then a plain ``SummaryWriter`` writing event files too."""
    exp = tracelet.start_logging(**settings)
    try:
        writer = SummaryWriter(log_dir="tb")
        try:
            for step, values in batches:
                for tag, value in values.items():
                    writer.add_scalar(tag, value, step)
        finally:
            writer.close()
        return exp.hash
    finally:
        tracelet.stop_logging()


Driver = Callable[[dict[str, Any], list[tuple[Any, dict]]], "str | None"]
ADAPTERS: dict[str, Driver] = {
    **FRAMEWORK_ADAPTERS,
    "experiment": _experiment,
    "log_metric": _log_metric,
    "session": _session,
}
#: Hugging Face's step is the Trainer's own ``global_step``, never the caller's: no step rows there.
STEP_ADAPTERS = [adapter for adapter in ADAPTERS if adapter != "hf"]
#: The entry points that take one tag per call (the others take a dict of them).
ONE_TAG = ("writer", "log_metric", "session")


# -- odd things to log -------------------------------------------------------------------------------


class _Colour(enum.IntEnum):
    RED = 1


class _FloatKind(float):
    pass


class _HasFloat:
    """Not a number type, though ``float()`` reads it."""

    def __float__(self) -> float:
        return 0.5


class _BrokenReal(Fraction):
    """A real-number type whose own conversion fails (a lazy metric whose backend went away)."""

    def __float__(self) -> float:
        raise RuntimeError("the backend went away")


def _generator() -> Iterator[float]:
    yield 0.5


_WIDE_LONGDOUBLE = np.finfo(np.longdouble).max > np.finfo(np.float64).max
_FLOAT8 = getattr(torch, "float8_e4m3fn", None)
_BEYOND_INT64 = 2**63


def _skip(name: str, value: Any, reason: str, **extra: Any) -> Case:
    return Case(name, value, SKIPPED, reason=reason, **extra)


def _as(name: str, value: Any, stored: Any, **extra: Any) -> Case:
    return Case(name, value, CONVERTED, stored=stored, **extra)


def _text(name: str, value: str) -> Case:
    """Skipped, except by accelerate, whose ``log`` contract keeps a string as text."""
    return _skip(name, value, "expected a number, got str", where={"accelerate": Case(name, value, TEXT)})


VALUES: list[Case] = [
    # floats as they are: NaN and the infinities are values a run shows, not errors
    Case("float", 0.5, STORED),
    Case("-0.0", -0.0, STORED),
    Case("nan", math.nan, STORED),
    Case("inf", math.inf, STORED),
    Case("-inf", -math.inf, STORED),
    Case("1e308", 1e308, STORED),
    Case("float max", 1.7976931348623157e308, STORED),
    Case("smallest normal", 2.2250738585072014e-308, STORED),
    Case("subnormal", 5e-324, STORED),
    # Python numbers
    _as("int", 3, 3.0),
    _as("True", True, 1.0),
    _as("False", False, 0.0),
    _as("int64 max", 2**63 - 1, 9.223372036854776e18),
    _as("int64 min", -(2**63), -9.223372036854776e18),
    _as("int beyond 2**53", 2**53 + 1, 9007199254740992.0),  # rounded, as any float is
    _as("Fraction", Fraction(1, 2), 0.5),
    _as("float subclass", _FloatKind(0.5), 0.5),
    _as("IntEnum", _Colour.RED, 1.0),
    # numpy scalars of every width
    _as("np.float16", np.float16(0.5), 0.5),
    _as("np.float32", np.float32(0.1), 0.10000000149011612),
    _as("np.float64", np.float64(0.1), 0.1),
    _as("np.longdouble", np.longdouble(0.5), 0.5),
    _as("np.int8 min", np.int8(-128), -128.0),
    _as("np.int16 min", np.int16(-32768), -32768.0),
    _as("np.int32 max", np.int32(2**31 - 1), 2147483647.0),
    _as("np.int64 max", np.int64(2**63 - 1), 9.223372036854776e18),
    _as("np.uint8 max", np.uint8(255), 255.0),
    _as("np.uint16 max", np.uint16(65535), 65535.0),
    _as("np.uint32 max", np.uint32(2**32 - 1), 4294967295.0),
    _as("np.uint64 max", np.uint64(2**64 - 1), 1.8446744073709552e19),
    _as("np.bool_", np.bool_(True), 1.0),
    _as("np.float32 nan", np.float32("nan"), math.nan),
    _as("np.float64 -inf", np.float64("-inf"), -math.inf),
    # one-element arrays and tensors, of any shape, dtype and autograd state
    _as("0-d array", np.array(0.5), 0.5),
    _as("array (1,)", np.array([0.5]), 0.5),
    _as("array 1x1", np.array([[0.5]]), 0.5),
    _as("object array 1x1", np.array([[0.5]], dtype=object), 0.5),
    _as("masked array, unmasked", np.ma.array([0.5], mask=[False]), 0.5),
    _as("0-d tensor", torch.tensor(0.5), 0.5),
    _as("tensor (1,)", torch.tensor([0.5]), 0.5),
    _as("tensor 1x1", torch.tensor([[0.5]]), 0.5),
    _as("requires_grad tensor", torch.tensor(0.5, requires_grad=True), 0.5),
    _as("tensor with grad_fn", torch.tensor(0.25, requires_grad=True) * 2, 0.5),
    _as("nn.Parameter", torch.nn.Parameter(torch.tensor(0.5)), 0.5),
    _as("float16 tensor", torch.tensor(0.5, dtype=torch.float16), 0.5),
    _as("bfloat16 tensor", torch.tensor(0.5, dtype=torch.bfloat16), 0.5),
    _as("float64 tensor 1e308", torch.tensor(1e308, dtype=torch.float64), 1e308),
    _as("int64 tensor max", torch.tensor(2**63 - 1), 9.223372036854776e18),
    _as("int8 tensor", torch.tensor(-3, dtype=torch.int8), -3.0),
    _as("uint8 tensor", torch.tensor(255, dtype=torch.uint8), 255.0),
    _as("bool tensor", torch.tensor(True), 1.0),
    _as("nan tensor", torch.tensor(math.nan), math.nan),
    _as("-inf tensor", torch.tensor(-math.inf), -math.inf),
    # not numbers at all
    _skip("None", None, "expected a number, got None"),
    _text("str '0.5'", "0.5"),
    _text("str 'nan'", "nan"),
    _text("empty str", ""),
    _skip("bytes", b"0.5", "expected a number, got bytes"),
    _skip("bytearray", bytearray(b"1"), "expected a number, got bytearray"),
    _skip("list of one", [0.5], "expected a number, got list"),
    _skip("list of a tensor", [torch.tensor(0.5)], "expected a number, got list"),
    _skip("tuple", (0.5,), "expected a number, got tuple"),
    _skip("dict", {"a": 0.5}, "expected a number, got dict"),
    _skip("set", {0.5}, "expected a number, got set"),
    _skip("generator", _generator(), "expected a number, got generator"),
    _skip("range", range(1), "expected a number, got range"),
    _skip("object", object(), "expected a number, got object"),
    _skip("a type", float, "expected a number, got type"),
    _skip("a function", _generator, "expected a number, got function"),
    _skip("Ellipsis", ..., "expected a number, got ellipsis"),
    _skip("datetime", datetime.datetime(2024, 1, 1), r"expected a number, got datetime\.datetime"),
    _skip("Path", Path("loss.txt"), r"expected a number, got pathlib\.\w*Path"),
    _skip("has __float__", _HasFloat(), r"expected a number, got \S*_HasFloat"),
    _skip("MagicMock", mock.MagicMock(), "expected a one-element tensor"),  # it looks like a tensor
    # numbers no run can hold as a real float
    _skip("complex", 1j, "expected a number, got complex"),
    _skip("complex, real-valued", complex(0.5, 0), "expected a number, got complex"),
    _skip("Decimal", Decimal("0.5"), r"expected a number, got decimal\.Decimal"),  # not a numbers.Real
    _skip("Decimal NaN", Decimal("NaN"), r"expected a number, got decimal\.Decimal"),
    _skip("10**400", 10**400, "int too large to convert to float"),
    _skip("2**1024", 2**1024, "int too large to convert to float"),
    _skip("huge Fraction", Fraction(10**400, 3), "Fraction cannot be read as a real number"),
    _skip("np.complex64", np.complex64(1j), r"numpy\.complex64 of complex"),
    _skip("np.complex128", np.complex128(0.5 + 0j), r"numpy\.complex128 of complex"),
    _skip("np.str_", np.str_("0.5"), r"numpy\.str_ of str"),
    _skip("np.datetime64", np.datetime64("2024-01-01"), r"numpy\.datetime64 of date"),
    _skip("np.timedelta64", np.timedelta64(1, "s"), r"numpy\.timedelta64 cannot be read as a real number"),
    _skip("np.void", np.zeros(1, dtype=[("a", "f4")])[0], r"numpy\.void of tuple"),
    _skip("object array of None", np.array(None, dtype=object), r"numpy\.ndarray of NoneType"),
    _skip("0-d str array", np.array("x"), r"numpy\.ndarray of str"),
    _skip("object array 10**400", np.array(10**400, dtype=object), r"numpy\.ndarray cannot be read"),
    _skip("complex tensor", torch.tensor(1j), r"torch\.Tensor cannot be read as a real number"),
    # more than one element, or none
    _skip("empty array", np.array([]), r"one-element array, got an array of shape \(0,\)"),
    _skip("array (2,)", np.array([0.5, 1.0]), r"one-element array, got an array of shape \(2,\)"),
    _skip("empty tensor", torch.tensor([]), r"one-element tensor, got a tensor of shape \(0,\)"),
    _skip("tensor (0, 3)", torch.zeros(0, 3), r"one-element tensor, got a tensor of shape \(0, 3\)"),
    _skip("tensor (3,)", torch.ones(3), r"one-element tensor, got a tensor of shape \(3,\)"),
    _skip("tensor 1x2", torch.ones(1, 2), r"one-element tensor, got a tensor of shape \(1, 2\)"),
    # these crashed the caller (the first three) or were stored silently (the masked ones)
    _skip("meta tensor", torch.empty((), device="meta"), "meta tensors"),
    _skip("sparse tensor (1,)", torch.tensor([0.5]).to_sparse(), "sparse tensors"),
    _skip("Real whose float() raises", _BrokenReal(1, 2), "cannot be read as a real number"),
    _skip("np.ma.masked", np.ma.masked, "masked"),
    _skip("masked array, masked", np.ma.array([0.5], mask=[True]), "masked"),
]
if _WIDE_LONGDOUBLE:  # a finite number beyond float64 (x86's 80-bit long double)
    VALUES.append(_skip("np.longdouble 1e400", np.longdouble("1e400"), "too large for a 64-bit float"))
if _FLOAT8 is not None:
    VALUES.append(
        _as(
            "float8 tensor",
            torch.tensor(0.5).to(_FLOAT8),
            0.5,
            where={"session": Case("float8 tensor", None, AIM_ONLY, stored=0.5, reason="TensorBoard")},
        )
    )


def _kept(name: str, tag: Any, as_name: str, context: dict[str, Any] | None = None, **extra: Any) -> Case:
    """A tag stored as metric ``as_name``; Hugging Face's table puts one it leaves whole in subset
    ``train`` (its Trainer logs training values unprefixed)."""
    context = context or {}
    hf = context if "subset" in context else {"subset": "train", **context}
    where = {"hf": Case(name, tag, STORED, stored=(as_name, hf))}
    return Case(name, tag, STORED, stored=(as_name, context), where=where, **extra)


def _not_a_str(name: str, tag: Any, tensorboard_takes_it: bool = False) -> Case:
    """A non-string key: the dict entry points store it under ``str(key)``, and so should the one-tag
    calls, which crash today; TensorBoard's own ``add_scalar`` refuses most of them (one warning)."""
    case = _kept(name, tag, str(tag))
    if not tensorboard_takes_it:
        refused = Case(name, tag, AIM_ONLY, stored=(str(tag), {}), reason="TensorBoard")
        case = case._replace(where={**case.where, "session": refused})
    return case


_EMPTY = "an empty name: aim's queries fail on it"
_HUGE_DATALOADER = f"val_loss/dataloader_idx_{_BEYOND_INT64}"

TAGS: list[Case] = [
    _skip("empty", "", _EMPTY),
    _skip("spaces", "   ", _EMPTY),
    _skip("tab and newline", "\t\n", _EMPTY),
    _skip("subset and a blank", "train/ ", _EMPTY),
    _kept("10k characters", "x" * 10_000, "x" * 10_000),
    _kept("slashes", "a/b//c/", "a/b//c/"),
    _kept("leading slash", "/loss", "/loss"),
    _kept("only a slash", "/", "/"),
    _kept("unicode", "损失/λ", "损失/λ"),
    _kept("emoji", "loss🔥", "loss🔥"),
    _kept("newline inside", "loss\nval", "loss\nval"),
    _kept("dots", "model.layer.loss", "model.layer.loss"),
    _kept("NUL inside", "a\x00b", "a\x00b"),
    _kept("quotes", 'it\'s "q"', 'it\'s "q"'),
    _kept("backslash", "a\\b", "a\\b"),
    _kept("trailing space", "loss ", "loss "),
    _kept("a subset word alone", "val", "val"),
    _kept("a subset word and _", "val_", "val_"),
    _kept("a suffix alone", "_step", "_step"),
    _kept("aim's system prefix", "__system__cpu", "__system__cpu"),
    _kept(
        "dataloader index in int64",
        f"val_loss/dataloader_idx_{2**63 - 1}",
        "loss",
        {"subset": "val", "dataloader": 2**63 - 1},
    ),
    _skip("dataloader index beyond int64", _HUGE_DATALOADER, "beyond the 64-bit integers"),
    Case(
        "epoch",
        "epoch",
        AS_EPOCH,
        stored=[0.25, 0.25],
        # a TensorBoard tag or a single metric named "epoch" is a chart the caller asked for
        where={
            **{adapter: Case("epoch", "epoch", STORED, stored=("epoch", {})) for adapter in ONE_TAG},
            "hf": Case("epoch", "epoch", AS_EPOCH, stored=[0.75, 1.0]),  # state.epoch wins over the key
        },
    ),
    _not_a_str("int key", 1),
    _not_a_str("float key", 0.5),
    _not_a_str("bool key", True),
    _not_a_str("None key", None, tensorboard_takes_it=True),
    _not_a_str("tuple key", ("a", 1)),
    _not_a_str("bytes key", b"loss", tensorboard_takes_it=True),
]

STEPS: list[Case] = [
    Case("0", 0, STORED),
    Case("negative", -1, STORED),
    Case("int64 max", 2**63 - 1, STORED),
    Case("-(int64 max)", -(2**63 - 1), STORED),
    Case("None (aim's own)", None, STORED),
    _as("whole float", 2.0, 2),
    _as("1e18", 1e18, 10**18),
    _as("True", True, 1),
    _as("False", False, 0),
    _as("np.int64", np.int64(3), 3),
    _as("np.uint8", np.uint8(3), 3),
    _as("np.float32 whole", np.float32(4.0), 4),
    _as("np.bool_", np.bool_(True), 1),
    _as("0-d tensor", torch.tensor(5), 5),
    _as("tensor (1,)", torch.tensor([6]), 6),
    _as("Fraction 6/2", Fraction(6, 2), 3),
    _skip("1.5", 1.5, "a step must be a whole number, got 1.5"),
    _skip("tensor 5.5", torch.tensor(5.5), "a step must be a whole number"),
    _skip("str", "7", "a step must be a number, got str '7'"),
    _skip("bytes", b"3", "a step must be a number, got bytes"),
    _skip("2**63", _BEYOND_INT64, "a step must fit in 64 bits"),
    _skip("-(2**63)", -_BEYOND_INT64, "a step must fit in 64 bits"),
    _skip("np.uint64 max", np.uint64(2**64 - 1), "a step must fit in 64 bits"),
    _skip("1e20", 1e20, "a step must fit in 64 bits"),
    _skip("nan", math.nan, "a step must be a finite number"),
    _skip("inf", math.inf, "a step must be a finite number"),
    _skip("-inf", -math.inf, "a step must be a finite number"),
    _skip("tensor (2,)", torch.tensor([1, 2]), "a step must be a number: expected a one-element tensor"),
    _skip("Decimal", Decimal(3), r"a step must be a number: expected a number, got decimal\.Decimal"),
    _skip("complex", 1j, "a step must be a number: expected a number, got complex"),
    _skip("list", [3], "a step must be a number: expected a number, got list"),
    _skip("object", object(), "a step must be a number: expected a number, got object"),
]


# -- helpers -----------------------------------------------------------------------------------------


def _in(case: Case, adapter: str) -> Case:
    """The row as ``adapter`` sees it."""
    return (case.where or {}).get(adapter, case)


def _grid(
    cases: list[Case], adapters: list[str] | dict[str, Any], only: str | None = None, every: int = 1
) -> list[Any]:
    """``(case, adapter)`` params, xfail where the row is broken; ``every=3``: each row through every
    third entry point (a different third per row), so each entry point still sees a third of them."""
    params = []
    for row, case in enumerate(cases):
        for column, adapter in enumerate(adapters):
            if (row + column) % every or (only is not None and _in(case, adapter).outcome != only):
                continue
            why = (case.broken or {}).get(adapter) or (case.broken or {}).get("*")
            marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
            params.append(pytest.param(case, adapter, id=f"{case.name}-{adapter}", marks=marks))
    return params


@pytest.fixture
def sinks(repo_dir: Path) -> Iterator[list[RecordingSink]]:
    """Every sink an entry point opens during the test, in order; no AIM repo is touched."""
    yield []
    assert not (repo_dir / "aim" / ".aim").exists()


def _drive(adapter: str, repo_dir: Path, sinks: list, batches: list, **extra: Any) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ADAPTERS[adapter](_recording(repo_dir, sinks, **extra), batches)
    return caught


def _ours(caught: list) -> list:
    return [w for w in caught if issubclass(w.category, TraceletWarning)]


def _once(caught: list, tag: Any, reason: str) -> None:
    """Exactly one warning of ours, naming ``tag`` (or ``str(tag)``) and matching ``reason``."""
    ours = [str(w.message) for w in _ours(caught)]
    assert len(ours) == 1 and (repr(tag) in ours[0] or repr(str(tag)) in ours[0]), ours
    assert re.search(reason, ours[0]), (reason, ours[0])


def _one(sinks: list[RecordingSink]) -> RecordingSink:
    assert len(sinks) == 1, f"{len(sinks)} runs for one job"
    return sinks[0]


def _same(found: Any, expected: Any) -> bool:
    """Equal as floats, NaN equal to NaN and -0.0 apart from 0.0."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(found, float) and math.isnan(found)
    return found == expected and math.copysign(1, found) == math.copysign(1, expected)


def _series(sink: RecordingSink) -> dict[tuple, list]:
    found: dict[tuple, list] = {}
    for r in sink.scalars():
        found.setdefault((r.name, tuple(sorted(r.context.items()))), []).append((r.step, r.value))
    return found


# -- 1. the catalogue, through a recording sink ------------------------------------------------------


def test_the_catalogue_holds_the_inputs_the_issue_asks_for() -> None:
    for table in (VALUES, TAGS, STEPS):
        assert len({case.name for case in table}) == len(table), "row names are unique"
    assert len(VALUES) + len(TAGS) + len(STEPS) >= 60


@pytest.mark.parametrize(("case", "adapter"), _grid(VALUES, ADAPTERS))
def test_each_value_has_its_pinned_outcome(case: Case, adapter: str, repo_dir: Path, sinks: list) -> None:
    row = _in(case, adapter)
    # twice: a skipped value warns once per tag, and the loop goes on
    caught = _drive(adapter, repo_dir, sinks, [(step, {TAG: case.value, **KEPT}) for step in (3, 4)])
    sink = _one(sinks)
    assert sink.series("loss", subset="train") == [(3, 0.5), (4, 0.5)]  # the rest of the dict is kept
    found = sink.series("loss", subset="val")
    if row.outcome == SKIPPED:
        assert found == []
        _once(caught, TAG, row.reason)
    elif row.outcome == TEXT:
        assert found == [] and _ours(caught) == []
        texts = [(t.name, t.context, t.step, t.text) for t in sink.of(rec.Text)]
        assert texts == [("loss", {"subset": "val"}, step, case.value) for step in (3, 4)]
    else:
        expected = case.value if row.outcome == STORED else row.stored
        assert [step for step, _ in found] == [3, 4], found
        assert all(type(value) is float and _same(value, expected) for _, value in found), found
        if row.outcome == AIM_ONLY:
            _once(caught, TAG, row.reason)
        else:
            assert _ours(caught) == [], [str(w.message) for w in caught]
    assert sink.closed_with == "finished"


@pytest.mark.parametrize(("case", "adapter"), _grid(TAGS, ADAPTERS))
def test_each_tag_has_its_pinned_outcome(case: Case, adapter: str, repo_dir: Path, sinks: list) -> None:
    row = _in(case, adapter)
    caught = _drive(adapter, repo_dir, sinks, [(step, {case.value: 0.25, **KEPT}) for step in (3, 4)])
    sink = _one(sinks)
    found = _series(sink)
    assert found.pop(("loss", (("subset", "train"),))) == [(3, 0.5), (4, 0.5)]
    if row.outcome == SKIPPED:
        assert found == {}
        _once(caught, case.value, row.reason)
        return
    if row.outcome == AIM_ONLY:
        _once(caught, case.value, row.reason)
    else:
        assert _ours(caught) == [], [str(w.message) for w in caught]
    if row.outcome == AS_EPOCH:
        assert found == {}
        assert [r.epoch for r in sink.scalars()] == row.stored
    else:
        name, context = row.stored
        assert found == {(name, tuple(sorted(context.items()))): [(3, 0.25), (4, 0.25)]}


@pytest.mark.parametrize(("case", "adapter"), _grid(STEPS, STEP_ADAPTERS))
def test_each_step_has_its_pinned_outcome(case: Case, adapter: str, repo_dir: Path, sinks: list) -> None:
    row = _in(case, adapter)
    caught = _drive(adapter, repo_dir, sinks, [(case.value, {TAG: 0.25}), (4, {TAG: 0.5})])
    found = _one(sinks).series("loss", subset="val")
    if row.outcome == SKIPPED:
        assert found == [(4, 0.5)]  # the next step is stored: training goes on
        _once(caught, TAG, row.reason)
        return
    expected = case.value if row.outcome == STORED else row.stored
    assert found == [(expected, 0.25), (4, 0.5)]
    assert type(found[0][0]) is type(expected)  # an int (or aim's own None), never a float or a tensor
    assert _ours(caught) == [], [str(w.message) for w in caught]


def _one_batch(kind: str, bad: Any) -> list[tuple[Any, dict]]:
    """One call's worth with ``bad`` as a value, a tag or a step."""
    if kind == "value":
        return [(3, {TAG: bad, **KEPT})]
    if kind == "tag":
        return [(3, {bad: 0.25, **KEPT})]
    return [(bad, {TAG: 0.25})]


def _strict_grid() -> list[Any]:
    return [
        pytest.param(kind, *param.values, id=f"{kind}-{param.id}", marks=param.marks)
        for kind, table, adapters in (
            ("value", VALUES, ADAPTERS),
            ("tag", TAGS, ADAPTERS),
            ("step", STEPS, STEP_ADAPTERS),
        )
        for param in _grid(table, adapters, only=SKIPPED, every=3)
    ]


@pytest.mark.parametrize(("kind", "case", "adapter"), _strict_grid())
def test_with_strict_every_skipped_row_raises_our_error(
    kind: str, case: Case, adapter: str, repo_dir: Path, sinks: list
) -> None:
    batches = _one_batch(kind, case.value)
    named = case.value if kind == "tag" else TAG
    with pytest.raises(TraceletValueError, match=re.escape(repr(named))):
        _drive(adapter, repo_dir, sinks, batches, strict=True)


_STRICT_STORED = ["nan", "-0.0", "True", "np.float32", "tensor (1,)", "bfloat16 tensor", "int beyond 2**53"]


@pytest.mark.parametrize(
    ("case", "adapter"), _grid([c for c in VALUES if c.name in _STRICT_STORED], ADAPTERS)
)
def test_with_strict_a_stored_row_is_stored_all_the_same(
    case: Case, adapter: str, repo_dir: Path, sinks: list
) -> None:
    caught = _drive(adapter, repo_dir, sinks, [(3, {TAG: case.value})], strict=True)
    (point,) = _one(sinks).series("loss", subset="val")
    expected = case.value if case.outcome == STORED else case.stored
    assert point[0] == 3 and _same(point[1], expected)
    assert _ours(caught) == []


_AT_THE_CALLERS_LINE = [
    pytest.param(kind, adapter, id=f"{kind}-{adapter}")
    for kind in ("value", "tag", "step")
    for adapter in ADAPTERS
    if not (kind == "step" and adapter == "hf")
]


@pytest.mark.parametrize(("kind", "adapter"), _AT_THE_CALLERS_LINE)
def test_the_warning_points_at_the_line_that_logged(
    kind: str, adapter: str, repo_dir: Path, sinks: list
) -> None:
    bad = {"value": None, "tag": "", "step": "7"}[kind]
    caught = _drive(adapter, repo_dir, sinks, _one_batch(kind, bad))
    (warning,) = _ours(caught)
    assert warning.filename == ADAPTERS[adapter].__code__.co_filename, (warning.filename, warning.lineno)


# -- 2. through a real AIM repo ----------------------------------------------------------------------


def _read(repo: Path, run_hash: str) -> dict[tuple, dict]:
    """``{(name, context items): {step: value}}`` of one run, through ``Repo.query_metrics``."""
    found = {}
    for metric in open_repo(repo).query_metrics(f"run.hash == {run_hash!r}").iter():
        steps, (values, *_rest) = metric.data.items_list()
        key = (metric.name, tuple(sorted(metric.context.to_dict().items())))
        found[key] = dict(zip(steps, values, strict=True))
    return found


def _sound(case: Case, adapter: str) -> bool:
    """A row whose outcome through ``adapter`` is its own, holds today, and is stored or skipped."""
    broken = case.broken or {}
    fine = adapter not in broken and "*" not in broken
    return fine and _in(case, adapter) is case and case.outcome in (STORED, CONVERTED, SKIPPED)


@pytest.mark.slow
def test_in_a_real_repo_stored_rows_are_stored_and_skipped_ones_leave_the_dict_intact(repo_dir: Path) -> None:
    logged: dict[Any, Any] = {}
    expected: dict[tuple, Any] = {}
    skipped = 0
    for index, case in enumerate(c for c in VALUES if _sound(c, "experiment")):
        tag = f"value{index:03d}"
        logged[tag] = case.value
        if case.outcome == SKIPPED:
            skipped += 1
        else:
            expected[(tag, ())] = case.value if case.outcome == STORED else case.stored
    for index, case in enumerate(c for c in TAGS if _sound(c, "experiment")):
        if case.value in logged:  # True == 1 as a dict key
            continue
        logged[case.value] = float(index)
        if case.outcome == SKIPPED:
            skipped += 1
        else:
            name, context = case.stored
            expected[(name, tuple(sorted(context.items())))] = float(index)
    exp = tracelet.Experiment(repo_path=str(repo_dir), run_name="catalogue", system_tracking_interval=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.log_metrics(logged, step=3)
        run_hash = exp.hash
        exp.close()
    assert len(_ours(caught)) == skipped, [str(w.message) for w in _ours(caught)]  # one each, none later
    found = _read(repo_dir, run_hash)
    assert sorted(found, key=repr) == sorted(expected, key=repr)
    for key, value in expected.items():
        assert list(found[key]) == [3] and _same(found[key][3], value), (key, found[key], value)


@pytest.mark.slow
def test_in_a_real_repo_each_step_lands_where_the_table_says(repo_dir: Path) -> None:
    rows = [case for case in STEPS if _sound(case, "log_metric")]
    exp = tracelet.start_logging(repo_path=str(repo_dir), system_tracking_interval=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index, case in enumerate(rows):
            exp.log_metric(f"step{index:02d}", 0.25, iteration=case.value)
        run_hash = exp.hash
        tracelet.stop_logging()
    assert len(_ours(caught)) == sum(case.outcome == SKIPPED for case in rows)
    found = _read(repo_dir, run_hash)
    for index, case in enumerate(rows):
        series = found.get((f"step{index:02d}", ()))
        if case.outcome == SKIPPED:
            assert series is None, case.name
        elif case.value is None:  # aim numbers it
            assert list(series.values()) == [0.25], case.name
        else:
            assert series == {case.value if case.outcome == STORED else case.stored: 0.25}, case.name


@pytest.mark.slow
def test_in_a_real_repo_a_dataloader_index_beyond_int64_is_skipped_at_the_callers_line(
    repo_dir: Path,
) -> None:
    exp = tracelet.Experiment(repo_path=str(repo_dir), system_tracking_interval=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp.log_metrics({_HUGE_DATALOADER: 0.25, **KEPT}, step=3)
        run_hash = exp.hash
        exp.close()
    ours = _ours(caught)
    assert len(ours) == 1 and repr(_HUGE_DATALOADER) in str(ours[0].message), [str(w.message) for w in ours]
    assert ours[0].filename == __file__
    assert _read(repo_dir, run_hash) == {("loss", (("subset", "train"),)): {3: 0.5}}
