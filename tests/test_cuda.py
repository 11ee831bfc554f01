"""CUDA values: logged without a device sync on the caller's thread, read back exactly.

Runs only where a CUDA device is present (the GPU machine used for benchmarks/cuda_loop.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import tracelet_callbacks as tracelet  # noqa: E402
from conftest import series  # noqa: E402
from tracelet_callbacks.core.values import Deferred, to_value  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_cuda_scalar_is_deferred_and_reads_back_its_value() -> None:
    loss = torch.tensor(0.25, device="cuda") * 3
    pending = to_value(loss)
    assert isinstance(pending, Deferred)
    assert float(pending) == pytest.approx(0.75)


@pytest.mark.parametrize("writer", ["process", "thread", "sync"])
def test_cuda_losses_arrive_exactly(repo_dir: Path, writer: str) -> None:
    weights = torch.randn(512, device="cuda")
    expected = {}
    with tracelet.Experiment(writer=writer, system_tracking_interval=None) as exp:
        for step in range(300):
            loss = (weights * (step + 1)).square().mean()
            exp.log_metric("train/loss", loss, iteration=step)
            expected[step] = loss.item()
        run_hash = exp.hash
    found = series(repo_dir, "loss", {"subset": "train"}, run_hash=run_hash)
    assert found.keys() == expected.keys()
    assert all(found[step] == pytest.approx(expected[step], rel=1e-6) for step in expected)
