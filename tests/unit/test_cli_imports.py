"""``consul-sd`` loads only what the chosen subcommand needs.

Each case runs :func:`consul_sd.cli.main` in a fresh interpreter and reads its ``sys.modules``
after ``main`` returns, so no import of another test (or of pytest) can hide or fake one. The
start-up time this buys is measured by ``benchmarks/cli_startup.py``, not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consul_simulator import ConsulSimulator

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "operator")}

# Runs the command as the console script does, then reports its exit code and top-level modules.
PROBE = """
import json, sys
from consul_sd.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as stop:
    code = stop.code
with open(sys.argv[1], "w") as report:
    json.dump({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}, report)
"""

ENGINE = {"pydantic", "aiohttp", "yaml"}
KUBERNETES = {"kopf", "kubernetes"}


async def loaded_by(*args: str, report: Path) -> tuple[int, set[str]]:
    """Run ``consul-sd ARGS`` in a fresh interpreter: its exit code and the packages it loaded."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE,
        str(report),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result = json.loads(report.read_text())
    return result["code"], set(result["modules"])


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.generate(services=5, instances=2, nodes=2)
        yield simulator


async def test_discover_once_never_imports_kopf_or_the_kubernetes_client(
    sim: ConsulSimulator, tmp_path: Path
) -> None:
    output = tmp_path / "consul.json"
    code, modules = await loaded_by(
        "discover",
        "--server",
        sim.address,
        "--once",
        "--output",
        str(output),
        report=tmp_path / "report.json",
    )
    assert code == 0
    assert len(json.loads(output.read_text())) == 10  # it did discover, with the engine
    assert modules & KUBERNETES == set()


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        *([command, "--help"] for command in ("discover", "operator", "validate", "convert")),
    ],
    ids=" ".join,
)
async def test_version_and_help_import_neither_the_engine_nor_kopf(
    args: list[str], tmp_path: Path
) -> None:
    code, modules = await loaded_by(*args, report=tmp_path / "report.json")
    assert code == 0
    assert modules & (ENGINE | KUBERNETES) == set()
