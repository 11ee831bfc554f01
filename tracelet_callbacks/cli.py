"""The command line: ``python -m tracelet_callbacks COMMAND`` and the ``tracelet-callbacks`` script.

Built on ``click`` (it comes with aim). Each command exits 0 only when it did everything it was
asked; 1 when it did part (a damaged file was imported up to the damage, say) or failed (a broken repo,
a server that is not there), with one ``error: ...`` line; 2 for a usage error, before anything is
opened. A failure is never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from typing import Any, NoReturn

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


def _fail(problem: Exception | str) -> NoReturn:
    """End the command with one ``error: ...`` line and status 1 (a failure, not a usage error)."""
    click.echo(f"error: {str(problem).removeprefix('tracelet: ')}", err=True)
    sys.exit(1)


def _interval(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """``--interval``: checked at once (``time.sleep`` would refuse -1 or NaN only after a first pass
    had opened and written the runs)."""
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value!r} is not a positive, finite number of seconds")
    return value


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
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    callback=_interval,
    help="seconds between looks with --follow.",
)
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
    if not config.remote_uri and os.path.exists(config.repo_path) and not os.path.isdir(config.repo_path):
        raise click.BadParameter(f"{config.repo_path} is a file, not a folder", param_hint="'--repo'")
    _check_target(config.remote_uri, config.repo_path)
    progress = _Progress(enabled=sys.stderr.isatty())
    importer = TensorBoardImporter(logdir, config, on_progress=progress.update)
    try:
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
    except Exception as exc:  # the repo or server failed under us: a line, as sync says it
        _fail(f"the import stopped: {_reason(exc)}; what was imported is kept, run the same command to go on")
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
    for cut in report.cut_short:
        click.echo(
            f"note: {cut.path} ends in a record cut short at byte {cut.offset} (the job was stopped while "
            "writing it); everything before it was imported",
            err=True,
        )
    if report.damaged:
        sys.exit(1)


def _check_target(remote_uri: str | None, repo_path: str, write: bool = True) -> None:
    """Fail with one line, before anything is opened, when the server is not there or the repo is
    one aim cannot open (aim's own errors are a traceback)."""
    from .errors import TraceletError
    from .sink.repo import check_repo, check_server

    try:
        if remote_uri:
            check_server(remote_uri)
        else:
            check_repo(repo_path, write)
    except TraceletError as exc:
        _fail(exc)


def _reason(exc: Exception) -> str:
    """Our errors say what happened; another one is named by its type as well."""
    from .errors import TraceletError

    text = str(exc).removeprefix("tracelet: ")
    return text if isinstance(exc, TraceletError) else f"{type(exc).__name__}: {text}"


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


@main.command("sync")
@click.argument("spool", required=False, type=click.Path(file_okay=False))
@click.option("--to", "remote_uri", default=None, help="the aim server (default: $TRACELET_AIM_REMOTE).")
@click.option("--run", "runs", multiple=True, help="only this run hash (may be given more than once).")
def sync(spool: str | None, remote_uri: str | None, runs: tuple[str, ...]) -> None:
    """Send the runs in SPOOL (default: $TRACELET_SPOOL or .aim-spool) to an aim server.

    For runs logged with offline=True, or while the server was away. Each run lands under its own
    hash, with its params, tags, series, artifact entries and status, and is indexed so the UI and
    queries see it at once. Running it again sends nothing twice; after an interruption it goes on.
    """
    from .sink.repo import check_server
    from .sink.sync import sync_spool

    _say_warnings()
    try:
        config = resolve(kwargs={"spool_path": spool, "remote_uri": remote_uri})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not config.remote_uri:
        raise click.UsageError("say which server with --to aim://host:53800 (or $TRACELET_AIM_REMOTE)")
    if not os.path.isdir(os.path.join(config.spool_path, ".aim")):
        raise click.UsageError(f"{config.spool_path} holds no AIM repo: nothing was spooled there")
    _check_target(None, config.spool_path)
    try:
        check_server(config.remote_uri)
    except Exception as exc:
        _fail(exc)
    from .sink.stale import close_stale, open_repo

    # a spooled run whose writer died (a crash while offline) would be sent as still running, and
    # would stay "active" on the server: closed as killed here first, as `runs close-stale` would
    for row in close_stale(open_repo(config.spool_path), older_than=60.0):
        click.echo(f"  {row.hash}  closed as killed in the spool (its writer is gone)")
    chosen = list(runs) or None
    bar: Any = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit=" points", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    try:
        outcomes = sync_spool(
            config.spool_path,
            config.remote_uri,
            runs=chosen,
            progress=bar.update if bar is not None else None,
            on_total=(lambda total: setattr(bar, "total", total)) if bar is not None else None,
        )
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to go on", err=True)
        sys.exit(1)
    except Exception as exc:
        click.echo(f"error: sync stopped: {exc}; run the same command again to go on", err=True)
        sys.exit(1)
    finally:
        if bar is not None:
            bar.close()
    sent = sum(1 for _, outcome in outcomes if outcome.startswith("copied"))
    click.echo(f"{sent} of {len(outcomes)} runs sent to {config.remote_uri}")
    for run_hash, outcome in outcomes:
        click.echo(f"  {run_hash}  {outcome}")
    failed = [run_hash for run_hash, outcome in outcomes if outcome.startswith("failed")]
    if failed:
        click.echo(f"error: {len(failed)} runs could not be sent: {', '.join(failed)}", err=True)
        sys.exit(1)


@main.group("runs")
def runs_group() -> None:
    """See the runs of a repo or server, and close the ones nothing will close."""


def _repo(repo_path: str | None, remote_uri: str | None, write: bool = True) -> Any:
    """The ``aim.Repo`` that --repo / --remote name (default: $TRACELET_AIM_REPO or .), to be written
    or (``write=False``) only read."""
    try:
        config = resolve(kwargs={"repo_path": repo_path, "remote_uri": remote_uri})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not config.remote_uri and not os.path.isdir(os.path.join(config.repo_path, ".aim")):
        raise click.UsageError(f"{config.repo_path} holds no AIM repo (choose one with --repo)")
    _check_target(config.remote_uri, config.repo_path, write)
    from .sink.stale import open_repo

    where = config.remote_uri or config.repo_path
    try:
        return open_repo(where)
    except Exception as exc:  # a repo damaged past what the checks above read
        _fail(f"cannot open the AIM repo at {where}: {_reason(exc)}")


def _ago(stamp: float | None) -> str:
    import time

    if stamp is None:
        return "-"
    seconds = max(0.0, time.time() - stamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _seconds(value: str) -> float:
    """``--older-than``: ``90``, ``90s``, ``10m``, ``2h`` or ``1d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):  # -5m once closed a live run elsewhere
        raise click.BadParameter(f"{value!r} is not a duration such as 90s, 10m or 2h (0 or more, finite)")
    return seconds


_REPO = click.option("--repo", "repo_path", default=None, help="AIM repo folder (default: . or env)")
_REMOTE = click.option("--remote", "remote_uri", default=None, help="an aim server, aim://host:53800")


@runs_group.command("ls")
@_REPO
@_REMOTE
def runs_ls(repo_path: str | None, remote_uri: str | None) -> None:
    """Print every run: hash, status, last heartbeat, experiment and name."""
    from .sink.stale import list_runs

    rows = list_runs(_repo(repo_path, remote_uri, write=False))
    click.echo(f"{'run':<24}  {'status':<11}  {'heartbeat':<10}  {'experiment':<20}  name")
    for row in rows:
        beat = _ago(row.heartbeat)
        click.echo(f"{row.hash:<24}  {row.status:<11}  {beat:<10}  {row.experiment:<20}  {row.name}")


@runs_group.command("close-stale")
@_REPO
@_REMOTE
@click.option("--older-than", default="10m", show_default=True, help="heartbeat age that counts as stopped.")
def runs_close_stale(repo_path: str | None, remote_uri: str | None, older_than: str) -> None:
    """Mark runs whose writer died with its trainer as killed, close and index them.

    A run counts as stale when it is still active and its heartbeat (written every 2 s while a
    writer has it open) is older than --older-than; a run whose writer is a live process on this
    machine is never touched, nor is one without a heartbeat (not written by tracelet).
    """
    from .sink.stale import close_stale

    seconds = _seconds(older_than)  # a usage error before anything is opened
    closed = close_stale(_repo(repo_path, remote_uri), seconds)
    click.echo(f"closed {len(closed)} stale runs")
    for row in closed:
        click.echo(f"  {row.hash}  killed  (heartbeat {_ago(row.heartbeat)}, pid {row.pid} on {row.host})")
