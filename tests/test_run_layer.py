"""The run layer without AIM: one lifecycle, one sink contract, one settings check for every entry point.

Everything here runs through ``sink_factory=`` and :class:`~tracelet_callbacks.testing.RecordingSink`,
the seam every entry point takes; the real-AIM round trips live in the adapters' own test files.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import tracelet_callbacks as tracelet
from tracelet_callbacks import TraceletConfig
from tracelet_callbacks.core import records as rec
from tracelet_callbacks.run.lifecycle import RunLifecycle
from tracelet_callbacks.sink import wire
from tracelet_callbacks.sink.contract import Sink
from tracelet_callbacks.testing import RecordingSink


def _entry_points() -> dict[str, Any]:
    points: dict[str, Any] = {"Experiment": tracelet.Experiment}
    for name in ("TraceletWriter", "TraceletAimLogger", "TraceletCallback", "TraceletAimTracker"):
        try:
            points[name] = getattr(tracelet, name)
        except ModuleNotFoundError:  # that framework is not installed here
            continue
    return points


ENTRY_POINTS = _entry_points()

BAD_VALUES = [
    ({"buffer_size": 0}, "buffer_size"),
    ({"flush_secs": "soon"}, "flush_secs"),
    ({"log_model": "best"}, "log_model"),
    ({"writer": "fast"}, "writer"),
    ({"routing": 3}, "routing"),
    ({"strict": "perhaps"}, "strict"),
]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(("bad", "key"), BAD_VALUES, ids=[key for _b, key in BAD_VALUES])
def test_a_bad_config_fails_at_construction_naming_the_key(
    entry: str, bad: dict[str, Any], key: str, repo_dir: Path
) -> None:
    with pytest.raises(ValueError, match=key):  # a settings object refuses the value where it is built
        dataclasses.replace(TraceletConfig(repo_path=str(repo_dir / "aim")), **bad)
    config = {"repo_path": str(repo_dir / "aim"), **bad}
    make = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=key):  # and every entry point refuses it in a config dict
        if entry == "TraceletWriter":
            make(config=config, tensorboard=False)
        else:
            make(config=config)
    with pytest.raises(ValueError, match="repo_pth"):  # a misspelt keyword beside a config object
        make(config=TraceletConfig(), repo_pth="x")
    assert not (repo_dir / "aim").exists()  # nothing was opened on the way


def test_recording_sink_fulfils_the_contract() -> None:
    assert issubclass(RecordingSink, Sink)
    sink = RecordingSink()
    sink.open()
    sink.add(rec.Scalar("loss", 1.0, 0))
    sink.submit([rec.Params("hparams", {"lr": 0.1}), rec.Params("hparams", {"wd": 0.0})])
    sink.close("killed")
    sink.close("finished")  # a second close does nothing
    assert sink.get("hparams") == {"lr": 0.1, "wd": 0.0}
    assert sink.status == "killed" and sink.series("loss") == [(0, 1.0)]
    assert [event[0] for event in sink.events] == ["open", "close"]


def _lifecycle(events: list) -> RunLifecycle:
    from tracelet_callbacks.config import resolve

    return RunLifecycle(resolve({"sink_factory": lambda c: RecordingSink(c, events)}, env={}))


def test_lifecycle_ends_resumes_and_starts_new_runs() -> None:
    events: list = []
    runs = _lifecycle(events)
    runs.current().log_metric("loss", 1.0)
    first = runs.hash
    runs.end("failed")
    assert runs.hash == first and not runs.is_open  # known without reopening
    runs.current().log_metric("loss", 2.0)  # continues the same run
    runs.next_run("second", status="interrupted")
    runs.current().log_metric("loss", 3.0)
    second = runs.hash
    runs.finish()
    with pytest.warns(tracelet.TraceletWarning, match="closed"):
        runs.current().log_metric("loss", 4.0)  # dropped until the next run
    seen = [event for event in events if event[0] != "flush"]
    assert seen == [
        ("open", first),
        ("close", first, "failed"),
        ("open", first),
        ("close", first, "interrupted"),
        ("open", second),
        ("close", second, "finished"),
    ]
    assert second != first


def test_lifecycle_pickles_by_hash_and_a_copy_continues_the_run() -> None:
    events: list = []
    runs = _lifecycle(events)
    runs.current().log_metric("loss", 1.0)
    state = runs.__getstate__()
    assert state["_exp"] is None and state["_resume"] == runs.hash
    copy = RunLifecycle.__new__(RunLifecycle)
    copy.__dict__.update(state)
    assert copy.hash == runs.hash
    copy.current().log_metric("loss", 2.0)
    assert events[-1] == ("open", runs.hash)  # the copy resumed the same hash


def test_a_stand_in_lifecycle_writes_nothing() -> None:
    events: list = []
    runs = _lifecycle(events)
    runs.enabled = False
    runs.handle.track(1.0, name="loss")
    runs.end("finished")
    assert runs.hash is None and not runs.handle and events == []


def test_run_handle_goes_through_the_translator() -> None:
    sinks: list[RecordingSink] = []
    exp = tracelet.Experiment(sink_factory=lambda c: sinks.append(RecordingSink(c)) or sinks[-1])
    exp.run.track(0.5, name="val_loss", step=2, epoch=0.25)  # as aim.Run.track: no routing
    exp.run["api_token"] = "hf_" + "x" * 30
    exp.run.add_tag("baseline")
    exp.close()
    (scalar,) = sinks[0].scalars()
    assert (scalar.name, scalar.step, scalar.epoch, scalar.context) == ("val_loss", 2, 0.25, {})
    assert sinks[0].get("api_token") == "<redacted>"
    assert sinks[0].of(rec.Tags)[-1].add == ("baseline",)


class _Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not today")


def test_wire_messages_and_errors_survive_the_pipe() -> None:
    error = wire.portable(KeyError("lr"))
    assert type(error) is KeyError and error.args == ("lr",)
    odd = wire.portable(_Unpicklable("boom"))
    assert type(odd) is wire.RemoteError and "_Unpicklable: boom" in str(odd)
    for message in (
        wire.Open(TraceletConfig(), ["train.py"]),
        wire.Batch(3, wire.pack([rec.Scalar("loss", 1.0, 1, None, {}, 0.0)])),
        wire.Ack(3, 0, wire.portable(OSError(28, "No space left on device"))),
        wire.Closed(4, None),
    ):
        back = wire.decode_frame(wire.encode_frame(message))
        assert type(back) is type(message)
    ack = wire.decode_frame(wire.encode_frame(wire.Ack(3, 1, OSError(28, "No space left"))))
    assert isinstance(ack.error, OSError) and ack.error.errno == 28


@pytest.mark.slow
def test_an_error_in_the_writer_process_keeps_its_type_and_chain(repo_dir: Path) -> None:
    from tracelet_callbacks.sink.writer import ProcessSink

    config = tracelet.config.resolve({"repo_path": str(repo_dir / "aim"), "run_hash": "0" * 24}, env={})
    sink = ProcessSink(config)
    with pytest.raises(tracelet.TraceletError, match="0" * 24) as caught:
        sink.open()  # resuming a run that is not there: the writer's error, raised here
    cause = caught.value.__cause__
    assert isinstance(cause, tracelet.TraceletError), repr(cause)  # the writer's own exception object


def test_pickled_config_with_a_factory_stays_in_the_trainer() -> None:
    config = tracelet.config.resolve({"sink_factory": RecordingSink}, env={})
    sent = wire.Open(config.replace(routing=None, sink_factory=None), [])
    assert pickle.loads(pickle.dumps(sent)).config.sink_factory is None


@pytest.mark.slow
def test_stored_checkpoint_folders_have_their_json_configs_redacted(repo_dir: Path) -> None:
    from tracelet_callbacks.run.checkpoints import CheckpointStore

    folder = repo_dir / "out" / "checkpoint-2"
    folder.mkdir(parents=True)
    config = {"hidden_size": 4, "api_key": "sk-" + "a" * 24, "endpoint": "https://me:pw@host/x"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "weights.bin").write_bytes(b"\x00\x01weights")
    (folder / "training_args.bin").write_bytes(b"pickle with hub_token")
    exp = tracelet.Experiment(repo_path=str(repo_dir / "aim"), system_tracking_interval=None)
    CheckpointStore().store(exp, [str(folder)], "checkpoints", settings={"hub_token": "hf_" + "b" * 30})
    run_hash = exp.hash
    exp.close()
    stored = repo_dir / "aim" / "aim-artifacts" / run_hash / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in stored.iterdir()) == ["config.json", "training_args.json", "weights.bin"]
    assert json.loads((stored / "config.json").read_text()) == {
        "hidden_size": 4,
        "api_key": "<redacted>",
        "endpoint": "https://me:<redacted>@host/x",
    }
    assert (stored / "weights.bin").read_bytes() == b"\x00\x01weights"
    assert json.loads((stored / "training_args.json").read_text()) == {"hub_token": "<redacted>"}
    assert (folder / "config.json").read_text() == json.dumps(config)  # the trainer's own copy is untouched


def test_nested_contexts_of_plain_values_are_kept() -> None:
    sinks: list[RecordingSink] = []
    exp = tracelet.Experiment(sink_factory=lambda c: sinks.append(RecordingSink(c)) or sinks[-1])
    exp.log_metric("loss", 1.0, context={"model": {"size": "L"}, "layers": [1, 2]})
    exp.close()
    assert [r.context for r in sinks[0].scalars()] == [{"model": {"size": "L"}, "layers": [1, 2]}]


class _FailingClose(RecordingSink):
    def close(self, status: str = "finished") -> None:
        super().close(status)
        raise tracelet.TraceletError("tracelet: the server went away")


def test_a_run_whose_close_fails_is_still_continued_next() -> None:
    from tracelet_callbacks.config import resolve

    events: list = []
    runs = RunLifecycle(resolve({"sink_factory": lambda c: _FailingClose(c, events)}, env={}))
    runs.current().log_metric("loss", 1.0)
    first = runs.hash
    with pytest.raises(tracelet.TraceletError):
        runs.end("finished")
    assert runs.hash == first  # the next stage continues it rather than starting a new run
