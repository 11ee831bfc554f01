"""One settings object for every entry point: keywords > ``config`` dict > ``TRACELET_*`` env > defaults.

>>> cfg = resolve({"run_name": "baseline"}, {"repo_path": "/tmp/aim_repo", "run_name": "ignored"}, env={})
>>> cfg.run_name, cfg.repo_path, cfg.experiment_name
('baseline', '/tmp/aim_repo', 'Tracelet Experiments')
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .core.routing import make_table

__all__ = ["ENV_VARS", "WRITER_MODES", "TraceletConfig", "coerce", "explicit", "resolve"]

DEFAULT_EXPERIMENT = "Tracelet Experiments"


@dataclass(frozen=True)
class TraceletConfig:
    """The settings every entry point takes, under the same names.

    Build it with :func:`resolve` or hand it to an entry point, which validates it (:func:`coerce`).

    Attributes:
        repo_path: folder holding the AIM repo (``<repo_path>/.aim``); ``.`` so ``aim up`` there shows it.
            Made absolute when the settings are resolved, so a later ``chdir`` changes nothing.
        experiment_name: the AIM experiment the run belongs to.
        run_name: the run's display name.
        tags: a mapping (stored as queryable params under ``tags`` and as ``key=value`` AIM tags) or a
            list of AIM tags.
        remote_uri: ``aim://host:53800`` (``http://`` is accepted and means the same) to log to a server.
            Values are written to the spool first and sent on from there, so a server that goes
            away loses nothing (see ``docs/team.md``).
        offline: with ``remote_uri``: write to the spool only, for machines that cannot reach the
            server; ``python -m tracelet_callbacks sync`` sends the runs later.
        spool_path: the local AIM repo that holds a server's runs until the server has them; default
            ``.aim-spool`` in the working folder (made absolute when resolved).
        resume: what loading a checkpoint does to the run: ``"auto"`` continues the run that wrote it and
            removes the points that run logged after the checkpoint's step; ``"append"`` continues it and
            keeps them; ``"never"`` starts a new run. ``"allow"``: ``run_hash`` names the run to continue,
            made with that hash if there is none yet (one name for a job whose processes start apart).
        resume_from: a checkpoint file or folder a plain script (or an Accelerate ``load_state``) loads:
            the run that wrote it (``Experiment.mark_checkpoint``) is continued, as ``resume`` says.
        buffer_size: how many records the writer holds before it must write.
        run_hash: an existing run to continue.
        artifacts_uri: where artifacts are copied (``file://...`` or ``s3://...``); default: a folder
            ``aim-artifacts`` beside the repo (with ``remote_uri``: in the working folder, on the
            training machine; use ``s3://`` for a team).
        flush_secs: the longest a logged value waits before it is written.
        system_tracking_interval: seconds between CPU / GPU / memory samples; ``None``, ``0`` or ``"off"``
            turns it off.
        capture_terminal_logs: also store the process's stdout / stderr in the run (off by default: a
            shared UI is no place for whatever a script prints).
        log_system_params: record the environment (Python, packages, host, command line with secrets
            redacted) under ``run["__system_params"]``, where aim's UI shows it; aim's own name.
        log_model: ``False``, ``True`` (best and last checkpoints at the end) or ``"all"`` (each).
        watch: ``"gradients"``, ``"parameters"`` or ``"all"``: the Lightning logger and the Hugging Face
            callback watch the trained model without a call (see ``watch()``); ``None``: only when asked.
        watch_freq: write gradient / weight norms and histograms every this many optimizer steps.
        strict: raise on values we would otherwise skip with a warning.
        routing: override the tag -> (name, context) rules (see ``core.routing.make_table``).
        writer: where AIM writes happen: ``"process"`` (a writer process fed through a pipe, so the
            training loop pays an append per value), ``"thread"`` (a background thread in this
            process) or ``"sync"`` (on the caller's thread, for debugging).
        exit_handlers: record ``failed`` / ``interrupted`` for an uncaught exception, Ctrl-C or SIGTERM
            by chaining onto ``sys.excepthook`` and the SIGTERM handler; ``False`` leaves both alone
            (runs still open at exit are closed ``finished``), for hosts that own them.
        sink_factory: ``config -> Sink``, what writes the run instead of AIM (a test double such as
            :class:`~tracelet_callbacks.testing.RecordingSink`); ``None``: AIM, through ``writer``.
    """

    repo_path: str = "."
    experiment_name: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    tags: Any = None
    remote_uri: str | None = None
    offline: bool = False
    spool_path: str = ".aim-spool"
    resume: str = "auto"
    resume_from: str | None = None
    buffer_size: int = 1000
    run_hash: str | None = None
    artifacts_uri: str | None = None
    flush_secs: float = 1.0
    system_tracking_interval: float | None = 10.0
    capture_terminal_logs: bool = False
    log_system_params: bool = True
    log_model: bool | str = False
    watch: str | None = None
    watch_freq: int = 100
    strict: bool = False
    routing: Any = None
    writer: str = "process"
    exit_handlers: bool = True
    sink_factory: Any = None

    def __post_init__(self) -> None:
        # a TraceletConfig built by hand is checked as one built from a dict: a bad value fails here
        if not _checking.get():
            token = _checking.set(True)
            try:
                _validated(self)
            finally:
                _checking.reset(token)

    def replace(self, **changes: Any) -> TraceletConfig:
        """A copy with ``changes``, validated like every other form of settings."""
        for key in changes:
            if key not in FIELDS:
                raise unknown_key_error(str(key))
        return _validated(dataclasses.replace(self, **changes))

    @property
    def repo(self) -> str:
        """What aim's ``Run(repo=...)`` takes: the remote URI, or the local folder."""
        return self.remote_uri or self.repo_path


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TraceletConfig))

#: Set while a config is being validated, so the copies validation makes are not checked again.
_checking: contextvars.ContextVar[bool] = contextvars.ContextVar("tracelet_config_checking", default=False)


def explicit(config: TraceletConfig) -> dict[str, Any]:
    """The settings of ``config`` that differ from the defaults, as a ``config=`` dict.

    >>> explicit(TraceletConfig(run_name="a", buffer_size=10))
    {'run_name': 'a', 'buffer_size': 10}
    """
    defaults = TraceletConfig()
    values = {name: getattr(config, name) for name in FIELDS}
    return {name: value for name, value in values.items() if value != getattr(defaults, name)}


#: Settings for which ``None`` is a meaningful value (no remote, no system tracking ...).
_NULLABLE = frozenset(
    {f.name for f in dataclasses.fields(TraceletConfig) if f.default is None} | {"system_tracking_interval"}
)

#: Settings whose default is on, so that ``None`` given as a keyword turns them off.
_OFF_BY_NONE = frozenset({"system_tracking_interval"})

#: Settings that are true or false; a string such as "no" in a config dict is read as the env is.
_FLAGS = frozenset({"capture_terminal_logs", "log_system_params", "strict", "exit_handlers", "offline"})

#: aim's own keyword names (``AimLogger`` / ``AimCallback``), so switching to us is a change of import.
ALIASES: dict[str, str] = {"repo": "repo_path", "experiment": "experiment_name"}

#: Where aim can copy artifacts (its artifact registry's schemes).
ARTIFACT_SCHEMES = ("file", "s3")

#: Environment variable -> setting, for jobs whose code cannot be edited.
ENV_VARS: dict[str, str] = {
    "TRACELET_AIM_REPO": "repo_path",
    "TRACELET_AIM_EXPERIMENT": "experiment_name",
    "TRACELET_AIM_RUN_NAME": "run_name",
    "TRACELET_AIM_TAGS": "tags",
    "TRACELET_AIM_REMOTE": "remote_uri",
    "TRACELET_OFFLINE": "offline",
    "TRACELET_SPOOL": "spool_path",
    "TRACELET_RESUME": "resume",
    "TRACELET_RESUME_FROM": "resume_from",
    "TRACELET_AIM_RUN_HASH": "run_hash",
    "TRACELET_AIM_ARTIFACTS_URI": "artifacts_uri",
    "TRACELET_BUFFER_SIZE": "buffer_size",
    "TRACELET_FLUSH_SECS": "flush_secs",
    "TRACELET_SYSTEM_TRACKING_INTERVAL": "system_tracking_interval",
    "TRACELET_CAPTURE_TERMINAL_LOGS": "capture_terminal_logs",
    "TRACELET_LOG_SYSTEM_PARAMS": "log_system_params",
    "TRACELET_LOG_MODEL": "log_model",
    "TRACELET_WATCH": "watch",
    "TRACELET_WATCH_FREQ": "watch_freq",
    "TRACELET_STRICT": "strict",
    "TRACELET_WRITER": "writer",
    "TRACELET_EXIT_HANDLERS": "exit_handlers",
}

#: What ``watch`` takes (see :class:`TraceletConfig`).
WATCH_CHOICES: tuple[str | None, ...] = ("gradients", "parameters", "all", None)

#: What ``resume`` takes (see :class:`TraceletConfig`).
RESUME_MODES: tuple[str, ...] = ("auto", "append", "never", "allow")

#: The writer modes (see :class:`TraceletConfig`).
WRITER_MODES: tuple[str, ...] = ("process", "thread", "sync")


def unknown_key_error(key: str, valid: tuple[str, ...] = FIELDS) -> ValueError:
    hint = difflib.get_close_matches(key, valid, n=1)
    guess = f" Did you mean {hint[0]!r}?" if hint else ""
    return ValueError(f"tracelet: unknown setting {key!r}.{guess} Valid settings: {', '.join(valid)}")


def resolve(
    kwargs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> TraceletConfig:
    """Merge the sources (keywords whose value is ``None`` count as not given) and validate."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    for variable, key in ENV_VARS.items():
        raw = env.get(variable)
        if raw not in (None, ""):
            merged[key] = _from_env(key, raw, variable)
        elif raw == "" and key == "run_hash":  # a job script's `export ...=$HASH` with HASH unset:
            merged[key] = raw  # refused below, rather than a new run the job did not mean
    # In a config dict an explicit None is a value ("no remote"); a keyword left at None is simply not
    # given, except where None is the way to turn a default off (system_tracking_interval=None).
    for source, none_counts in ((config or {}), True), ((kwargs or {}), False):
        if not isinstance(source, Mapping):
            raise TypeError(f"tracelet: config must be a dict, got {type(source).__name__}")
        for key, value in source.items():
            if key in ALIASES:  # aim's name for the same setting
                own = ALIASES[key]
                if value is None:
                    continue
                if source.get(own) is not None:
                    raise ValueError(f"tracelet: {key!r} and {own!r} name the same setting; give one")
                key = own
            if key not in FIELDS:
                raise unknown_key_error(str(key))
            if key in _FLAGS and isinstance(value, str):  # "false" in a config file means False
                value = _from_env(key, value, f"{key} in config")
            if value is not None or (key in _NULLABLE and (none_counts or key in _OFF_BY_NONE)):
                merged[key] = value
    return _validated(TraceletConfig(**merged))


def coerce(
    config: Mapping[str, Any] | TraceletConfig | None = None, settings: Mapping[str, Any] | None = None
) -> TraceletConfig:
    """What every entry point does with its ``config=`` and keywords: one validated settings object.

    A :class:`TraceletConfig` counts as complete (the environment is not read again) but is checked
    as strictly as a dict, so a bad value fails here, at construction, with the key named.

    >>> coerce(TraceletConfig(run_name="a"), {"strict": True}).strict
    True
    >>> coerce(TraceletConfig(buffer_size=0))
    Traceback (most recent call last):
    ...
    ValueError: tracelet: buffer_size must be a positive int, got 0
    """
    if isinstance(config, TraceletConfig):
        given = {name: getattr(config, name) for name in FIELDS}
        return resolve(settings, given, env={})
    return resolve(settings, config)


def _from_env(key: str, raw: str, variable: str) -> Any:
    raw = raw.strip()
    try:
        if key in ("buffer_size", "watch_freq"):
            return int(raw)
        if key == "watch":
            return None if raw.lower() in ("", "none", "off", "false", "0") else raw
        if key == "flush_secs":
            return float(raw)
        if key == "system_tracking_interval":
            return None if raw.lower() in ("none", "off", "0") else float(raw)
        if key in _FLAGS:
            return _as_bool(raw)
        if key == "log_model":
            return "all" if raw.lower() == "all" else _as_bool(raw)
    except ValueError as exc:
        raise ValueError(f"tracelet: {variable}={raw!r} is not a valid {key}: {exc}") from exc
    if key == "tags":
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if items and all("=" in item for item in items):
            return dict(item.split("=", 1) for item in items)
        return items
    return raw


def _as_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _validated(cfg: TraceletConfig) -> TraceletConfig:
    if not isinstance(cfg.buffer_size, int) or isinstance(cfg.buffer_size, bool) or cfg.buffer_size < 1:
        raise ValueError(f"tracelet: buffer_size must be a positive int, got {cfg.buffer_size!r}")
    if not _positive_number(cfg.flush_secs):
        raise ValueError(f"tracelet: flush_secs must be a positive number, got {cfg.flush_secs!r}")
    interval = cfg.system_tracking_interval
    if interval is False or interval == 0 or interval == "off":
        interval = None
    if interval is not None and not _positive_number(interval):
        raise ValueError(f"tracelet: system_tracking_interval must be positive or None, got {interval!r}")
    if not (isinstance(cfg.log_model, bool) or cfg.log_model == "all"):
        raise ValueError(f"tracelet: log_model must be False, True or 'all', got {cfg.log_model!r}")
    if cfg.watch not in WATCH_CHOICES:
        raise ValueError(f"tracelet: watch must be one of {WATCH_CHOICES}, got {cfg.watch!r}")
    if not isinstance(cfg.watch_freq, int) or isinstance(cfg.watch_freq, bool) or cfg.watch_freq < 1:
        raise ValueError(f"tracelet: watch_freq must be a positive int, got {cfg.watch_freq!r}")
    if cfg.resume not in RESUME_MODES:
        raise ValueError(f"tracelet: resume must be one of {', '.join(RESUME_MODES)}, got {cfg.resume!r}")
    if cfg.resume_from is not None and not isinstance(cfg.resume_from, (str, os.PathLike)):
        raise ValueError(f"tracelet: resume_from must be a path, got {type(cfg.resume_from).__name__}")
    if cfg.writer not in WRITER_MODES:
        raise ValueError(f"tracelet: writer must be one of {', '.join(WRITER_MODES)}, got {cfg.writer!r}")
    for folder in ("repo_path", "spool_path"):
        if not isinstance(getattr(cfg, folder), (str, os.PathLike)):
            raise ValueError(f"tracelet: {folder} must be a path, got {type(getattr(cfg, folder)).__name__}")
    changes: dict[str, Any] = {}
    for flag in sorted(_FLAGS):
        value = getattr(cfg, flag)
        if type(value) is int and value in (0, 1):  # strict=1, as people write it
            changes[flag] = bool(value)
        elif not isinstance(value, bool):
            raise ValueError(f"tracelet: {flag} must be True or False, got {value!r}")
    if cfg.sink_factory is not None and not callable(cfg.sink_factory):
        raise ValueError(f"tracelet: sink_factory must be callable, got {type(cfg.sink_factory).__name__}")
    for text in ("experiment_name", "run_name"):  # a number or a Path names a run as well as a string
        value = getattr(cfg, text)
        if value is not None and not isinstance(value, str):
            if not isinstance(value, (int, float, os.PathLike)) or isinstance(value, bool):
                raise ValueError(f"tracelet: {text} must be a string, got {type(value).__name__}")
            changes[text] = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if cfg.run_hash is not None and not isinstance(cfg.run_hash, str):
        raise ValueError(f"tracelet: run_hash must be a string, got {type(cfg.run_hash).__name__}")
    if isinstance(cfg.run_hash, str) and not cfg.run_hash.strip():
        raise ValueError(
            f"tracelet: run_hash is {cfg.run_hash!r}: give the hash of the run to continue (run.hash) "
            "or leave it out (a new run); check TRACELET_AIM_RUN_HASH if it came from there"
        )
    try:
        make_table(cfg.routing)
    except TypeError as exc:
        raise ValueError(f"tracelet: {exc}") from None
    repo_path = os.path.abspath(os.path.expanduser(os.fspath(cfg.repo_path)))
    spool_path = os.path.abspath(os.path.expanduser(os.fspath(cfg.spool_path)))
    changes.update(repo_path=repo_path, spool_path=spool_path, system_tracking_interval=interval)
    if cfg.remote_uri is not None:
        changes["remote_uri"] = normalise_remote(cfg.remote_uri)
    if cfg.tags is not None and not isinstance(cfg.tags, (Mapping, list, tuple, set, str)):
        raise ValueError(f"tracelet: tags must be a dict or a list, got {type(cfg.tags).__name__}")
    if cfg.artifacts_uri is not None and "://" not in str(cfg.artifacts_uri):
        # a bare folder is what people type; aim wants a scheme
        changes["artifacts_uri"] = "file://" + os.path.abspath(str(cfg.artifacts_uri))
    elif (
        cfg.artifacts_uri is not None
        and str(cfg.artifacts_uri).split("://")[0].lower() not in ARTIFACT_SCHEMES
    ):
        raise ValueError(
            f"tracelet: artifacts_uri {cfg.artifacts_uri!r} is not a store aim can write; use one of "
            + ", ".join(f"{scheme}://" for scheme in ARTIFACT_SCHEMES)
        )
    if cfg.resume_from is not None:
        changes["resume_from"] = os.path.abspath(os.path.expanduser(os.fspath(cfg.resume_from)))
    return dataclasses.replace(cfg, **changes)


def _positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def normalise_remote(uri: str) -> str:
    """``aim://host:port`` from what users write (``http://host:port``, ``host:port``).

    >>> normalise_remote("http://aim-server:53800")
    'aim://aim-server:53800'
    """
    text = str(uri).strip()
    for scheme in ("aim://", "http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :].rstrip("/")
            break
    else:
        if "://" in text:
            raise ValueError(f"tracelet: remote_uri must look like aim://host:53800, got {uri!r}")
    if ":" not in text:
        text += ":53800"
    host, _, port = text.rpartition(":")
    if not host or "/" in text or not port.isdigit():
        raise ValueError(f"tracelet: remote_uri must look like aim://host:53800, got {uri!r}")
    return f"aim://{text}"
