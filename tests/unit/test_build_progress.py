"""A cold build never counts against a start deadline, and it is never silent.

The real ``hack/bins/build.sh`` runs in a temporary cache with a stand-in ``go`` first on PATH:
its "build" sleeps, then copies a tiny fake Consul agent (Python, answering
``/v1/status/leader``) to the path build.sh asked for. So the script's locking, progress lines
and failure report are the real ones; only the compiler is replaced.

Limits: real time (subprocesses, so no virtual clock): each test takes a few seconds. The
heartbeat interval is shortened to 1 s through ``CONSUL_SD_BUILD_HEARTBEAT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support import components
from tests.support.components import ComponentError, ConsulAgent, ControlPlane

START_TIMEOUT = 1.5
SLOW_BUILD_SECONDS = 2.5  # longer than START_TIMEOUT: a deadline that included it would expire
# etcd + kube-apiserver: two builds (5 s) exceed it; start-up (a key, etcd, 1.5 s of apiserver)
# fits.
CONTROL_PLANE_TIMEOUT = 4.5

# One stand-in for every component, by the name it runs under: etcd answers /health, Consul
# /v1/status/leader, kube-apiserver /readyz over TLS (with a certificate it makes, as the real
# one does) after 1.5 s, about what a real apiserver takes: longer than the 1 s that the old
# start code granted once its deadline had passed.
FAKE_COMPONENT = f"""#!{sys.executable}
import http.server, os, ssl, subprocess, sys, time

role = os.path.basename(sys.argv[0])
flags = dict(arg.lstrip("-").split("=", 1) for arg in sys.argv[1:] if "=" in arg)
answers = {{
    "consul": ("/v1/status/leader", b'"127.0.0.1:8300"'),
    "etcd": ("/health", b'{{"health": "true"}}'),
    "kube-apiserver": ("/readyz", b"ok"),
}}
path, body = answers[role]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == path else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if role == "consul":
    server = http.server.HTTPServer(("127.0.0.1", int(flags["http-port"])), Handler)
elif role == "etcd":
    port = int(flags["listen-client-urls"].rsplit(":", 1)[1])
    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
else:
    certs = flags["cert-dir"]
    os.makedirs(certs, exist_ok=True)
    crt, key = f"{{certs}}/apiserver.crt", f"{{certs}}/apiserver.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", crt], check=True, capture_output=True,
    )
    time.sleep(1.5)
    server = http.server.HTTPServer(("127.0.0.1", int(flags["secure-port"])), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(crt, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""

STAND_IN_GO = """#!/usr/bin/env bash
out=""
while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift 2 ;; *) shift ;; esac; done
echo "go: downloading example.invalid/module v1.0.0"
sleep "$STAND_IN_BUILD_SECONDS"
if [ -n "${STAND_IN_BUILD_ERROR:-}" ]; then echo "$STAND_IN_BUILD_ERROR" >&2; exit 1; fi
cp "$STAND_IN_COMPONENT" "$out"
"""


@pytest.fixture
def stand_in_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """build.sh with an empty temporary cache and a stand-in ``go``; returns the cache."""
    tools = tmp_path / "tools"
    tools.mkdir()
    go = tools / "go"
    go.write_text(STAND_IN_GO)
    go.chmod(0o755)
    fake = tmp_path / "fake-component"
    fake.write_text(FAKE_COMPONENT)
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(tools), prepend=os.pathsep)
    monkeypatch.setenv("CONSUL_SD_CACHE", str(cache))
    monkeypatch.setenv("CONSUL_SD_BUILD_HEARTBEAT", "1")
    monkeypatch.setenv("STAND_IN_BUILD_SECONDS", str(SLOW_BUILD_SECONDS))
    monkeypatch.setenv("STAND_IN_COMPONENT", str(fake))
    monkeypatch.setattr(components, "_binaries", {})  # forget paths of real builds
    return cache


def test_a_start_whose_build_outlasts_the_start_timeout_still_starts(
    stand_in_build: Path, tmp_path: Path
) -> None:
    with ConsulAgent() as agent:
        agent.start(tmp_path / "agent", timeout=START_TIMEOUT)
        assert agent.running()
        assert agent.request("GET", "/v1/status/leader").json() == "127.0.0.1:8300"


def test_a_control_plane_whose_builds_outlast_the_start_timeout_still_starts(
    stand_in_build: Path, tmp_path: Path
) -> None:
    with ControlPlane() as plane:
        plane.start(tmp_path / "plane", timeout=CONTROL_PLANE_TIMEOUT)
        assert plane.healthy()


def test_a_cold_build_shows_its_start_a_heartbeat_and_its_end(
    stand_in_build: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    components.binary("consul")
    progress = capfd.readouterr().err.splitlines()
    assert progress[0].startswith(
        "building consul v1.16.3 from Go modules: first time only, about 5 minutes (log: "
    ), progress
    assert "  ... still building consul: 0m01s elapsed" in progress
    assert progress[-1].startswith("built consul v1.16.3 in 0m0"), progress
    assert not [line for line in progress if line.startswith("go: ")], "Go's output goes to the log"


def test_a_failed_build_raises_with_the_log_tail_and_the_command_to_rerun(
    stand_in_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAND_IN_BUILD_SECONDS", "0")
    monkeypatch.setenv("STAND_IN_BUILD_ERROR", "main.go:1: undefined: everything")
    with pytest.raises(ComponentError) as failure:
        components.binary("consul")
    message = str(failure.value)
    assert "main.go:1: undefined: everything" in message
    assert "go: downloading example.invalid/module v1.0.0" in message
    assert "rerun: hack/bins/build.sh consul" in message
    assert not list((stand_in_build / "bin").glob("consul-*/consul")), "no binary is cached"
