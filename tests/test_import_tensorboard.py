"""``import-tensorboard``: event files written by ``SummaryWriter``, imported, read back with aim's API.

The centre piece logs one training through a single ``TraceletWriter(log_dir=..., tensorboard=True)``,
so the live AIM run and the event files come from the very same calls, imports the event folder into
a second repo and compares the two runs. Around it: idempotent and incremental imports, damaged
files, the command line (naming, tags, routing, ``--follow``), and an import with neither torch nor
TensorFlow.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import warnings
import wave
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")

import aim  # noqa: E402
from aim.storage.context import Context  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from conftest import sequence_names, series  # noqa: E402
from tracelet_callbacks import TraceletWarning, TraceletWriter  # noqa: E402
from tracelet_callbacks.config import resolve  # noqa: E402
from tracelet_callbacks.integrations.tensorboard.importer import (  # noqa: E402
    ImportReport,
    TensorBoardImporter,
)

TRAIN, VAL = {"subset": "train"}, {"subset": "val"}
HPARAMS = {"lr": 0.003, "batch_size": 32, "layers": 2, "optimizer": "adam"}
STEPS = 5
SUMMARY = re.compile(r"imported (\d+) values from (\d+) event files into (\d+) runs \(")
RUN_LINE = re.compile(r"^  ([0-9a-f]{24})  (.+)$", re.MULTILINE)


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One AIM repo for every import that reads back by run hash (a new repo costs aim 3-6 s here).
    Each event folder has its own identity, so imports of different folders never meet in it."""
    return tmp_path_factory.mktemp("shared") / "aim"


def _import(logdir: Path, repo: Path, **settings: Any) -> tuple[ImportReport, list[str]]:
    """One in-process import (what the command does without ``--follow``): its report and warnings.

    Written from a thread of this process (unless ``writer`` says otherwise), with aim's cache of the
    repo's run hashes emptied first: a re-import fails now and then without that, see
    ``test_a_reimport_right_after_the_first_finds_its_run``."""
    from aim.sdk.repo import Repo

    Repo._all_run_hashes.cache_clear()
    settings = {"repo_path": str(repo), "writer": "thread", **settings}
    importer = TensorBoardImporter(str(logdir), resolve(kwargs=settings))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importer.run_once()
        finally:
            importer.close()
    return importer.report, _tracelet_warnings(caught)


def _tracelet_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TraceletWarning)]


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRACELET_")}
    return {**env, "TRACELET_SYSTEM_TRACKING_INTERVAL": "off", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tracelet_callbacks", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)


def _read_run(repo: Path, run_hash: str) -> Any:
    """The run as it is now. Not ``conftest.read_run``: ``aim.Run(hash, repo=<path>)`` reuses the
    process's cached ``Repo``, whose read-only index is a snapshot from its first use; the repos here
    are written again after that, by later imports and by subprocesses."""
    return aim.Run(run_hash, repo=aim.Repo(str(repo)), read_only=True)


def _printed_runs(stdout: str) -> dict[str, str]:
    """The command's ``  <hash>  <relative folder>`` lines as ``{folder: hash}``."""
    return {folder: run_hash for run_hash, folder in RUN_LINE.findall(stdout)}


def _scalar_run(folder: Path, tag: str, steps: range, scale: float = 0.01) -> None:
    with SummaryWriter(str(folder)) as writer:
        for step in steps:
            writer.add_scalar(tag, step * scale, step)


def _ramp(steps: range, scale: float = 0.01) -> dict[int, Any]:
    """What ``_scalar_run`` wrote, as ``series`` reads it back (float32 in the event file)."""
    return {step: pytest.approx(step * scale) for step in steps}


def _event_file(folder: Path) -> Path:
    (found,) = folder.glob("events.out.tfevents.*")
    return found


def _record_starts(data: bytes) -> list[int]:
    """Byte offset of each record of an event file (TFRecord: u64 length, u32 crc, data, u32 crc)."""
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 16 + length
    return starts


def _metrics(run: Any) -> dict[tuple[str, str], tuple[list, list, list]]:
    """``{(name, context as JSON): (steps, values, wall times)}`` of every metric of a run."""
    found = {}
    for metric in run.metrics():
        steps, (values, _epochs, times) = metric.data.items_list()
        key = (metric.name, json.dumps(metric.context.to_dict(), sort_keys=True))
        found[key] = (list(steps), list(values), list(times))
    return found


def _points(run: Any, kind: str, name: str, context: dict | None = None) -> dict[int, tuple[Any, float]]:
    """``{step: (object, wall time)}`` of one rich sequence (image / text / distribution / audio)."""
    getter = getattr(run, f"get_{kind}_sequence")
    steps, (objects, _epochs, times) = getter(name, Context(context or {})).data.items_list()
    return {step: (obj, stamp) for step, obj, stamp in zip(steps, objects, times, strict=True)}


def _runs_of_folder(repo: Path, folder: Path) -> list[str]:
    """Hashes of the (closed, indexed) runs the importer made for ``folder``."""
    real = os.path.realpath(folder)
    return [
        run.hash
        for run in aim.Repo(str(repo)).iter_runs()
        if (run.get("tensorboard") or {}).get("folder") == real
    ]


def _pixels(image: Any) -> tuple[str, tuple[int, int], bytes]:
    picture = image.to_pil_image()
    return picture.mode, picture.size, picture.tobytes()


# -- 1. the same calls, live and imported ------------------------------------------------------------


def _log_training(writer: SummaryWriter) -> None:
    """A small training's logging: what the event files and the live run are both made of."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    for step in range(STEPS):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("val/accuracy", 0.5 + step / 10, step * 10)
        writer.add_scalars("error", {"train": 0.3 / (step + 1), "val": 0.4 / (step + 1)}, step)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        for name, parameter in model.named_parameters():
            writer.add_histogram(f"params/{name}", parameter.detach(), step)
    writer.add_image("sample", torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8, generator=generator), 1)
    writer.add_image("sample_float", torch.rand(3, 6, 5, generator=generator), 1)
    writer.add_text("notes", "lr **warm-up** done", 2)
    sound = torch.sin(torch.linspace(0, 200, 4000)).unsqueeze(0) * 0.8
    writer.add_audio("sound", sound, 3, sample_rate=8000)
    writer.add_hparams(dict(HPARAMS), {"hparam/accuracy": 0.875})


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory, shared_repo: Path) -> SimpleNamespace:
    """The live run (its own repo) and the import of its event files (the shared repo)."""
    root = tmp_path_factory.mktemp("parity")
    with pytest.MonkeyPatch.context() as patch:
        for variable in [name for name in os.environ if name.startswith("TRACELET_")]:
            patch.delenv(variable)
        live_repo = root / "live"
        writer = TraceletWriter(
            log_dir=str(root / "tb" / "baseline"),
            repo_path=str(live_repo),
            run_name="baseline",
            system_tracking_interval=None,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _log_training(writer)
        live_hash = writer.experiment.hash
        writer.close()
        imported_at = time.time()
        report, imported_warnings = _import(root / "tb", shared_repo, writer="process")  # the default
    assert _tracelet_warnings(caught) == []
    assert imported_warnings == []
    assert list(report.runs) == [str(root / "tb" / "baseline")]
    imported_hash = report.runs[str(root / "tb" / "baseline")]
    return SimpleNamespace(
        live=_read_run(live_repo, live_hash),
        imported=_read_run(shared_repo, imported_hash),
        report=report,
        folder=root / "tb" / "baseline",
        imported_at=imported_at,
    )


@pytest.mark.slow
def test_imported_scalars_match_the_live_run(parity: SimpleNamespace) -> None:
    live, imported = _metrics(parity.live), _metrics(parity.imported)
    train, val, none = (json.dumps(c, sort_keys=True) for c in (TRAIN, VAL, {}))
    expected = {
        ("loss", train),
        ("accuracy", val),
        ("error", train),
        ("error", val),
        ("hparam/accuracy", none),
    }
    assert set(live) == expected  # the live side logged what we think it did
    assert set(imported) == expected
    for key, (steps, values, times) in live.items():
        imported_steps, imported_values, imported_times = imported[key]
        assert imported_steps == steps, key
        assert imported_values == pytest.approx(values, rel=1e-6), key  # float32 in event files
        # The event's wall time, not the import's: TensorBoard and the live run each read the clock
        # once per value (for add_hparams, 0.1 s apart on a busy machine); the exact wall time is
        # pinned by test_imported_scalars_keep_their_event_wall_time.
        assert imported_times == pytest.approx(times, abs=1.0), key
        assert max(imported_times) < parity.imported_at, key
    assert imported[("accuracy", val)][0] == [0, 10, 20, 30, 40]


@pytest.mark.slow
def test_imported_histograms_match_the_live_distributions(parity: SimpleNamespace) -> None:
    names = {"params/0.weight", "params/0.bias", "params/2.weight", "params/2.bias"}
    sizes = {"params/0.weight": 128, "params/0.bias": 8, "params/2.weight": 16, "params/2.bias": 2}
    assert sequence_names(parity.live, "distributions") == names
    assert sequence_names(parity.imported, "distributions") == names
    for name in names:
        live = _points(parity.live, "distribution", name)
        imported = _points(parity.imported, "distribution", name)
        assert set(imported) == set(live) == set(range(STEPS)), name
        for step, (distribution, _time) in live.items():
            again = imported[step][0]
            # TensorBoard's uneven buckets are re-binned: totals and ranges agree, bins need not
            assert again.weights.sum() == distribution.weights.sum() == sizes[name], (name, step)
            assert list(again.range) == pytest.approx(list(distribution.range), rel=1e-6), (name, step)


@pytest.mark.slow
def test_imported_image_text_and_audio_match_the_live_run_byte_for_byte(parity: SimpleNamespace) -> None:
    live, imported = parity.live, parity.imported
    assert sequence_names(imported, "images") == sequence_names(live, "images") == {"sample", "sample_float"}
    picture, again = _points(live, "image", "sample")[1][0], _points(imported, "image", "sample")[1][0]
    assert _pixels(again) == _pixels(picture)
    assert _pixels(again)[:2] == ("RGB", (5, 6))
    assert bytes(again.storage["data"]) == bytes(picture.storage["data"])  # the stored PNG itself
    assert _points(imported, "text", "notes")[2][0].data == _points(live, "text", "notes")[2][0].data
    clip, clip_again = _points(live, "audio", "sound")[3][0], _points(imported, "audio", "sound")[3][0]
    wav = clip_again.get().read()
    assert wav == clip.get().read()
    assert clip_again.json() == clip.json()
    with wave.open(io.BytesIO(wav)) as opened:
        assert (opened.getframerate(), opened.getnframes(), opened.getnchannels()) == (8000, 4000, 1)


@pytest.mark.slow
def test_imported_run_has_the_live_params_name_and_source_tag(parity: SimpleNamespace) -> None:
    live, imported = parity.live, parity.imported
    assert live["hparams"] == HPARAMS
    assert imported["hparams"] == live["hparams"]
    # TensorBoard keeps every number as a double; what add_hparams was given as an int comes back one
    assert {key: type(value) for key, value in imported["hparams"].items()} == {
        key: type(value) for key, value in HPARAMS.items()
    }
    assert imported.name == "baseline"  # the folder's path under LOGDIR
    assert imported.get("tags") == {"source": "tensorboard"}
    assert "source=tensorboard" in imported.tags
    assert imported["tensorboard"]["folder"] == os.path.realpath(parity.folder)
    assert imported["status"] == "finished"
    assert parity.report.skipped == {}


@pytest.mark.slow
def test_imported_float_image_matches_the_live_run(parity: SimpleNamespace) -> None:
    picture = _points(parity.live, "image", "sample_float")[1][0]
    again = _points(parity.imported, "image", "sample_float")[1][0]
    assert _pixels(again) == _pixels(picture)


# -- 2. wall times ----------------------------------------------------------------------------------


def _past_events(folder: Path, wall_time: float) -> None:
    """One value of each kind, written with an explicit wall time far in the past."""
    with SummaryWriter(str(folder)) as writer:
        writer.add_scalar("train/loss", 0.5, 1, walltime=wall_time)
        writer.add_histogram("weights", torch.arange(10.0), 1, walltime=wall_time)
        writer.add_image("picture", torch.zeros(3, 4, 4, dtype=torch.uint8), 1, walltime=wall_time)
        writer.add_text("notes", "hello", 1, walltime=wall_time)
        writer.add_audio("sound", torch.zeros(1, 100), 1, sample_rate=8000, walltime=wall_time)


def test_imported_scalars_keep_their_event_wall_time(repo_dir: Path, shared_repo: Path) -> None:
    _past_events(repo_dir / "tb" / "past", 1_000_000_000.0)
    report, caught = _import(repo_dir / "tb", shared_repo)
    assert caught == []
    run = _read_run(shared_repo, report.runs[str(repo_dir / "tb" / "past")])
    assert _metrics(run)[("loss", json.dumps(TRAIN))] == ([1], [0.5], [1_000_000_000.0])


def test_imported_rich_values_keep_their_event_wall_time(repo_dir: Path, shared_repo: Path) -> None:
    _past_events(repo_dir / "tb" / "past", 1_000_000_000.0)
    report, _caught = _import(repo_dir / "tb", shared_repo)
    run = _read_run(shared_repo, report.runs[str(repo_dir / "tb" / "past")])
    for kind, name in [
        ("distribution", "weights"),
        ("image", "picture"),
        ("text", "notes"),
        ("audio", "sound"),
    ]:
        assert _points(run, kind, name)[1][1] == pytest.approx(1_000_000_000.0), kind


# -- 3. known divergences from live logging -----------------------------------------------------------


def test_scalars_without_a_step_are_all_kept(repo_dir: Path, shared_repo: Path) -> None:
    writer = TraceletWriter(
        log_dir=str(repo_dir / "tb" / "stepless"), repo_path=str(shared_repo), system_tracking_interval=None
    )
    for value in (5.0, 6.0, 7.0):
        writer.add_scalar("stepless", value)
    live_hash = writer.experiment.hash
    writer.close()
    assert series(shared_repo, "stepless", {}, live_hash) == {0: 5.0, 1: 6.0, 2: 7.0}
    report, _caught = _import(repo_dir / "tb", shared_repo)
    imported_hash = report.runs[str(repo_dir / "tb" / "stepless")]
    assert series(shared_repo, "stepless", {}, imported_hash) == {0: 5.0, 1: 6.0, 2: 7.0}


def test_add_scalars_key_with_a_slash_lands_in_the_parent_run(repo_dir: Path, shared_repo: Path) -> None:
    with SummaryWriter(str(repo_dir / "tb" / "run")) as writer:
        writer.add_scalars("loss", {"head/a": 1.0, "b": 2.0}, 3)
    report, _caught = _import(repo_dir / "tb", shared_repo, routing=False)
    assert list(report.runs) == [str(repo_dir / "tb" / "run")]
    run_hash = report.runs[str(repo_dir / "tb" / "run")]
    assert series(shared_repo, "loss/head/a", {}, run_hash) == {3: 1.0}


# -- 4. idempotent and incremental ----------------------------------------------------------------------


def _counts(run: Any) -> dict[tuple[str, str, str], int]:
    """How many points each sequence of a run holds."""
    found = {
        ("metric", name, context): len(steps) for (name, context), (steps, _v, _t) in _metrics(run).items()
    }
    for kind in ("distribution", "text"):
        for name in sequence_names(run, f"{kind}s"):
            found[(kind, name, "{}")] = len(_points(run, kind, name))
    return found


def test_reimport_changes_nothing_and_a_new_event_file_adds_exactly_its_values(
    repo_dir: Path, shared_repo: Path
) -> None:
    logdir, folder = repo_dir / "tb", repo_dir / "tb" / "run"
    with SummaryWriter(str(folder)) as writer:
        for step in range(50):
            writer.add_scalar("train/loss", step / 100, step)
            writer.add_scalar("val/loss", step / 50, step)
        writer.add_histogram("weights", torch.arange(20.0), 49)
        writer.add_text("notes", "half way", 49)

    first, caught = _import(logdir, shared_repo)
    assert caught == []
    assert (first.files, first.values) == (1, 102)
    (run_hash,) = first.runs.values()
    run = _read_run(shared_repo, run_hash)
    before, offsets, tags = _counts(run), run["tensorboard"]["files"], list(run.tags)
    assert before[("metric", "loss", json.dumps(TRAIN))] == 50

    second, caught = _import(logdir, shared_repo)
    assert caught == []
    assert second.runs == first.runs  # the same run, found again by the folder's identity
    assert (second.files, second.values, second.bytes_read) == (0, 0, 0)
    run = _read_run(shared_repo, run_hash)
    assert _counts(run) == before
    assert run["tensorboard"]["files"] == offsets
    assert list(run.tags) == tags

    # SummaryWriter never appends to an event file: a new writer on the same folder starts a new one
    old_file = _event_file(folder)
    old_bytes = old_file.read_bytes()
    with SummaryWriter(str(folder)) as writer:
        for step in range(50, 150):
            writer.add_scalar("train/loss", step / 100, step)
    assert old_file.read_bytes() == old_bytes
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2

    third, caught = _import(logdir, shared_repo)
    assert caught == []
    assert third.runs == first.runs
    assert (third.files, third.values) == (1, 100)
    after = _counts(_read_run(shared_repo, run_hash))
    assert after == {**before, ("metric", "loss", json.dumps(TRAIN)): 150}
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(range(150), 0.01)
    assert _runs_of_folder(shared_repo, folder) == [run_hash]


def test_a_grown_event_file_is_read_from_where_the_last_import_stopped(
    repo_dir: Path, shared_repo: Path
) -> None:
    folder = repo_dir / "tb" / "run"
    _scalar_run(folder, "train/loss", range(20))
    path = _event_file(folder)
    whole = path.read_bytes()
    starts = _record_starts(whole)
    assert len(starts) == 21  # the file-version record, then one record per value
    path.write_bytes(whole[: starts[11]])  # as a running job leaves it: ten values so far

    first, caught = _import(repo_dir / "tb", shared_repo)
    assert caught == []
    assert first.values == 10
    (run_hash,) = first.runs.values()
    assert _read_run(shared_repo, run_hash)["tensorboard"]["files"] == {path.name: starts[11]}

    path.write_bytes(whole)  # the job went on writing
    second, caught = _import(repo_dir / "tb", shared_repo)
    assert caught == []
    assert second.runs == first.runs
    assert (second.values, second.bytes_read) == (10, len(whole) - starts[11])
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(range(20), 0.01)


def test_a_reimport_right_after_the_first_finds_its_run(repo_dir: Path, shared_repo: Path) -> None:
    from aim.sdk.repo import Repo

    _scalar_run(repo_dir / "tb" / "run", "train/loss", range(3))
    settings = resolve(kwargs={"repo_path": str(shared_repo), "writer": "thread"})  # aim in this process
    with Repo._all_run_hashes.cache.timer:  # the cache's clock stands still: the race, made certain
        Repo.from_path(str(shared_repo), init=True).run_exists("0" * 24)  # as any earlier resume does
        for _ in range(2):
            importer = TensorBoardImporter(str(repo_dir / "tb"), settings)
            try:
                importer.run_once()
            finally:
                importer.close()
    run_hash = importer.report.runs[str(repo_dir / "tb" / "run")]
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(range(3), 0.01)


# -- 5. damaged files --------------------------------------------------------------------------------


def _damage(path: Path, how: str) -> tuple[int, str, range]:
    """Damage an event file of ten values: (byte offset of the damage, the reason, steps left intact)."""
    data = bytearray(path.read_bytes())
    starts = _record_starts(bytes(data))
    if how == "cut":  # a job killed mid-write: the last record is cut short
        path.write_bytes(bytes(data[:-5]))
        return starts[-1], "a record cut short", range(9)
    data[starts[6]] ^= 0x40  # a flipped bit in the length of the record of step 5
    path.write_bytes(bytes(data))
    return starts[6], "a record header that fails its checksum", range(5)


def test_a_damaged_file_imports_its_intact_part_with_one_warning(repo_dir: Path, shared_repo: Path) -> None:
    folder = repo_dir / "tb" / "run"
    _scalar_run(folder, "train/loss", range(10))
    path = _event_file(folder)
    offset, why, intact = _damage(path, "header")

    report, caught = _import(repo_dir / "tb", shared_repo)
    assert len(caught) == 1, caught
    assert str(path) in caught[0]
    assert f"{why} at byte {offset}" in caught[0]
    assert [(damage.path, damage.offset) for damage in report.damaged] == [(str(path), offset)]
    (run_hash,) = report.runs.values()
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(intact, 0.01)


def test_a_killed_jobs_last_record_cut_short_is_a_note_not_damage(repo_dir: Path, shared_repo: Path) -> None:
    """A job killed while writing leaves its last record cut short; TensorBoard reads that as "not
    written yet". Everything before it is imported, with no warning, and the report says where."""
    folder = repo_dir / "tb" / "run"
    _scalar_run(folder, "train/loss", range(10))
    path = _event_file(folder)
    offset, _why, intact = _damage(path, "cut")

    report, caught = _import(repo_dir / "tb", shared_repo)
    assert caught == []
    assert report.damaged == []
    assert [(cut.path, cut.offset) for cut in report.cut_short] == [(str(path), offset)]
    (run_hash,) = report.runs.values()
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(intact, 0.01)


def test_a_record_cut_short_while_following_is_read_again_on_the_next_pass(
    repo_dir: Path, shared_repo: Path
) -> None:
    folder = repo_dir / "tb" / "run"
    _scalar_run(folder, "train/loss", range(10))
    path = _event_file(folder)
    whole = path.read_bytes()
    path.write_bytes(whole[: _record_starts(whole)[-1] + 7])  # the writer is inside its last record
    importer = TensorBoardImporter(str(repo_dir / "tb"), resolve(kwargs={"repo_path": str(shared_repo)}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            first = importer.run_once(final=False).values  # what --follow does on each pass
            path.write_bytes(whole)  # the record is finished
            second = importer.run_once(final=False).values
        finally:
            importer.close()
    assert _tracelet_warnings(caught) == []
    assert importer.report.damaged == []
    assert (first, second) == (9, 10)  # the report counts over the passes
    (run_hash,) = importer.report.runs.values()
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(range(10), 0.01)


# -- 6. the command line -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_help_and_usage_errors(tmp_path: Path) -> None:
    done = _cli("--help")
    assert done.returncode == 0, done.stderr
    assert "import-tensorboard" in done.stdout
    done = _cli("import-tensorboard", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("LOGDIR", "--repo", "--remote", "--experiment", "--routing", "--follow", "--interval"):
        assert option in done.stdout, option

    done = _cli("import-tensorboard", str(tmp_path / "missing"), "--repo", str(tmp_path / "aim"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr
    done = _cli(
        "import-tensorboard", str(tmp_path), "--repo", str(tmp_path / "aim"), "--routing", "{not json"
    )
    assert done.returncode == 2
    assert "--routing" in done.stderr
    assert not (tmp_path / "aim").exists()  # a usage error touches nothing


def _experiment_folder(logdir: Path) -> None:
    """Three TensorBoard runs, one of them with add_scalars / add_hparams children and a PR curve."""
    with SummaryWriter(str(logdir / "baseline")) as writer:
        for step in range(STEPS):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)
            writer.add_scalar("val/loss", 2.0 / (step + 1), step)
            writer.add_scalars("error", {"train": step / 10, "val": step / 5}, step)
        writer.add_pr_curve("pr", torch.tensor([0, 1, 1]), torch.tensor([0.1, 0.8, 0.6]), 0)
        writer.add_hparams({"lr": 0.01, "epochs": 3}, {"hparam/accuracy": 0.75})
    for lr in ("0.1", "0.01"):
        _scalar_run(logdir / "sweep" / f"lr_{lr}", "train/loss", range(STEPS), scale=float(lr))


@pytest.mark.slow
def test_cli_imports_each_run_folder_as_a_named_tagged_run(repo_dir: Path, shared_repo: Path) -> None:
    logdir = repo_dir / "experiment"
    _experiment_folder(logdir)
    done = _cli("import-tensorboard", str(logdir), "--repo", str(shared_repo), "--experiment", "tb-import")
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: TensorBoard 'pr_curves' summaries is not sent to AIM: AIM has no matching object type; "
        "not imported"
    ]

    # baseline: 10 add_scalar + 10 add_scalars + 1 hparams metric + 3 hparams summaries (the
    # experiment, the session start, the session end); each sweep run 5. The PR curve is not counted.
    # Files: baseline's own, error_train/, error_val/, the hparams <timestamp>/ child, one per sweep run.
    assert SUMMARY.search(done.stdout).groups() == ("34", "6", "3")
    assert "not imported: 1 'pr_curves' values" in done.stdout
    runs = _printed_runs(done.stdout)
    assert set(runs) == {"baseline", "sweep/lr_0.1", "sweep/lr_0.01"}  # no run for the child folders

    for folder, run_hash in runs.items():
        run = _read_run(shared_repo, run_hash)
        assert run.name == folder
        assert run.experiment == "tb-import"
        assert run.get("tags") == {"source": "tensorboard"}
        assert "source=tensorboard" in run.tags
        assert run["tensorboard"]["folder"] == os.path.realpath(logdir / folder)
    assert series(shared_repo, "loss", TRAIN, runs["sweep/lr_0.1"]) == _ramp(range(STEPS), 0.1)

    baseline = runs["baseline"]
    assert series(shared_repo, "loss", VAL, baseline) == {
        step: pytest.approx(2.0 / (step + 1)) for step in range(STEPS)
    }
    # add_scalars("error", {"train": x}) wrote error_train/; it comes back as error/train, routed
    assert series(shared_repo, "error", TRAIN, baseline) == _ramp(range(STEPS), 0.1)
    assert series(shared_repo, "error", VAL, baseline) == _ramp(range(STEPS), 0.2)
    assert series(shared_repo, "hparam/accuracy", {}, baseline) == {0: 0.75}
    assert _read_run(shared_repo, baseline)["hparams"] == {"lr": 0.01, "epochs": 3}


@pytest.mark.slow
def test_cli_routing_off_keeps_tags_verbatim(repo_dir: Path, shared_repo: Path) -> None:
    with SummaryWriter(str(repo_dir / "tb" / "raw")) as writer:
        for step in range(3):
            writer.add_scalar("train/loss", step / 10, step)
            writer.add_scalars("error", {"train": step / 5}, step)
    done = _cli("import-tensorboard", str(repo_dir / "tb"), "--repo", str(shared_repo), "--routing", "off")
    assert done.returncode == 0, done.stderr
    run_hash = _printed_runs(done.stdout)["raw"]
    assert series(shared_repo, "train/loss", {}, run_hash) == _ramp(range(3), 0.1)
    assert series(shared_repo, "error/train", {}, run_hash) == _ramp(range(3), 0.2)
    assert series(shared_repo, "loss", None, run_hash) == {}
    assert series(shared_repo, "error", None, run_hash) == {}


@pytest.mark.slow
def test_cli_exits_1_on_a_damaged_file_and_names_it(repo_dir: Path, shared_repo: Path) -> None:
    folder = repo_dir / "tb" / "bad"
    _scalar_run(folder, "train/loss", range(10))
    path = _event_file(folder)
    offset, why, intact = _damage(path, "header")
    done = _cli("import-tensorboard", str(repo_dir / "tb"), "--repo", str(shared_repo))
    assert done.returncode == 1, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, done.stderr
    assert str(path) in warned[0] and f"{why} at byte {offset}" in warned[0]
    assert SUMMARY.search(done.stdout).groups() == ("5", "1", "1")
    run_hash = _printed_runs(done.stdout)["bad"]
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(intact, 0.01)


@pytest.mark.slow
def test_cli_exits_0_on_a_killed_jobs_file_with_a_note(repo_dir: Path, shared_repo: Path) -> None:
    folder = repo_dir / "tb" / "cut"
    _scalar_run(folder, "train/loss", range(10))
    path = _event_file(folder)
    offset, _why, intact = _damage(path, "cut")
    done = _cli("import-tensorboard", str(repo_dir / "tb"), "--repo", str(shared_repo))
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("warning:")], done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and str(path) in notes[0] and f"byte {offset}" in notes[0], done.stderr
    assert SUMMARY.search(done.stdout).groups() == ("9", "1", "1")
    run_hash = _printed_runs(done.stdout)["cut"]
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(intact, 0.01)


def _followed(repo: Path, folders: list[Path]) -> dict[str, dict]:
    """What a running ``--follow`` has stored so far, per folder: the event-file offsets and the last
    step of each metric, read from the runs' own storage.

    ``aim.Run(hash, read_only=True)`` cannot be used here: it reads the repo's index, which takes in a
    run's data when the run closes (or when ``aim up``'s index manager re-indexes a live one). This
    reads what that index manager reads: the run's meta chunk, opened read-only.
    """
    chunks = repo / ".aim" / "meta" / "chunks"
    wanted = {os.path.realpath(folder): folder.name for folder in folders}
    found: dict[str, dict] = {}
    for chunk in chunks.iterdir() if chunks.is_dir() else []:
        try:
            tree = aim.Repo(str(repo)).request_tree(
                "meta", chunk.name, read_only=True, skip_read_optimization=True
            )
            meta = tree.subtree(("meta", "chunks", chunk.name))
            imported = (meta.get("attrs") or {}).get("tensorboard") or {}
            traces = meta.get("traces") or {}
        except Exception:  # a chunk being created this very moment
            continue
        if imported.get("folder") in wanted:
            last = {name: info["last_step"] for names in traces.values() for name, info in names.items()}
            found[wanted[imported["folder"]]] = {"files": imported.get("files") or {}, "last_step": last}
    return found


def _sizes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in folder.glob("events.out.tfevents.*")}


def _holds(repo: Path, last_steps: dict[str, int], *folders: Path) -> Callable[[], bool]:
    """Whether the run of each folder has read every byte of its event files and holds ``loss`` up to
    its step in ``last_steps``."""

    def check() -> bool:
        found = _followed(repo, list(folders))
        read_all = all(found.get(f.name, {}).get("files") == _sizes(f) for f in folders)
        return read_all and {name: got["last_step"].get("loss") for name, got in found.items()} == last_steps

    return check


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"--follow ended early ({process.returncode}): {out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"--follow had not imported everything after {seconds} s")
        time.sleep(0.1)


@pytest.mark.slow
def test_cli_follow_imports_new_events_until_ctrl_c(repo_dir: Path, shared_repo: Path) -> None:
    logdir = repo_dir / "tb"
    first = SummaryWriter(str(logdir / "run"))
    second = None
    for step in range(10):
        first.add_scalar("train/loss", step / 10, step)
    first.flush()
    command = [sys.executable, "-m", "tracelet_callbacks", "import-tensorboard", str(logdir)]
    command += ["--repo", str(shared_repo), "--follow", "--interval", "0.2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_until(_holds(shared_repo, {"run": 9}, logdir / "run"), process)
        for step in range(10, 25):  # the same event file grows while it is followed
            first.add_scalar("train/loss", step / 10, step)
        first.flush()
        second = SummaryWriter(str(logdir / "other"))  # and a new run folder appears
        for step in range(5):
            second.add_scalar("val/loss", step / 20, step)
        second.flush()
        _wait_until(_holds(shared_repo, {"run": 24, "other": 4}, logdir / "run", logdir / "other"), process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        first.close()
        if second is not None:
            second.close()

    assert process.returncode == 0, err
    assert SUMMARY.search(out).groups()[::2] == ("30", "2")
    runs = _printed_runs(out)
    assert set(runs) == {"run", "other"}
    assert series(shared_repo, "loss", TRAIN, runs["run"]) == _ramp(range(25), 0.1)
    assert series(shared_repo, "loss", VAL, runs["other"]) == _ramp(range(5), 0.05)
    assert _read_run(shared_repo, runs["run"])["status"] == "finished"


# -- 7. no torch, no TensorFlow ---------------------------------------------------------------------


def test_tensorflow_is_not_installed() -> None:
    """The importer reads event files with TensorBoard's protos alone: TensorFlow is not needed."""
    assert importlib.util.find_spec("tensorflow") is None


_WITHOUT_TORCH = """
import runpy, sys
code = "no exit"
sys.argv = ["tracelet_callbacks", "import-tensorboard", sys.argv[1], "--repo", sys.argv[2]]
try:
    runpy.run_module("tracelet_callbacks", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("RESULT", code, "torch" in sys.modules, "tensorflow" in sys.modules)
"""


@pytest.mark.slow
def test_the_import_runs_without_torch(repo_dir: Path, shared_repo: Path) -> None:
    _scalar_run(repo_dir / "tb" / "plain", "train/loss", range(STEPS))
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(repo_dir / "tb"), str(shared_repo)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
    )
    assert "RESULT 0 False False" in done.stdout, done.stdout + done.stderr
    run_hash = _printed_runs(done.stdout)["plain"]
    assert series(shared_repo, "loss", TRAIN, run_hash) == _ramp(range(STEPS), 0.01)
