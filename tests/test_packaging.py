"""The built wheel and sdist hold what they should, and the wheel works once installed on its own.

The wheel is unpacked into a fresh venv outside the source tree; the dependencies come from the
running environment's site-packages through a plain path line in a ``.pth`` file. Such a line only
appends the folder to ``sys.path``: the ``.pth`` files inside it (among them the editable-install
hook that points at this checkout) are not run, so the package can only come from the wheel.
Everything is built from the source tree with the PEP 517 hooks of the backend named in
pyproject.toml, without network and without build isolation, so that backend must be installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10; hatchling depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tracelet_callbacks"
EXCLUDED_TOP_LEVEL = ("tests", "benchmarks", "examples", "docs", ".venv")

pytestmark = pytest.mark.slow

# Runs in the source tree: the two PEP 517 hooks, as a frontend without build isolation calls them.
BUILD = """
import importlib, sys
module, _, attribute = sys.argv[1].partition(":")
backend = importlib.import_module(module)
for part in filter(None, attribute.split(".")):
    backend = getattr(backend, part)
print(backend.build_sdist(sys.argv[2]))
print(backend.build_wheel(sys.argv[2]))
"""

# Runs with the fresh venv's python, in an empty folder: prints one JSON line as its last line.
PROBE = """
import importlib.metadata, json, sys, traceback

import tracelet_callbacks

failures = {}
for name in tracelet_callbacks.__all__:
    try:
        getattr(tracelet_callbacks, name)
    except Exception:
        failures[name] = traceback.format_exc()
try:
    from tracelet_callbacks.pytorch_lightning import TraceletAimLogger  # noqa: F401
except Exception:
    failures["tracelet_callbacks.pytorch_lightning.TraceletAimLogger"] = traceback.format_exc()

distribution = importlib.metadata.distribution(sys.argv[1])
print(json.dumps({
    "file": tracelet_callbacks.__file__,
    "modules": {
        name: getattr(module, "__file__", None)
        for name, module in sys.modules.items()
        if name == "tracelet_callbacks" or name.startswith("tracelet_callbacks.")
    },
    "failures": failures,
    "version": distribution.version,
    "dunder_version": tracelet_callbacks.__version__,
    "metadata_at": str(distribution.locate_file("")),
    "sys_path": sys.path,
}))
"""


def _run(command: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs a command to its end; a failure shows its whole output."""
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} took over {timeout} s\nstdout:\n{exc.stdout}\nstderr:\n{exc.stderr}")
    if done.returncode != 0:
        pytest.fail(f"{command} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return done.stdout


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def dist_dir(pyproject: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = pyproject["build-system"]["build-backend"]
    if importlib.util.find_spec(backend.partition(":")[0].split(".")[0]) is None:
        pytest.fail(f"the build backend {backend} is not installed here: it is part of the test extra")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-c", BUILD, backend, str(out)], cwd=ROOT, timeout=180)
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {[p.name for p in found]}"
    return found[0]


def _source_files() -> set[str]:
    """The package's files in the source tree, as paths relative to the root, less byte code."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / PACKAGE).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_holds_the_package_and_nothing_else(dist_dir: Path, pyproject: dict[str, Any]) -> None:
    wheel = _one(dist_dir, "*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        dist_info = {name.split("/")[0] for name in names if name.split("/")[0].endswith(".dist-info")}
        assert len(dist_info) == 1, dist_info
        (dist_info,) = dist_info
        wheel_meta = Parser().parsestr(archive.read(f"{dist_info}/WHEEL").decode())
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())

    package = {name for name in names if name.startswith(f"{PACKAGE}/")}
    others = set(names) - package - {name for name in names if name.startswith(f"{dist_info}/")}
    assert not others, f"files outside the package in the wheel: {sorted(others)}"
    for top in EXCLUDED_TOP_LEVEL:
        assert not [name for name in names if name.startswith(f"{top}/")], f"{top}/ is in the wheel"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]

    for required in ("__init__.py", "py.typed", "integrations/__init__.py", "sink/__init__.py"):
        assert f"{PACKAGE}/{required}" in package, f"{required} is missing from the wheel"
    assert any(name.startswith(f"{PACKAGE}/integrations/") and name.endswith(".py") for name in package)
    assert any(name.startswith(f"{PACKAGE}/sink/") and name.endswith(".py") for name in package)
    # every file of the package's source ends up in the wheel (no sub-package left behind), and no other
    assert package == _source_files(), (
        f"missing: {sorted(_source_files() - package)}, extra: {sorted(package - _source_files())}"
    )

    assert wheel_meta["Root-Is-Purelib"] == "true"
    assert wheel_meta["Tag"] == "py3-none-any"
    assert metadata["Name"] == pyproject["project"]["name"]
    assert metadata["Version"] == pyproject["project"]["version"]


def test_sdist_holds_pyproject_and_the_package(dist_dir: Path) -> None:
    sdist = _one(dist_dir, "*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    prefix = sdist.name.removesuffix(".tar.gz") + "/"
    assert all(name.startswith(prefix) for name in names), f"not all under {prefix}: {names[:5]}"
    inside = {name.removeprefix(prefix) for name in names}

    assert {"pyproject.toml", "PKG-INFO"} <= inside
    missing = _source_files() - inside
    assert not missing, f"package files missing from the sdist: {sorted(missing)}"
    assert not [name for name in inside if name.startswith((".venv/", ".git/"))]
    assert not [name for name in inside if "__pycache__" in name or name.endswith(".pyc")]


def test_installed_wheel_imports_without_the_source_tree(
    dist_dir: Path, pyproject: dict[str, Any], tmp_path: Path
) -> None:
    wheel = _one(dist_dir, "*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    probe_env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    site_packages = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            cwd=tmp_path,
            env=probe_env,
            timeout=60,
        ).strip()
    )
    assert _inside(site_packages, venv), site_packages

    # install: a pure-Python wheel is unpacked into purelib as it is (no .data folder to spread)
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if ".data/" in name]
        archive.extractall(site_packages)
    (_one(site_packages, "*.dist-info") / "INSTALLER").write_text("test_packaging\n")

    # the dependencies: this environment's site-packages, appended to sys.path after the venv's own
    dependencies = list(
        dict.fromkeys(
            entry
            for entry in sys.path
            if Path(entry).name in ("site-packages", "dist-packages") and Path(entry).is_dir()
        )
    )
    assert dependencies, sys.path
    (site_packages / "_tracelet_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    output = _run(
        [str(python), str(probe), pyproject["project"]["name"]], cwd=workdir, env=probe_env, timeout=240
    )
    report = json.loads(output.strip().splitlines()[-1])
    shown = "what the probe saw:\n" + json.dumps(report, indent=2)

    assert _inside(report["file"], site_packages), shown
    assert not _inside(report["file"], ROOT), shown
    outside = {
        name: file
        for name, file in report["modules"].items()
        if file is None or not _inside(file, site_packages)
    }
    assert not outside, f"modules not from the installed wheel: {outside}\n{shown}"
    assert not report["failures"], "\n".join(report["failures"].values())
    # the dependencies are seen, but the source tree is not: no .pth inside them ran
    assert set(dependencies) <= set(report["sys_path"]), shown
    assert not [entry for entry in report["sys_path"] if entry and Path(entry).resolve() == ROOT], shown
    assert _inside(report["metadata_at"], site_packages), shown
    assert report["version"] == pyproject["project"]["version"], shown
    assert report["dunder_version"] == pyproject["project"]["version"], shown
