"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or an
unknown API name fails it), and its settings reference lists what the code accepts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracelet_callbacks.config import ENV_VARS, TraceletConfig

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return built


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    pages = (
        "index",
        "lightning",
        "huggingface",
        "accelerate",
        "scripts",
        "configuration",
        "reliability",
        "api",
    )
    for page in pages:
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page
    # each entry point's page shows its example, included from examples/ (which the suite runs)
    assert (
        "A Lightning job logged to AIM with one argument" in (site / "lightning" / "index.html").read_text()
    )
    assert "logged to AIM with one callback" in (site / "huggingface" / "index.html").read_text()
    # the getting-started page shows the quickstart example itself, included from examples/
    assert "Smallest possible AIM logging" in (site / "index.html").read_text()


def test_the_settings_reference_lists_every_setting_and_variable(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text()
    for field in dataclasses.fields(TraceletConfig):
        assert f"<code>{field.name}</code>" in page, field.name
    for variable in ENV_VARS:
        assert f"<code>{variable}</code>" in page, variable
    assert "the AIM experiment the run belongs to." in page  # the descriptions come from the docstring


def test_the_api_reference_is_rendered_from_the_docstrings(site: Path) -> None:
    page = (site / "api" / "index.html").read_text()
    assert "start_logging" in page and "log_artifact" in page and "TraceletConfig" in page
