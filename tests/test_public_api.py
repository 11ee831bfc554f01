"""The public names are pinned, and importing the package needs none of the optional frameworks."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tracelet_callbacks as tracelet

PUBLIC = {
    "Experiment",
    "RoutingTable",
    "RunHandle",
    "TraceletAimLogger",
    "TraceletAimTracker",
    "TraceletCallback",
    "TraceletConfig",
    "TraceletError",
    "TraceletValueError",
    "TraceletWarning",
    "TraceletWriter",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
}


def test_public_names_are_pinned() -> None:
    assert set(tracelet.__all__) == PUBLIC


def test_writer_is_a_summary_writer() -> None:
    from torch.utils.tensorboard import SummaryWriter

    assert issubclass(tracelet.TraceletWriter, SummaryWriter)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        tracelet.no_such_name  # noqa: B018


def test_missing_framework_names_the_extra() -> None:
    """With tensorboard blocked, using the writer says which extra to install; the package still imports."""
    code = (
        "import sys; sys.modules['torch.utils.tensorboard'] = None\n"
        "import tracelet_callbacks as t\n"
        "try:\n"
        "    t.TraceletWriter\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'pip install "tracelet-callbacks[tensorboard]"' in done.stdout


@pytest.mark.slow
def test_start_logging_works_without_tensorboard(tmp_path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['tensorboard'] = None\n"
        "import tracelet_callbacks as t\n"
        "exp = t.start_logging(exp_name='no-tb', backend='aim', config={'system_tracking_interval': None})\n"
        "exp.log_metric('train/loss', 0.5, 1)\n"
        "t.stop_logging()\n"
        "print(exp.status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("finished")
