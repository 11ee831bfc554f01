"""The user's original description (shared/seed/aim-backend.md): its examples run and do what it says.

Each code block is taken from the seed itself, with ``import tracelet`` changed to
``import tracelet_callbacks as tracelet`` and nothing else, so the seed and this test cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import open_repo, read_run, sequence_names, series

SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "aim-backend.md"

pytestmark = pytest.mark.skipif(not SEED.exists(), reason=f"the seed is not beside the checkout: {SEED}")


def seed_block(heading: str, index: int = 0) -> str:
    """The ``index``-th python block under a ``## heading`` / ``### heading`` of the seed."""
    text = SEED.read_text()
    start = re.search(rf"^#+ {re.escape(heading)}\s*$", text, flags=re.M)
    assert start, f"no heading {heading!r} in the seed"
    rest = text[start.end() :]
    blocks = re.findall(r"```python\n(.*?)```", rest, flags=re.S)
    code = blocks[index]
    return code.replace("import tracelet\n", "import tracelet_callbacks as tracelet\n")


def run_block(code: str) -> dict:
    """Run a seed block; fragments that use ``tracelet`` without importing it get the import first."""
    if "import tracelet" not in code:
        code = "import tracelet_callbacks as tracelet\n" + code
    scope: dict = {"__name__": "__seed__"}
    exec(compile(code, "<seed>", "exec"), scope)  # the seed's own code, unchanged but for the import
    return scope


def only_run(repo_dir: Path):
    runs = list(open_repo(repo_dir).iter_runs())
    assert len(runs) == 1, [run.hash for run in runs]
    return runs[0]


@pytest.mark.slow
def test_quick_start(repo_dir: Path) -> None:
    run_block(seed_block("Local Repository"))
    run = only_run(repo_dir)
    assert run.name == "aim_experiment"
    assert run.experiment == "my_project"
    assert run["status"] == "finished"
    assert series(repo_dir, "loss", {}) == {1: 0.5}
    assert series(repo_dir, "accuracy", {}) == {1: 0.9}
    assert list(repo_dir.glob("runs/*/events.out.tfevents.*")), "SummaryWriter still writes its event files"


@pytest.mark.slow
def test_complete_example(repo_dir: Path) -> None:
    run_block(seed_block("Complete Example"))
    run = only_run(repo_dir)
    batches = (1000 + 31) // 32
    batch_loss = series(repo_dir, "batch/loss", {})
    assert sorted(batch_loss) == list(range(10 * batches))
    assert sorted(series(repo_dir, "epoch/loss", {})) == list(range(10))
    weights = {name for name in sequence_names(run, "distributions") if name.startswith("weights/")}
    assert weights == {"weights/0.weight", "weights/0.bias", "weights/2.weight", "weights/2.bias"}
    for name in weights:
        from aim.storage.context import Context

        assert len(run.get_distribution_sequence(name, Context({})).values.values_list()) == 10
    assert run["hparams"] == {
        "model.type": "simple_mlp",
        "model.input_size": 784,
        "model.hidden_size": 128,
        "model.output_size": 10,
        "optimizer.type": "adam",
        "optimizer.learning_rate": 0.001,
        "training.batch_size": 32,
        "training.epochs": 10,
    }
    import aim

    found = list(aim.Repo(".").query_metrics("metric.name == 'batch/loss'").iter())
    assert [metric.run.hash for metric in found] == [run.hash]


@pytest.mark.slow
def test_lr_sweep_makes_three_queryable_runs(repo_dir: Path) -> None:
    run_block(seed_block("Multi-Run Comparison"))
    repo = open_repo(repo_dir)
    names = sorted(run.name for run in repo.iter_runs())
    assert names == ["lr_sweep_0.001", "lr_sweep_0.01", "lr_sweep_0.1"]
    # ``run.tags`` is aim's own list of tag labels in AimQL; the dict is the param ``run["tags"]``
    for query in ('run["tags"]["learning_rate"] == 0.01', '"learning_rate=0.01" in run.tags'):
        hits = list(repo.query_runs(query, report_mode=0).iter_runs())
        assert [hit.run.name for hit in hits] == ["lr_sweep_0.01"], query
    for run in repo.iter_runs():
        assert f"learning_rate={run['tags']['learning_rate']}" in run.tags


@pytest.mark.slow
def test_current_usage_and_best_practices(repo_dir: Path) -> None:
    import tracelet_callbacks as tracelet

    run_block(seed_block("Current Usage"))
    tracelet.stop_logging()
    run_block(seed_block("Repository Organization"))
    tracelet.stop_logging()
    experiments = sorted(run.experiment for run in open_repo(repo_dir).iter_runs())
    assert experiments == ["computer_vision", "my_project"]


def test_parameter_logging_strategy(repo_dir: Path) -> None:
    import tracelet_callbacks as tracelet

    exp = tracelet.start_logging(exp_name="params", backend="aim")
    run_block(seed_block("Parameter Logging"))
    run_block(seed_block("Parameter Logging Strategy"))
    tracelet.stop_logging()
    params = read_run(repo_dir, exp.hash)["hparams"]
    assert params["learning_rate"] == 0.001 and params["model_architecture"] == "resnet50"
    assert params["model.layers"] == 50 and params["optimizer.lr"] == 0.001


@pytest.mark.slow
def test_migration_from_tensorboard(repo_dir: Path) -> None:
    import tracelet_callbacks as tracelet

    code = seed_block("From TensorBoard")
    scope = run_block("from torch.utils.tensorboard import SummaryWriter\n" + code)
    scope["writer"].add_scalar("train/loss", 0.25, 3)
    tracelet.stop_logging()
    assert series(repo_dir, "loss", {"subset": "train"}) == {3: 0.25}


@pytest.mark.slow
def test_planned_configuration_keys(repo_dir: Path) -> None:
    """Every key of the "Planned Configuration" block but the remote one (tests/test_remote.py has it)."""
    import tracelet_callbacks as tracelet

    code = seed_block("Planned Configuration (Future Release)")
    code = re.sub(r',\s*"remote_uri":[^\n]*', "", code)
    code = code.replace('"run_name": "baseline_run",', '"run_name": "baseline_run", "buffer_size": 1000,')
    run_block(code)
    tracelet.stop_logging()
    run = only_run(repo_dir / "aim_repo")
    assert (run.name, run.experiment) == ("baseline_run", "My Experiments")
    assert run["tags"] == {"model": "resnet", "dataset": "cifar10"}
    assert {"model=resnet", "dataset=cifar10"} <= set(run.tags)
