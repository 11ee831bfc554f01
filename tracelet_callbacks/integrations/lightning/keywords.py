"""The logger's constructor: every setting a typed keyword of its own.

LightningCLI (through jsonargparse) builds a logger from the signature of its class: it accepts,
type-checks and documents exactly the keywords it finds there, so ``**settings`` would hide them all.
So ``TraceletAimLogger`` names each :class:`~tracelet_callbacks.TraceletConfig` field, Lightning's
``prefix`` and aim's own ``repo`` / ``experiment``; ``tests/test_config_launchers.py`` builds it from a
YAML file and from flags, and ``tests/core`` checks that no setting is missing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...config import ALIASES, FIELDS, TraceletConfig, coerce

__all__ = ["LoggerKeywords"]


class LoggerKeywords:
    """Reads the logger's keywords into its settings, then hands them to ``_setup``."""

    def __init__(
        self,
        config: Mapping[str, Any] | TraceletConfig | None = None,
        *,
        repo_path: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: dict[str, Any] | list[str] | None = None,
        remote_uri: str | None = None,
        offline: bool | None = None,
        spool_path: str | None = None,
        resume: str | None = None,
        resume_from: str | None = None,
        buffer_size: int | None = None,
        run_hash: str | None = None,
        artifacts_uri: str | None = None,
        flush_secs: float | None = None,
        system_tracking_interval: float | str | None = "default",
        capture_terminal_logs: bool | None = None,
        log_system_params: bool | None = None,
        log_model: bool | str | None = None,
        watch: str | None = None,
        watch_freq: int | None = None,
        strict: bool | None = None,
        routing: Any = None,
        writer: str | None = None,
        exit_handlers: bool | None = None,
        sink_factory: Any = None,
        prefix: str = "",
        repo: str | None = None,
        experiment: str | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        # Every setting is a typed keyword (LightningCLI and jsonargparse build loggers from the
        # signature); ``None`` leaves it to ``config``, then the TRACELET_* variables, then the default.
        # ``system_tracking_interval=None`` turns sampling off, as with aim's AimLogger, so its
        # "not given" is the string "default".
        given = {key: value for key, value in locals().items() if key in FIELDS or key in ALIASES}
        given.update(unknown)  # a misspelt setting: the settings' own error names it and the valid ones
        if given["system_tracking_interval"] == "default":
            del given["system_tracking_interval"]
        self._setup(coerce(config, given), str(prefix or ""))  # a bad setting fails here, not mid-training

    def _setup(self, config: TraceletConfig, prefix: str) -> None:
        raise NotImplementedError
