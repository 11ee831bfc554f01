"""The repo folder: checked from the training process (no aim import), made by the writer.

:func:`check_repo_path` and :func:`check_server` run in the trainer when a run is opened, so a folder
that cannot be written, a repo this aim cannot write or a server that is not there fails where the
user sees it. :func:`make_repo` makes a new AIM repo, once however many jobs start together.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator

from ..errors import TraceletError

__all__ = [
    "check_address",
    "check_repo",
    "check_repo_path",
    "check_server",
    "make_repo",
    "migrate_in_this_process",
    "not_an_aim_server",
]

log = logging.getLogger("tracelet_callbacks")

_CONNECT_TIMEOUT = 3.0

#: Whether a new repo's database is set up in this process (see :func:`migrate_in_this_process`).
_migrate_here = False


def migrate_in_this_process() -> None:
    """Set up new repos' databases in this process from now on: for the writer process only.

    aim sets up a new repo's database by running ``python -m alembic upgrade head`` in a child
    process: a second interpreter that imports aim again, about 1.5 s on a 2-core machine, which a
    user's first run in a new folder would otherwise wait for at its end. The writer runs the same
    migration itself (about 0.2 s, aim already imported). A training process never does: alembic's
    migration script reconfigures the ``logging`` module.
    """
    global _migrate_here
    _migrate_here = True


def make_repo(path: str) -> str:
    """``path`` with an AIM repo in it (made if there is none), for ``aim.Run(repo=path)``."""
    os.makedirs(path, exist_ok=True)
    # Jobs starting together make the repo once: aim writes VERSION last, and a repo seen without it
    # counts as out of date. A ".aim" without VERSION (left by a deleted repo's last writer) is
    # made a repo again.
    with _locked(path):
        if not os.path.exists(os.path.join(path, ".aim", "VERSION")):
            from aim import Repo

            with _migrations_here() if _migrate_here else contextlib.nullcontext():
                Repo.from_path(path, init=True)
    return path


@contextlib.contextmanager
def _migrations_here() -> Iterator[None]:
    """While this is open, aim's database migration runs in this process (aim 3.29: ``DB.run_upgrades``
    calls ``upgrade_database`` as imported into ``aim.storage.structured.db``; pinned by ``aim<4``). Where
    that is not what this aim does, aim's own way runs unchanged."""
    try:
        from aim.storage.migrations import utils
        from aim.storage.structured import db
    except ImportError:
        yield
        return
    original = getattr(db, "upgrade_database", None)
    if original is None:
        yield
        return

    def upgrade(db_url: str) -> None:
        try:
            target = _db_file(db_url)
            # only a new sqlite database starts from the kept one (an old repo's is migrated)
            new = target is not None and not os.path.exists(target)
            template = _template_path() if new else None
            if template is not None and _copy_template(template, target):
                return
            _upgrade(db_url, utils.create_migration_cmd())
            if template is not None:
                _keep_template(target, template)
        except Exception as exc:  # whatever went wrong here, aim's own child process may still do it
            log.debug("tracelet: in-process migration failed (%r); running aim's", exc)
            original(db_url)

    db.upgrade_database = upgrade
    try:
        yield
    finally:
        db.upgrade_database = original


def _upgrade(db_url: str, command_line: list[str]) -> None:
    """What ``python -m alembic -c INI upgrade head`` does, here, with the logging set up as it was."""
    from alembic import command
    from alembic.config import Config

    ini = command_line[command_line.index("-c") + 1]
    saved_root = logging.root.level, list(logging.root.handlers)
    saved = {
        name: getattr(logger, "disabled", False) for name, logger in logging.root.manager.loggerDict.items()
    }
    previous = os.environ.get("AIM_RUN_META_DATA_DB_URL")
    os.environ["AIM_RUN_META_DATA_DB_URL"] = db_url  # what aim's migration script reads
    try:
        command.upgrade(Config(ini), "head")
    finally:
        if previous is None:
            os.environ.pop("AIM_RUN_META_DATA_DB_URL", None)
        else:
            os.environ["AIM_RUN_META_DATA_DB_URL"] = previous
        # the migration script calls logging.config.fileConfig, which replaces the root handlers and
        # turns off every logger it does not name
        logging.root.setLevel(saved_root[0])
        logging.root.handlers[:] = saved_root[1]
        for name, logger in logging.root.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.disabled = saved.get(name, False)


# A new repo's database, made once per machine and aim version: aim's migrations (alembic, about 0.2 s
# of the writer's CPU while the training has just started) run for the first new repo; every later
# one gets a copy of the database they made, which holds no data (empty tables and alembic's revision).


def _db_file(db_url: str) -> str | None:
    prefix = "sqlite:///"
    return db_url[len(prefix) :] if db_url.startswith(prefix) else None


def _template_path() -> str | None:
    """Where the empty database of this aim's migrations is kept (``None``: not for this aim)."""
    from aim.storage import migrations
    from aim.web.configs import AIM_ENV_MODE_KEY

    if os.environ.get(AIM_ENV_MODE_KEY, "prod") != "prod":  # aim's development settings: its own way
        return None
    versions = os.path.join(os.path.dirname(migrations.__file__), "versions")
    digest = hashlib.sha256()
    for name in sorted(n for n in os.listdir(versions) if n.endswith(".py")):
        digest.update(name.encode())
        with open(os.path.join(versions, name), "rb") as script:
            digest.update(script.read())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tracelet_callbacks", f"aim-empty-db-{digest.hexdigest()[:16]}.sqlite")


def _copy_template(template: str, target: str) -> bool:
    """Give a new repo the kept empty database at ``target``; ``False`` where none is kept."""
    try:
        with open(template, "rb") as source:
            if source.read(16) != b"SQLite format 3\x00":
                return False
    except OSError:  # none kept yet
        return False
    scratch = f"{target}.{os.getpid()}.new"
    try:
        shutil.copyfile(template, scratch)
        os.replace(scratch, target)  # the repo is locked while it is made: no one else writes here
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        return False
    return True


def _keep_template(source: str, template: str) -> None:
    """Keep the database aim's migrations just made for a new repo, for the next new repo."""
    if os.path.exists(template):
        return
    scratch = f"{template}.{os.getpid()}.new"
    try:
        os.makedirs(os.path.dirname(template), exist_ok=True)
        shutil.copyfile(source, scratch)
        os.replace(scratch, template)  # whole or not at all, whoever else keeps one meanwhile
    except OSError as exc:  # a read-only home: the next new repo runs the migrations again
        log.debug("tracelet: could not keep the empty repo database at %s: %r", template, exc)
        with contextlib.suppress(OSError):
            os.unlink(scratch)


@contextlib.contextmanager
def _locked(folder: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on the folder itself: no file is left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # which releases the lock


def check_repo_path(repo_path: str) -> str:
    """The repo folder, created and checked writable, and any AIM repo in it checked readable by this
    aim (no aim import: the trainer calls it, so a broken repo fails where the user can see it)."""
    path = repo_path  # absolute since the settings were resolved
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".tracelet-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise TraceletError(
            f"tracelet: cannot write to repo_path {path!r} ({exc.strerror or exc}); "
            "choose a folder you can write to with repo_path= or TRACELET_AIM_REPO"
        ) from exc
    check_repo(path)
    return path


def check_repo(repo_path: str, write: bool = True) -> None:
    """The checks of :func:`check_repo_path` that touch nothing: the AIM repo in ``repo_path``, if
    there is one, is a folder whose data version this aim can write (with ``write=False``, read: aim
    reads a newer version's repo, but fails on an unreadable ``VERSION`` with a bare ``ValueError``).
    :class:`TraceletError` names the path and the cause.

    The command line runs it before it opens a repo, so a broken one is an ``error:`` line."""
    repo = os.path.join(repo_path, ".aim")
    if os.path.lexists(repo) and not os.path.isdir(repo):
        raise TraceletError(
            f"tracelet: {repo!r} is not a folder, so it is no AIM repo; move it or choose another repo_path"
        )
    version_file = os.path.join(repo, "VERSION")
    if os.path.exists(version_file):
        found, supported = _read_version(version_file), _aim_data_version()
        if found is None or (write and supported is not None and found > supported):
            shown = ".".join(map(str, found)) if found else "unreadable"
            ours, use = ".".join(map(str, supported or ())), "write" if write else "read"
            raise TraceletError(
                f"tracelet: the AIM repo {repo!r} has data version {shown}, which the installed aim "
                f"(data version {ours}) cannot {use}; upgrade aim or choose another repo_path"
            )


def _read_version(version_file: str) -> tuple[int, ...] | None:
    try:
        with open(version_file, encoding="utf-8") as handle:
            return tuple(int(part) for part in handle.read().strip().split("."))
    except (OSError, ValueError):
        return None


def _aim_data_version() -> tuple[int, ...] | None:
    """aim's ``DATA_VERSION``, read from its source so the trainer need not import aim (0.65 s)."""
    spec = importlib.util.find_spec("aim")
    folder = os.path.dirname(spec.origin) if spec and spec.origin else None
    try:
        with open(os.path.join(folder or "", "sdk", "data_version.py"), encoding="utf-8") as handle:
            match = re.search(r"DATA_VERSION\s*=\s*\(([\d,\s]+)\)", handle.read())
    except OSError:
        return None
    return tuple(int(part) for part in match[1].split(",") if part.strip()) if match else None


def check_server(remote_uri: str) -> None:
    """Fail in seconds, with the address, when the AIM server is not there (aim itself retries for
    long) or what answers there is not an AIM server."""
    address = remote_uri[len("aim://") :]
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise TraceletError(
            f"tracelet: cannot reach the AIM server at {remote_uri} ({exc}); "
            "is `aim server` running there and the port open?"
        ) from exc
    wrong = not_an_aim_server(remote_uri)
    if wrong:
        raise TraceletError(wrong)


def check_address(remote_uri: str) -> None:
    """At construction: ``ValueError`` when something answers at ``remote_uri`` that is not an AIM
    server (a web server, aim's UI port). A server that is down is not a mistake in the settings: the
    spool takes the run until it answers. Asked once per address and process."""
    wrong = _verdicts.get(remote_uri)
    if wrong is None:
        try:
            wrong = not_an_aim_server(remote_uri) or ""
        except Exception:  # never a reason to refuse the settings
            wrong = ""
        _verdicts[remote_uri] = wrong
    if wrong:
        raise ValueError(wrong)


_verdicts: dict[str, str] = {}


def not_an_aim_server(remote_uri: str) -> str | None:
    """Why what answers at ``remote_uri`` is not an AIM server, or ``None`` (it is, or nothing clear
    answered: not there, busy, or TLS, which this plain probe cannot judge).

    An ``aim server`` answers ``GET /client/get-version/`` with JSON holding its version (what aim's
    own client asks first); aim's UI answers with its web page, another server with an error.
    """
    import http.client
    import json

    if os.environ.get("AIM_CLIENT_SSL_CERTIFICATES_FILE"):
        return None
    address = remote_uri[len("aim://") :]
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=_CONNECT_TIMEOUT)
    try:
        connection.request("GET", "/client/get-version/")
        response = connection.getresponse()
        body = response.read(4096)
    except (http.client.BadStatusLine, http.client.RemoteDisconnected) as exc:
        what = f"it does not answer HTTP like `aim server` ({type(exc).__name__})"
    except OSError:  # not there, or too busy to answer in time: not a verdict
        return None
    else:
        try:
            version = json.loads(body).get("version") if response.status == 200 else None
        except (ValueError, AttributeError):
            version = None
        if version:
            return None
        kind = response.getheader("content-type", "") or "no content type"
        what = f"GET /client/get-version/ answered {response.status} ({kind.split(';')[0]})"
        if "html" in kind:
            what += "; aim's UI (`aim up`, port 43800) is not its tracking server (`aim server`, port 53800)"
    finally:
        connection.close()
    return (
        f"tracelet: {remote_uri} is not an AIM server: {what}; "
        "start one with `aim server` and give its address"
    )
