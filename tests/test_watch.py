"""``watch()``: per-layer gradient / weight norms and histograms every ``log_freq`` optimizer steps, and
the first non-finite gradient or loss reported once, on every entry point, read back from real AIM repos.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from aim.storage.context import Context  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.optimizer import _global_optimizer_post_hooks as HOOKS  # noqa: E402

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import open_repo, sequence_names, series  # noqa: E402

FAST = {"writer": "thread", "system_tracking_interval": None}  # no writer process to start
LAYERS = ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")
EVERY_TEN = [10, 20, 30, 40, 50]


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    """One intra-op thread (tiny models: on a busy 2-core box threads only contend, 30 ms a step instead
    of 1), and no optimizer hook left behind for the next test, whatever this one asserted."""
    threads, hooks = torch.get_num_threads(), set(HOOKS)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for key in set(HOOKS) - hooks:
        del HOOKS[key]


@pytest.fixture(scope="module")
def _shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("watch") / "aim"


@pytest.fixture
def repo(repo_dir: Path, _shared_repo: Path) -> Path:
    """One AIM repo for the fast tests, each reading back its own run by hash: aim creates a new repo's
    database with a migration subprocess (seconds), which one repo per test would pay each time."""
    return _shared_repo


def read_run(repo: Path, run_hash: str) -> Any:
    """The run, read through a fresh ``aim.Repo``: ``aim.Run(hash, repo=path)`` takes aim's pooled Repo of
    that path, which stays alive while any earlier read-back ``Run`` does (an xfail's traceback keeps
    one) and then does not see params written since; with a repo shared between tests that matters."""
    return open_repo(repo).get_run(run_hash)


def _experiment(repo: Path, **settings: Any) -> Any:
    return tracelet.Experiment(repo_path=str(repo), **FAST, **settings)


def _mlp(device: str = "cpu") -> nn.Sequential:
    """Three Linear layers: parameters ``0.*``, ``2.*`` and ``4.*``."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)).to(device)


class Loop:
    """A plain SGD loop over a fixed batch that remembers, per step, what the test computed by hand:
    the gradients the optimizer used, and the weights after its step."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(32, 4, generator=generator).to(device)
        self.y = torch.randn(32, 1, generator=generator).to(device)
        self.step = 0
        self.grads: dict[int, dict[str, Any]] = {}
        self.weights: dict[int, dict[str, Any]] = {}

    def run(
        self,
        steps: int,
        exp: Any = None,
        *,
        nan_at: int | None = None,
        log_loss: bool = True,
    ) -> None:
        for _ in range(steps):
            self.step += 1
            self.optimizer.zero_grad()
            loss = nn.functional.mse_loss(self.model(self.x), self.y)
            loss.backward()
            if self.step == nan_at:
                self.model[2].weight.grad[1, 3] = float("nan")  # after backward, before the step
            self.grads[self.step] = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}
            self.optimizer.step()
            self.weights[self.step] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            if log_loss and exp is not None:
                exp.log_metric("train/loss", loss.item(), iteration=self.step)

    def grad_norm(self, step: int, layer: str) -> float:
        return self.grads[step][layer].norm().item()

    def total_norm(self, step: int) -> float:
        return math.sqrt(sum(g.norm().item() ** 2 for g in self.grads[step].values()))

    def weight_norm(self, step: int, layer: str) -> float:
        return self.weights[step][layer].norm().item()


@contextmanager
def _ours() -> Iterator[list[str]]:
    """The messages of the TraceletWarnings raised inside the block."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield found
    found += [str(w.message) for w in caught if issubclass(w.category, tracelet.TraceletWarning)]


def _distribution_steps(run: Any, name: str) -> list[int]:
    sequence = run.get_distribution_sequence(name, Context({}))
    assert sequence is not None, name
    steps, _columns = sequence.data.items_list()
    return list(steps)


def _watched_names(run: Any) -> tuple[set[str], set[str]]:
    """(metric names, distribution names) the watcher wrote, whatever else the trainer logged."""
    metrics = {
        name for name in sequence_names(run, "metric") if name.startswith(("grad_norm/", "weight_norm/"))
    }
    return metrics, sequence_names(run, "distributions")


# -- the done-when: norms and histograms at exactly every log_freq steps -----------------------------


def test_all_logs_norms_and_histograms_every_log_freq_steps(repo: Path) -> None:
    loop = Loop(_mlp())
    with _ours() as warned, _experiment(repo) as exp:
        exp.watch(loop.model, log="all", log_freq=10)
        loop.run(50, exp)
        run_hash = exp.hash
    assert warned == []

    run = read_run(repo, run_hash)
    metrics, distributions = _watched_names(run)
    assert metrics == {f"grad_norm/{layer}" for layer in LAYERS} | {"grad_norm/total"} | {
        f"weight_norm/{layer}" for layer in LAYERS
    }
    assert distributions == {f"{kind}/{layer}" for kind in ("gradients", "weights") for layer in LAYERS}
    for layer in LAYERS:
        grad = series(repo, f"grad_norm/{layer}", {}, run_hash)
        weight = series(repo, f"weight_norm/{layer}", {}, run_hash)
        assert sorted(grad) == sorted(weight) == EVERY_TEN
        # the gradients the optimizer used at that step, and the weights it left
        assert grad == pytest.approx({s: loop.grad_norm(s, layer) for s in EVERY_TEN}, rel=1e-5)
        assert weight == pytest.approx({s: loop.weight_norm(s, layer) for s in EVERY_TEN}, rel=1e-5)
    total = series(repo, "grad_norm/total", {}, run_hash)
    assert total == pytest.approx({s: loop.total_norm(s) for s in EVERY_TEN}, rel=1e-5)
    for name in distributions:
        assert _distribution_steps(run, name) == EVERY_TEN, name

    # a histogram is the tensor of that step: its range is the tensor's, its counts cover every element
    for kind, kept in (("gradients", loop.grads), ("weights", loop.weights)):
        sequence = run.get_distribution_sequence(f"{kind}/2.weight", Context({}))
        steps, (values, *_rest) = sequence.data.items_list()
        first = values[steps.index(10)]
        tensor = kept[10]["2.weight"]
        assert first.bin_count == 64
        assert first.range == pytest.approx([tensor.min().item(), tensor.max().item()], rel=1e-5)
        assert sum(first.to_np_histogram()[0]) == tensor.numel()


# -- health ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "nan_at", "log_loss"),
    [
        (50, 23, True),  # the NaN loss of step 24 triggers the search: the gradient of 23 is named
        (50, 23, False),  # found when step 30 is written
        (48, 47, False),  # after the last write: found when the run closes, health still written
    ],
    ids=["seen-at-nan-loss", "seen-at-write", "seen-at-close"],
)
def test_a_nan_gradient_is_reported_once_with_its_step_and_layer(
    repo: Path, steps: int, nan_at: int, log_loss: bool
) -> None:
    loop = Loop(_mlp())
    with _ours() as warned, _experiment(repo) as exp:
        exp.watch(loop.model, log="all", log_freq=10)
        loop.run(steps, exp, nan_at=nan_at, log_loss=log_loss)
        run_hash = exp.hash
    assert loop.step == steps  # training went on
    if log_loss:
        assert math.isnan(series(repo, "loss", {"subset": "train"}, run_hash)[steps])
    assert len(warned) == 1, warned
    assert f"step {nan_at}" in warned[0] and "'2.weight'" in warned[0] and "nan" in warned[0]
    health = read_run(repo, run_hash)["health"]
    assert health == {
        "status": "non-finite",
        "step": nan_at,
        "what": "gradient",
        "layer": "2.weight",
        "value": "nan",
    }
    # records go on being written at every log step
    grad = series(repo, "grad_norm/2.weight", {}, run_hash)
    assert sorted(grad) == [s for s in EVERY_TEN if s <= steps]
    assert all(math.isfinite(grad[s]) for s in grad if s < nan_at)


@pytest.mark.parametrize(
    ("value", "shown"), [(float("nan"), "nan"), (float("inf"), "inf"), (-math.inf, "-inf")]
)
@pytest.mark.parametrize("how", ["log_metric", "log_metrics", "tensor"])
def test_a_non_finite_loss_with_finite_gradients_is_reported_as_the_loss(
    repo: Path, value: float, shown: str, how: str
) -> None:
    loop = Loop(_mlp())
    with _ours() as warned, _experiment(repo) as exp:
        exp.watch(loop.model, log=None, log_freq=10)
        loop.run(6, exp)
        exp.log_metric("val/acc", float("nan"), iteration=6)  # not a loss: nobody's business here
        if how == "log_metric":
            exp.log_metric("train/loss", value, iteration=7)
        elif how == "tensor":  # as a loop logs its loss most often: a CPU tensor
            exp.log_metric("train/loss", torch.tensor(value), iteration=7)
        else:
            exp.log_metrics({"train/loss": value, "lr": 0.1}, step=7)
        loop.run(5, exp)
        exp.log_metric("train/loss", float("nan"), iteration=12)  # reported once
        run_hash = exp.hash
    assert len(warned) == 1, warned
    assert "step 7" in warned[0] and "'loss'" in warned[0] and shown in warned[0]
    health = read_run(repo, run_hash)["health"]
    assert health == {"status": "non-finite", "step": 7, "what": "loss", "metric": "loss", "value": shown}


def test_a_healthy_run_has_no_health_param(repo: Path) -> None:
    loop = Loop(_mlp())
    with _ours() as warned, _experiment(repo) as exp:
        exp.watch(loop.model, log=None, log_freq=5)
        loop.run(12, exp)
        run_hash = exp.hash
    assert warned == []
    assert read_run(repo, run_hash).get("health") is None


# -- unwatch and the hook ----------------------------------------------------------------------------


def test_unwatch_removes_the_hook_and_stops_the_records(repo: Path) -> None:
    before = len(HOOKS)
    loop, other = Loop(_mlp()), Loop(_mlp())
    with _ours() as warned, _experiment(repo) as exp:
        exp.watch(loop.model, log="gradients", log_freq=5)
        exp.watch(loop.model, log="gradients", log_freq=5)  # watching again replaces: one hook
        assert len(HOOKS) == before + 1
        loop.run(10, exp)
        exp.unwatch()
        assert len(HOOKS) == before
        loop.run(10, exp, nan_at=15)  # nothing computed any more: no record, no health report
        exp.unwatch()  # twice is fine

        exp.watch(loop.model, log="parameters", log_freq=5)
        exp.watch(other.model, log="parameters", log_freq=5)
        assert len(HOOKS) == before + 2
        exp.unwatch(loop.model)  # the other model stays watched
        assert len(HOOKS) == before + 1
        other.run(5, exp)
        run_hash = exp.hash
    assert len(HOOKS) == before  # close() took the last hook off
    assert warned == []
    assert sorted(series(repo, "grad_norm/0.weight", {}, run_hash)) == [5, 10]
    assert sorted(series(repo, "weight_norm/0.weight", {}, run_hash)) == [5]  # ``other``'s step 5
    assert read_run(repo, run_hash).get("health") is None


def test_an_optimizer_of_other_parameters_is_not_counted(repo: Path) -> None:
    loop, stranger = Loop(_mlp()), Loop(_mlp())
    with _experiment(repo) as exp:
        exp.watch(loop.model, log="gradients", log_freq=5)
        stranger.run(7)  # steps of an optimizer that does not hold the watched model
        loop.run(10, exp)
        run_hash = exp.hash
    got = series(repo, "grad_norm/4.weight", {}, run_hash)
    assert got == pytest.approx({s: loop.grad_norm(s, "4.weight") for s in (5, 10)}, rel=1e-5)


# -- what ``log`` selects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "metric_prefixes", "histogram_prefixes"),
    [
        (None, set(), set()),
        ("parameters", {"weight_norm"}, {"weights"}),
        ("gradients", {"grad_norm"}, {"gradients"}),
    ],
)
def test_log_selects_the_series_and_health_is_always_checked(
    repo: Path, log: str | None, metric_prefixes: set[str], histogram_prefixes: set[str]
) -> None:
    loop = Loop(_mlp())
    with _ours() as warned, _experiment(repo) as exp:
        exp.watch(loop.model, log=log, log_freq=5)
        loop.run(10, exp)
        loop.run(2, exp, nan_at=11)  # no write after it: the NaN loss of step 12 brings it to light
        run_hash = exp.hash
    run = read_run(repo, run_hash)
    metrics, distributions = _watched_names(run)
    assert {name.split("/")[0] for name in metrics} == metric_prefixes
    assert {name.split("/")[0] for name in distributions} == histogram_prefixes
    if log == "parameters":
        assert metrics == {f"weight_norm/{layer}" for layer in LAYERS}
    for name in distributions:
        assert _distribution_steps(run, name) == [5, 10]
    assert len(warned) == 1 and "step 11" in warned[0]
    assert run["health"]["step"] == 11 and run["health"]["layer"] == "2.weight"


# -- bad arguments and settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log": "weights"}, "watch log must be one of"),
        ({"log": "all", "log_freq": 0}, "log_freq must be a positive int"),
        ({"log_freq": -3}, "log_freq must be a positive int"),
        ({"log_freq": 2.5}, "log_freq must be a positive int"),
        ({"log_freq": True}, "log_freq must be a positive int"),
    ],
)
def test_bad_watch_arguments_fail_at_the_call(repo: Path, kwargs: dict, message: str) -> None:
    before = len(HOOKS)
    exp = _experiment(repo)
    with pytest.raises(ValueError, match=message):
        exp.watch(_mlp(), **kwargs)
    assert len(HOOKS) == before
    assert not exp.is_open  # nothing was opened either
    exp.close()


@pytest.mark.parametrize(
    ("entry", "framework"),
    [
        ("Experiment", None),
        ("TraceletAimLogger", "lightning"),
        ("TraceletCallback", "transformers"),
        ("TraceletAimTracker", "accelerate"),
    ],
)
def test_bad_watch_settings_fail_at_construction(repo_dir: Path, entry: str, framework: str | None) -> None:
    if framework is not None:
        pytest.importorskip(framework)
    make = getattr(tracelet, entry)
    with pytest.raises(ValueError, match="watch must be one of"):
        make(repo_path=str(repo_dir), watch="weights")
    with pytest.raises(ValueError, match="watch must be one of"):
        make(config={"watch": "weights"})  # a settings dict is checked as strictly
    for freq in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="watch_freq must be a positive int"):
            make(repo_path=str(repo_dir), watch="all", watch_freq=freq)
    assert list(repo_dir.iterdir()) == []  # and nothing was written


def test_watch_settings_are_read_from_the_environment(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_WATCH", "all")
    monkeypatch.setenv("TRACELET_WATCH_FREQ", "7")
    config = tracelet.Experiment().config
    assert (config.watch, config.watch_freq) == ("all", 7)
    assert tracelet.Experiment(watch="gradients", watch_freq=3).config.watch == "gradients"  # keywords win
    monkeypatch.setenv("TRACELET_WATCH", "off")
    assert tracelet.Experiment().config.watch is None
    monkeypatch.setenv("TRACELET_WATCH", "weights")
    with pytest.raises(ValueError, match="watch must be one of"):
        tracelet.Experiment()
    monkeypatch.setenv("TRACELET_WATCH", "parameters")
    monkeypatch.setenv("TRACELET_WATCH_FREQ", "often")
    with pytest.raises(ValueError, match="TRACELET_WATCH_FREQ"):
        tracelet.Experiment()


def test_a_disabled_stand_in_watches_nothing(repo: Path) -> None:
    before = len(HOOKS)
    exp = tracelet.Experiment(enabled=False)
    exp.watch(_mlp(), log="all", log_freq=1)
    assert len(HOOKS) == before
    exp.unwatch()


# -- the adapters (real trainers) --------------------------------------------------------------------


def _lightning_fit(
    repo: Path, logger_settings: dict, before_fit: Callable[[Any, Any], None] | None = None
) -> Any:
    pl = pytest.importorskip("lightning.pytorch")
    from lightning_helpers import classes, trainer_kwargs

    module_type, data_type = classes(pl)
    torch.manual_seed(0)
    module = module_type()
    logger = tracelet.TraceletAimLogger(repo_path=str(repo), **FAST, **logger_settings)
    if before_fit is not None:
        before_fit(logger, module)
    trainer = pl.Trainer(logger=logger, **trainer_kwargs(max_epochs=10, max_steps=20, log_every_n_steps=5))
    trainer.fit(module, datamodule=data_type())
    assert trainer.global_step == 20
    return logger


@pytest.mark.slow
def test_lightning_watch_setting_logs_at_the_trainers_global_step(repo_dir: Path) -> None:
    before = len(HOOKS)
    with _ours() as warned:
        logger = _lightning_fit(repo_dir, {"watch": "gradients", "watch_freq": 5})
    assert warned == []
    run_hash = logger.version
    run = read_run(repo_dir, run_hash)
    metrics, distributions = _watched_names(run)
    # the first layer is frozen: only the head's parameters are watched
    assert metrics == {"grad_norm/head.weight", "grad_norm/head.bias", "grad_norm/total"}
    assert distributions == {"gradients/head.weight", "gradients/head.bias"}
    for name in metrics:
        assert sorted(series(repo_dir, name, {}, run_hash)) == [5, 10, 15, 20], name
    assert _distribution_steps(run, "gradients/head.weight") == [5, 10, 15, 20]
    logger.unwatch()
    assert len(HOOKS) == before


@pytest.mark.slow
def test_lightning_explicit_watch_before_fit(repo_dir: Path) -> None:
    before = len(HOOKS)
    logger = _lightning_fit(repo_dir, {}, lambda logger, module: logger.watch(module, log="all", log_freq=5))
    run_hash = logger.version
    run = read_run(repo_dir, run_hash)
    metrics, distributions = _watched_names(run)
    assert metrics == {
        f"{kind}/head.{p}" for kind in ("grad_norm", "weight_norm") for p in ("weight", "bias")
    } | {"grad_norm/total"}  # the frozen body is not watched
    assert sorted(series(repo_dir, "weight_norm/head.weight", {}, run_hash)) == [5, 10, 15, 20]
    assert sorted(series(repo_dir, "grad_norm/total", {}, run_hash)) == [5, 10, 15, 20]
    assert distributions == {
        f"{kind}/head.{p}" for kind in ("gradients", "weights") for p in ("weight", "bias")
    }
    assert _distribution_steps(run, "weights/head.bias") == [5, 10, 15, 20]
    logger.unwatch()
    assert len(HOOKS) == before


@pytest.mark.slow
@pytest.mark.parametrize("source", ["keyword", "environment"])
def test_hf_callback_watches_the_trained_model(
    repo_dir: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer

    from hf_helpers import TokenDataset, tiny_args, tiny_bert

    if source == "keyword":
        callback = tracelet.TraceletCallback(
            repo_path=str(repo_dir / "aim"), watch="all", watch_freq=2, **FAST
        )
    else:
        monkeypatch.setenv("TRACELET_WATCH", "all")
        monkeypatch.setenv("TRACELET_WATCH_FREQ", "2")
        callback = tracelet.TraceletCallback(repo_path=str(repo_dir / "aim"), **FAST)
    # a clipping threshold never reached: the Trainer's own grad_norm is the norm the optimizer used
    args = tiny_args(str(repo_dir / "out"), max_steps=6, max_grad_norm=1e6)
    model = tiny_bert()
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[callback])
    with _ours() as warned:
        trainer.train()
    assert warned == []
    repo, run_hash = repo_dir / "aim", callback.run_hash
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    run = read_run(repo, run_hash)
    metrics, distributions = _watched_names(run)
    assert metrics == {f"{kind}/{name}" for kind in ("grad_norm", "weight_norm") for name in trained} | {
        "grad_norm/total"
    }
    assert distributions == {f"{kind}/{name}" for kind in ("gradients", "weights") for name in trained}
    for name in ("grad_norm/classifier.weight", "grad_norm/total", "weight_norm/classifier.weight"):
        assert sorted(series(repo, name, {}, run_hash)) == [2, 4, 6], name
    assert _distribution_steps(run, "gradients/classifier.weight") == [2, 4, 6]
    ours = series(repo, "grad_norm/total", {}, run_hash)
    theirs = series(repo, "grad_norm", {"subset": "train"}, run_hash)
    assert ours == pytest.approx({step: theirs[step] for step in (2, 4, 6)}, rel=1e-4)
    weights = series(repo, "weight_norm/classifier.weight", {}, run_hash)
    assert weights[6] == pytest.approx(model.classifier.weight.norm().item(), rel=1e-5)


@pytest.mark.slow
def test_hf_kfold_keeps_no_hook_on_an_earlier_folds_model(repo_dir: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import Trainer

    from hf_helpers import TokenDataset, tiny_args, tiny_bert

    before = len(HOOKS)
    callback = tracelet.TraceletCallback(
        repo_path=str(repo_dir / "aim"), watch="gradients", watch_freq=2, **FAST
    )
    for fold in range(2):
        args = tiny_args(str(repo_dir / f"out{fold}"), max_steps=2)
        Trainer(
            model=tiny_bert(seed=fold), args=args, train_dataset=TokenDataset(), callbacks=[callback]
        ).train()
    callback.close()
    assert len(HOOKS) <= before + 1  # at most the last fold's model


@pytest.mark.slow
def test_accelerate_tracker_watch(repo_dir: Path) -> None:
    pytest.importorskip("accelerate")
    from accelerate import Accelerator

    before = len(HOOKS)
    tracker = tracelet.TraceletAimTracker("watched", repo_path=str(repo_dir / "aim"), **FAST)
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("watch")
    torch.manual_seed(0)
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = accelerator.prepare(model, optimizer)
    tracker.watch(model, log="gradients", log_freq=2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    used: dict[int, float] = {}
    for step in range(1, 7):
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        used[step] = model[4].weight.grad.norm().item()
        optimizer.step()
        optimizer.zero_grad()
        accelerator.log({"train_loss": loss.item()}, step=step)
    run_hash = tracker.tracker.hash
    accelerator.end_training()
    assert len(HOOKS) == before  # end_training took the hook off
    repo = repo_dir / "aim"
    got = series(repo, "grad_norm/4.weight", {}, run_hash)
    assert got == pytest.approx({step: used[step] for step in (2, 4, 6)}, rel=1e-5)
    assert sorted(series(repo, "grad_norm/total", {}, run_hash)) == [2, 4, 6]
    assert _distribution_steps(read_run(repo, run_hash), "gradients/4.weight") == [2, 4, 6]


# -- CUDA: no host sync per step ---------------------------------------------------------------------


@contextmanager
def _no_host_sync(device: str) -> Iterator[None]:
    """On CUDA, any operation that waits for the device inside the block raises."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "device",
    [
        "cpu",  # the same loop where no GPU is: the test's own logic, checked everywhere
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
)
def test_steps_between_log_steps_never_wait_for_the_device(repo: Path, device: str) -> None:
    model = _mlp(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(32, 4, generator=generator).to(device),
        torch.randn(32, 1, generator=generator).to(device),
    )
    used: dict[int, Any] = {}
    with _ours() as warned, _experiment(repo) as exp:  # opened here, not in the first step
        exp.watch(model, log="all", log_freq=10)
        for step in range(1, 51):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if step == 33:
                model[2].weight.grad[1, 3] = float("nan")
            used[step] = model[2].weight.grad.detach().clone()
            if step % 10:
                with _no_host_sync(device):  # the watcher's per-step work: kept on the device
                    optimizer.step()
            else:
                optimizer.step()  # a log step: the one read-back of the norms kept since the last
        run_hash = exp.hash
    assert len(warned) == 1 and "step 33" in warned[0] and "'2.weight'" in warned[0], warned
    run = read_run(repo, run_hash)
    assert run["health"]["step"] == 33 and run["health"]["layer"] == "2.weight"
    grad = series(repo, "grad_norm/2.weight", {}, run_hash)
    assert sorted(grad) == EVERY_TEN
    assert grad[10] == pytest.approx(used[10].norm().item(), rel=1e-5)
    assert grad[30] == pytest.approx(used[30].norm().item(), rel=1e-5)
    assert math.isnan(grad[40])
    # the weights go NaN after step 33; the histograms before it are all there
    assert _distribution_steps(run, "weights/4.weight")[:3] == [10, 20, 30]
