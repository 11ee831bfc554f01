"""Settings: keywords > config dict > TRACELET_* environment > defaults, validated once."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from tracelet_callbacks.config import ENV_VARS, FIELDS, TraceletConfig, coerce, normalise_remote, resolve


def test_defaults_with_empty_sources() -> None:
    cfg = resolve(env={})
    assert cfg == coerce(TraceletConfig())
    assert cfg.repo_path == os.getcwd()  # "." made absolute once, so a later chdir changes nothing
    assert cfg.experiment_name == "Tracelet Experiments"
    assert cfg.buffer_size == 1000
    assert cfg.remote_uri is None
    assert cfg.repo == os.getcwd()


def test_priority_kwargs_over_config_over_env_over_defaults() -> None:
    env = {
        "TRACELET_AIM_RUN_NAME": "from-env",
        "TRACELET_AIM_EXPERIMENT": "env-experiment",
        "TRACELET_AIM_REPO": "/env/repo",
    }
    cfg = resolve(
        {"run_name": "from-kwargs"},
        {"run_name": "from-config", "experiment_name": "config-experiment"},
        env=env,
    )
    assert cfg.run_name == "from-kwargs"  # kwargs beat config and env
    assert cfg.experiment_name == "config-experiment"  # config beats env
    assert cfg.repo_path == "/env/repo"  # env beats the default
    assert cfg.buffer_size == 1000  # default where nothing is given


def test_none_kwarg_counts_as_not_given() -> None:
    cfg = resolve({"run_name": None}, {"run_name": "from-config"}, env={"TRACELET_AIM_RUN_NAME": "e"})
    assert cfg.run_name == "from-config"


def test_explicit_env_ignores_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_AIM_RUN_NAME", "process-env")
    assert resolve(env={}).run_name is None
    assert resolve(env={"TRACELET_AIM_RUN_NAME": "given"}).run_name == "given"


def test_env_variables_all_name_real_settings() -> None:
    assert set(ENV_VARS.values()) <= set(FIELDS)


@pytest.mark.parametrize("where", ["kwargs", "config"])
def test_unknown_key_names_key_lists_valid_and_suggests(where: str) -> None:
    source = {"run_nmae": "x"}
    with pytest.raises(ValueError) as info:
        resolve(source if where == "kwargs" else None, source if where == "config" else None, env={})
    message = str(info.value)
    assert "'run_nmae'" in message
    assert "Did you mean 'run_name'?" in message
    for valid in FIELDS:
        assert valid in message


def test_unknown_key_without_close_match_still_lists_valid() -> None:
    with pytest.raises(ValueError) as info:
        resolve({"zzzzzz": 1}, env={})
    assert "Did you mean" not in str(info.value)
    assert "repo_path" in str(info.value)


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="dict"):
        resolve(None, ["run_name"], env={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("buffer_size", 0),
        ("buffer_size", -5),
        ("buffer_size", "5"),
        ("buffer_size", 2.5),
        ("buffer_size", True),
        ("flush_secs", 0),
        ("flush_secs", -1.0),
        ("flush_secs", "5"),
        ("log_model", "best"),
        ("log_model", "yes"),
        ("system_tracking_interval", -1),
        ("system_tracking_interval", "10"),
        ("tags", 3),
        ("remote_uri", "ftp://host"),
    ],
)
def test_invalid_values_raise(key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=key):
        resolve({key: value}, env={})


@pytest.mark.parametrize("value", [False, True, "all"])
def test_valid_log_model(value: Any) -> None:
    assert resolve({"log_model": value}, env={}).log_model == value


@pytest.mark.parametrize(
    ("variable", "raw", "key", "expected"),
    [
        ("TRACELET_AIM_TAGS", "a=1,b=2", "tags", {"a": "1", "b": "2"}),
        ("TRACELET_AIM_TAGS", "x, y", "tags", ["x", "y"]),
        ("TRACELET_AIM_TAGS", "a=1,y", "tags", ["a=1", "y"]),
        ("TRACELET_STRICT", "true", "strict", True),
        ("TRACELET_STRICT", "0", "strict", False),
        ("TRACELET_CAPTURE_TERMINAL_LOGS", "on", "capture_terminal_logs", True),
        ("TRACELET_SYSTEM_TRACKING_INTERVAL", "off", "system_tracking_interval", None),
        ("TRACELET_SYSTEM_TRACKING_INTERVAL", "none", "system_tracking_interval", None),
        ("TRACELET_SYSTEM_TRACKING_INTERVAL", "2.5", "system_tracking_interval", 2.5),
        ("TRACELET_BUFFER_SIZE", "10", "buffer_size", 10),
        ("TRACELET_FLUSH_SECS", " 0.5 ", "flush_secs", 0.5),
        ("TRACELET_LOG_MODEL", "all", "log_model", "all"),
        ("TRACELET_LOG_MODEL", "yes", "log_model", True),
        ("TRACELET_AIM_REMOTE", "http://h:53800", "remote_uri", "aim://h:53800"),
        ("TRACELET_AIM_RUN_HASH", "abc123", "run_hash", "abc123"),
    ],
)
def test_env_parsing(variable: str, raw: str, key: str, expected: Any) -> None:
    value = getattr(resolve(env={variable: raw}), key)
    assert value == expected
    assert type(value) is type(expected)


def test_empty_env_value_is_ignored() -> None:
    assert resolve(env={"TRACELET_BUFFER_SIZE": "", "TRACELET_AIM_RUN_NAME": ""}) == resolve(env={})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("TRACELET_STRICT", "maybe"), ("TRACELET_BUFFER_SIZE", "ten"), ("TRACELET_FLUSH_SECS", "soon")],
)
def test_bad_env_value_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ValueError, match=variable):
        resolve(env={variable: raw})


def test_artifacts_folder_becomes_file_uri(tmp_path: Any) -> None:
    folder = tmp_path / "arts"
    cfg = resolve({"artifacts_uri": str(folder)}, env={})
    assert cfg.artifacts_uri == "file://" + os.path.abspath(folder)
    assert resolve({"artifacts_uri": "s3://bucket/x"}, env={}).artifacts_uri == "s3://bucket/x"


def test_repo_path_accepts_pathlike(tmp_path: Any) -> None:
    cfg = resolve({"repo_path": tmp_path}, env={})
    assert cfg.repo_path == str(tmp_path)


def test_remote_uri_is_the_repo() -> None:
    cfg = resolve({"remote_uri": "aim-server", "repo_path": "/local"}, env={})
    assert cfg.remote_uri == "aim://aim-server:53800"
    assert cfg.repo == "aim://aim-server:53800"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:53800", "aim://h:53800"),
        ("https://h:443", "aim://h:443"),
        ("aim://h:53800", "aim://h:53800"),
        ("aim://h:53800/", "aim://h:53800"),
        ("h", "aim://h:53800"),
        ("h:1234", "aim://h:1234"),
        ("  10.0.0.5  ", "aim://10.0.0.5:53800"),
    ],
)
def test_normalise_remote(given: str, expected: str) -> None:
    assert normalise_remote(given) == expected


@pytest.mark.parametrize("bad", ["ftp://h", "", "h/x", "http://h:53800/api", "aim://", "aim://h:notaport"])
def test_normalise_remote_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="aim://host:53800"):
        normalise_remote(bad)


@pytest.mark.parametrize("off", [None, 0, False, "off"])
def test_system_tracking_can_be_turned_off_in_config(off: object) -> None:
    assert resolve(config={"system_tracking_interval": off}, env={}).system_tracking_interval is None


def test_none_in_config_keeps_required_defaults() -> None:
    cfg = resolve(config={"repo_path": None, "remote_uri": None}, env={"TRACELET_AIM_REMOTE": "aim://h:1"})
    assert cfg.repo_path == os.getcwd() and cfg.remote_uri is None


def test_repo_path_is_made_absolute_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = resolve({"repo_path": "runs/aim"}, env={})
    assert cfg.repo_path == str(tmp_path / "runs" / "aim")
    monkeypatch.chdir("/")
    assert cfg.replace(run_name="x").repo_path == str(tmp_path / "runs" / "aim")
    assert resolve({"repo_path": "~/aim"}, env={}).repo_path == os.path.expanduser("~/aim")


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"buffer_size": -1}, "buffer_size"),
        ({"flush_secs": -1}, "flush_secs"),
        ({"log_model": "best"}, "log_model"),
        ({"writer": "fast"}, "writer"),
        ({"strict": "maybe"}, "strict"),
        ({"exit_handlers": 2}, "exit_handlers"),
        ({"routing": 42}, "routing"),
        ({"sink_factory": "recording"}, "sink_factory"),
        ({"run_name": ["a"]}, "run_name"),
    ],
)
def test_a_config_object_with_a_bad_value_fails_where_it_is_built(changes: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        TraceletConfig(**changes)
    with pytest.raises(ValueError, match=key):
        dataclasses.replace(TraceletConfig(), **changes)
    with pytest.raises(ValueError, match=key):
        TraceletConfig().replace(**changes)


def test_replace_names_an_unknown_key() -> None:
    with pytest.raises(ValueError, match=r"repo_pth.*repo_path"):
        TraceletConfig().replace(repo_pth="x")


def test_exit_handlers_from_the_environment() -> None:
    assert resolve(env={"TRACELET_EXIT_HANDLERS": "0"}).exit_handlers is False
    assert resolve(env={}).exit_handlers is True


def test_names_and_flags_in_the_forms_people_write_them() -> None:
    cfg = resolve({"run_name": 3, "experiment_name": Path("exp"), "strict": 1}, env={})
    assert (cfg.run_name, cfg.experiment_name, cfg.strict) == ("3", "exp", True)
    assert resolve({"artifacts_uri": "FILE:///tmp/store"}, env={}).artifacts_uri == "FILE:///tmp/store"


def test_aims_own_keyword_names_are_accepted(tmp_path: Path) -> None:
    """``AimLogger(repo=..., experiment=...)`` users switch by changing the import only."""
    cfg = resolve({"repo": str(tmp_path), "experiment": "e", "log_system_params": False}, env={})
    assert (cfg.repo_path, cfg.experiment_name, cfg.log_system_params) == (str(tmp_path), "e", False)
    assert resolve(None, {"repo": str(tmp_path)}, env={}).repo_path == str(tmp_path)
    with pytest.raises(ValueError, match="'repo' and 'repo_path' name the same setting"):
        resolve({"repo": "a", "repo_path": "b"}, env={})
