"""The documentation's screenshots of AIM's UI, from real runs of the examples.

Run ``python -m tracelet_callbacks.docs_screenshots``.

From a source checkout, it runs three of ``examples/`` into a fresh repo (the Lightning quickstart,
the rich ``SummaryWriter`` example and the learning-rate sweep), starts ``aim up`` on a free local
port, opens each view in headless Chromium, waits until its charts or images have drawn, and saves
one PNG per view into ``docs/img/``.

Setup, once (Debian's browser; Playwright drives it, and never downloads one of its own)::

    apt-get install -y chromium
    pip install playwright          # or: pip install -e ".[test]"

Then, from the project root::

    python -m tracelet_callbacks.docs_screenshots             # writes docs/img/*.png
    python -m tracelet_callbacks.docs_screenshots --out /tmp/shots --keep /tmp/shots-repo
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .aim_ui import AimUI, run_url

__all__ = ["main"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: The examples that make the runs shown, in the order they run.
SCRIPTS = ("lightning_quickstart.py", "metrics_rich.py", "compare_runs.py")
VIEWPORT = {"width": 1400, "height": 860}


def _run_examples(folder: Path) -> dict[str, str]:
    """Run each of ``SCRIPTS`` into ``folder``; what each printed, by script."""
    env = {**os.environ, "TRACELET_AIM_REPO": str(folder), "TRACELET_SYSTEM_TRACKING_INTERVAL": "0.5"}
    printed = {}
    for script in SCRIPTS:
        print(f"running examples/{script}")
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / script)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise SystemExit(f"examples/{script} failed:\n{done.stderr[-3000:]}")
        printed[script] = done.stdout
    return printed


def _hashes(folder: Path) -> dict[str, str]:
    """Run name -> hash, for the runs the examples made."""
    from .sink.stale import list_runs, open_repo

    return {row.name: row.hash for row in list_runs(open_repo(str(folder)))}


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise SystemExit("no chromium here: install Debian's package first (apt-get install -y chromium)")
    return found


class _Camera:
    """One browser page that opens a view, waits for what must be drawn, and saves a PNG."""

    def __init__(self, page: Any, out: Path) -> None:
        self.page = page
        self.out = out

    def shoot(self, name: str, url: str, ready: str, at_least: int = 1) -> None:
        """Open ``url``, wait until ``ready`` (a Playwright selector) shows ``at_least`` elements."""
        self.page.goto(url)
        self.page.locator(ready).nth(at_least - 1).wait_for()
        skip = self.page.get_by_text("Skip", exact=True)  # AIM's "join the community" pop-up
        if skip.count():
            skip.first.click()
        self.page.wait_for_timeout(1500)  # let chart transitions finish; only the picture depends on it
        path = self.out / f"{name}.png"
        self.page.screenshot(path=str(path))
        print(f"wrote {path}")


def take(folder: Path, out: Path) -> None:
    """Run the examples into ``folder`` and write the screenshots into ``out``."""
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    printed = _run_examples(folder)
    runs = _hashes(folder)
    lightning, rich = runs["regressor"], runs["rich_metrics"]
    # the link compare_runs.py printed, which opens the Metrics explorer on its own AimQL query
    (link,) = [line.strip() for line in printed["compare_runs.py"].splitlines() if "/metrics?select=" in line]
    out.mkdir(parents=True, exist_ok=True)
    with AimUI(folder) as ui, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.set_default_timeout(90_000)
        camera = _Camera(page, out)
        base = ui.base_url
        camera.shoot("runs-table", f"{base}/runs", "text=lr_sweep_0.1")
        camera.shoot("run-params", run_url(lightning, "run_parameters", base), 'text="hparams":')
        camera.shoot("run-metrics", run_url(lightning, "metrics", base), "path.Line", at_least=3)
        camera.shoot("compare-runs", link.replace("http://127.0.0.1:43800", base), "path.Line", at_least=3)
        camera.shoot("distributions", run_url(rich, "distributions", base), ".highcharts-point", at_least=10)
        camera.shoot("images", run_url(rich, "images", base), 'img[src^="data:image"]', at_least=3)
        camera.shoot("system", run_url(lightning, "system", base), "path.Line", at_least=2)
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="where the PNGs go (docs/img)")
    parser.add_argument("--keep", type=Path, help="make the runs in this folder, and keep it")
    args = parser.parse_args(argv)
    if not EXAMPLES.is_dir():
        raise SystemExit(f"no examples/ beside the package ({EXAMPLES}): run this from a source checkout")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        take(args.keep, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="tracelet-shots-") as folder:
        take(Path(folder), args.out)


if __name__ == "__main__":
    main()
