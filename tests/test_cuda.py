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


def test_every_visible_gpu_has_its_series(repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real NVML (``tracelet-callbacks[gpu]``): each device this process may use gets memory, power and
    temperature series with context ``{"gpu": i}``, read back from the run."""
    pynvml = pytest.importorskip("pynvml")
    from tracelet_callbacks.run import monitor as monitor_module

    monkeypatch.setattr(monitor_module, "_monitor", None)  # a fresh sampler, reading real NVML
    pynvml.nvmlInit()
    devices = pynvml.nvmlDeviceGetCount()
    with tracelet.Experiment(system_tracking_interval=0.5) as exp:
        weights = torch.randn(1024, 1024, device="cuda")
        for step in range(50):
            exp.log_metric("train/loss", (weights @ weights).mean(), iteration=step)
        run_hash = exp.hash
    visible = monitor_module.monitor(exp.config)._samplers[1]._devices
    assert visible, "NVML sees no device this process may use"
    assert len({context["gpu"] for context, _ in visible}) <= devices
    for context, _ in visible:
        used = series(repo_dir, "system/gpu_memory_used_mib", context, run_hash=run_hash)
        assert used and all(value > 0 for value in used.values()), context
        assert series(repo_dir, "system/gpu_memory_total_mib", context, run_hash=run_hash), context
