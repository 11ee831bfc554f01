"""The command line: ``python -m tracelet_callbacks COMMAND`` and the ``tracelet-callbacks`` script.

Built on ``click`` (it comes with aim). Each command exits 0 only when it did everything it was
asked; 1 when it did part (a damaged file was imported up to the damage, say); 2 for a usage error.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import click

from . import __version__
from .config import resolve
from .errors import TraceletWarning

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracelet-callbacks")
def main() -> None:
    """Send PyTorch training logs to AIM: tools that work on runs and logs after the fact."""


def _routing(value: str | None) -> Any:
    """``--routing``: ``off`` (tags kept as they are) or a JSON mapping (text or file) of tag ->
    ``[metric name, context]``."""
    if value is None:
        return None
    if value.lower() == "off":
        return False
    text = value
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as handle:
            text = handle.read()
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"neither 'off' nor JSON ({exc})", param_hint="--routing") from None
    if not isinstance(table, dict):
        raise click.BadParameter("the JSON must map tags to [name, context]", param_hint="--routing")
    return {tag: tuple(route) if isinstance(route, list) else route for tag, route in table.items()}


def _say_warnings() -> None:
    """Warnings as one plain line each (``warning: ...``), not with our source line."""

    def show(
        message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        text = str(message).removeprefix("tracelet: ")
        click.echo(f"warning: {text}", err=True)

    warnings.showwarning = show
    warnings.simplefilter("default", TraceletWarning)


@main.command("import-tensorboard")
@click.argument("logdir", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", "repo_path", default=None, help="AIM repo folder (default: $TRACELET_AIM_REPO or .).")
@click.option(
    "--remote", "remote_uri", default=None, help="an aim server, aim://host:53800, instead of --repo."
)
@click.option("--experiment", "experiment_name", default=None, help="AIM experiment of the imported runs.")
@click.option("--routing", default=None, help="'off', or JSON (text or file): tag -> [metric name, context].")
@click.option("--follow", is_flag=True, help="keep importing new events as they are written, until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="seconds between looks with --follow.")
def import_tensorboard(
    logdir: str,
    repo_path: str | None,
    remote_uri: str | None,
    experiment_name: str | None,
    routing: str | None,
    follow: bool,
    interval: float,
) -> None:
    """Import the TensorBoard event files under LOGDIR into AIM.

    Each folder holding event files becomes one run, named after its path under LOGDIR and tagged
    source=tensorboard; tags are routed as live logging routes them (train/loss -> loss in subset
    train). Importing again adds only what is new.
    """
    from .integrations.tensorboard.importer import TensorBoardImporter

    _say_warnings()
    try:
        settings: dict[str, Any] = {"repo_path": repo_path, "remote_uri": remote_uri}
        settings.update(experiment_name=experiment_name, routing=_routing(routing))
        config = resolve(kwargs=settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    progress = _Progress(enabled=sys.stderr.isatty())
    importer = TensorBoardImporter(logdir, config, on_progress=progress.update)
    try:
        importer.run_once(final=not follow)
        progress.update(importer.report)
        while follow:
            if _wait(interval):
                break
            importer.run_once(final=False)
            progress.update(importer.report)
    except KeyboardInterrupt:
        pass  # --follow ends here; what was read is closed below like any other pass
    finally:
        importer.close()
        progress.close()
    report = importer.report
    rate = report.values / report.seconds if report.seconds else 0.0
    click.echo(
        f"imported {report.values} values from {report.files} event files into {len(report.runs)} runs "
        f"({rate:,.0f} values/s)"
    )
    for folder, run_hash in sorted(report.runs.items()):
        click.echo(f"  {run_hash}  {os.path.relpath(folder, os.path.abspath(logdir))}")
    for kind, count in sorted(report.skipped.items()):
        click.echo(f"  not imported: {count} {kind!r} values (AIM has no matching type)")
    if report.damaged:
        sys.exit(1)


def _wait(seconds: float) -> bool:
    """Sleep between --follow passes; ``True`` when interrupted (Ctrl-C ends the command cleanly)."""
    import time

    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        return True
    return False


class _Progress:
    """A tqdm bar of values imported (and their rate) on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(unit=" values", unit_scale=True, dynamic_ncols=True, file=sys.stderr)

    def update(self, report: Any) -> None:
        if self._bar is not None:
            self._bar.update(report.values - self._bar.n)
            self._bar.set_postfix(files=report.files, runs=len(report.runs), refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
