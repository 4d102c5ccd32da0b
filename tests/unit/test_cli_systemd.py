"""examples/systemd/consul-sd.service: a unit systemd accepts, running a command the CLI accepts.

Offline: the unit is parsed here; ``systemd-analyze verify`` checks it when the host has it (the
binary path is replaced by /bin/true, which verify requires to exist).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from consul_sd.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "examples" / "systemd" / "consul-sd.service"


def settings() -> dict[str, str]:
    """The unit's ``Key=value`` lines (continuations joined; no key repeats in this unit)."""
    text = UNIT.read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            assert key not in found, key
            found[key] = value.strip()
    return found


def test_the_unit_runs_consul_sd_discover_with_flags_the_cli_accepts() -> None:
    binary, *argv = shlex.split(settings()["ExecStart"])
    assert binary.endswith("/consul-sd")
    args = build_parser().parse_args(argv)
    assert args.command == "discover"
    assert not args.once
    assert args.output is not None
    assert str(args.output.parent) in settings()["ReadWritePaths"].split()


def test_reload_is_sighup_and_usage_errors_are_not_restarted() -> None:
    found = settings()
    assert found["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert found["RestartPreventExitStatus"] == "2"  # consul-sd's exit code for usage errors


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "consul-sd.service"
    unit.write_text(UNIT.read_text().replace("/opt/consul-sd/bin/consul-sd", "/bin/true"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "consul-sd.service" not in done.stderr, done.stderr  # no warning about the unit
