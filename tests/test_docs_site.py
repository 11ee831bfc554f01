"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a missing page or an
unknown API name fails it), and its settings reference lists what the code accepts."""

from __future__ import annotations

import dataclasses
import os
import re
import struct
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


DOCS = ROOT / "docs"
INCLUDE = re.compile(r'\s*--8<--\s+"(?P<path>[^"]+)"\s*')


def _pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.md") if "hooks" not in path.parts)


def test_every_code_block_in_the_docs_is_an_example_the_suite_runs() -> None:
    """Read as a CommonMark parser reads the pages: fenced blocks anywhere (lists, quotes, unclosed)
    and indented code blocks are all code, and each must include a file of examples/."""
    from markdown_it import MarkdownIt

    from test_examples import EXAMPLES

    run_by_the_suite = {path.relative_to(ROOT).as_posix() for path in EXAMPLES}
    # and the files an example runs from a folder of its own (a LightningCLI script and its YAML)
    scripts = " ".join(path.read_text(encoding="utf-8") for path in EXAMPLES)
    for path in (ROOT / "examples").glob("*/**/*"):
        if path.is_file() and path.relative_to(ROOT / "examples").as_posix() in scripts:
            run_by_the_suite.add(path.relative_to(ROOT).as_posix())
    parser = MarkdownIt("commonmark")
    blocks = 0
    for page in _pages():
        for token in parser.parse(page.read_text(encoding="utf-8")):
            if token.type not in ("fence", "code_block"):
                continue
            blocks += 1
            where = f"{page.relative_to(ROOT)}:{token.map[0] + 1 if token.map else '?'}"
            included = INCLUDE.fullmatch(token.content)
            assert included, f"{where}: write this code as a file under examples/ and include it"
            path = included.group("path")
            assert path in run_by_the_suite or path == "examples/install.sh", f"{where}: {path} is not run"
    assert blocks >= 12  # the check reads the pages' blocks (a broken parser would find none)


def test_the_install_commands_are_the_readme_ones_and_ci_runs_the_test_line() -> None:
    commands = [
        line
        for line in (ROOT / "examples" / "install.sh").read_text().splitlines()
        if line.startswith("python3 ")
    ]
    readme = (ROOT / "README.md").read_text()
    assert len(commands) == 2 and all(command in readme for command in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()  # CI runs this exact line at every stop


def test_benchmark_commands_in_the_docs_name_real_scripts_and_flags() -> None:
    checked = 0
    for page in _pages():
        for span in re.findall(r"`([^`\n]*\.py --[^`\n]*)`", page.read_text(encoding="utf-8")):
            words = span.replace("&&", " ").split()
            (script,) = [word for word in words if word.endswith(".py")]
            name = Path(script).name
            path = ROOT / "benchmarks" / name if "benchmarks" in span else ROOT / script
            assert path.is_file(), f"{page.name}: `{span}` names a script that does not exist"
            source = path.read_text(encoding="utf-8")
            for flag in (word for word in words if word.startswith("--")):
                assert f'"{flag}"' in source, f"{page.name}: {name} takes no {flag}"
            checked += 1
    assert checked >= 10


def test_the_screenshots_are_real_pictures_the_docs_show() -> None:
    pictures = sorted((DOCS / "img").glob("*.png"))
    shown = " ".join(page.read_text(encoding="utf-8") for page in _pages())
    assert len(pictures) >= 7
    for picture in pictures:
        data = picture.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", picture.name
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1400, 860) and len(data) > 20_000, (picture.name, width, height)
        assert f"img/{picture.name}" in shown, f"{picture.name} is in no page"
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert {"runs-table", "run-params", "compare-runs", "system"} <= set(
        re.findall(r"img/([\w-]+)\.png", index)
    )
