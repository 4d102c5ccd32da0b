"""Real components for the end-to-end tests and ``make cluster``.

Role: start, wait for and stop the real programs consul-sd-operator works with, each built from
its Go module by ``hack/bins/build.sh`` (cached outside the repo):

- ``ControlPlane``: etcd + kube-apiserver (token auth, RBAC, self-signed serving cert);
- ``ConsulAgent``: a Consul dev agent, optionally with ACLs (default deny) and a connection cap;
- ``Prometheus``: Prometheus v3 built with consul_sd, file_sd and http_sd only;
- ``PrometheusOperator``: prometheus-operator running out of cluster against a ``ControlPlane``,
  plus ``install_crds`` for its CRDs (``apply_crds`` for any CRD);
- two checkers run by path (``binary``): promtool (Prometheus's, for the chart's alert rules) and
  dashboard-lint (the chart's Grafana dashboard against grafana-foundation-sdk's schema types).

Every ``start`` builds (or finds) its binaries first, with build.sh's progress on stderr, and
only then starts its ``timeout``: the timeout counts start-up, never a cold build of minutes
(``build`` builds a whole set up front, e.g. before ``make demo`` starts anything). Every
process binds 127.0.0.1 only, runs in its own process group, and writes its stdout and
stderr to ``<name>.log`` in its work directory; a failed start raises ``ComponentError`` whose
message ends with the last 40 lines of that log. ``python -m tests.support.components`` runs the
same components in the background for manual use (state under ``.local/``).

Limits:

- The "cluster" is an apiserver and etcd only: no controller-manager, scheduler or kubelet.
  Nothing garbage-collects (owner references, namespace deletion never finish), no pod runs, and
  ServiceAccount tokens are not minted (the ServiceAccount admission plugin is off): give other
  identities a static token through ``extra_tokens``, or use the TokenRequest API.
- Test-grade security only: static bearer tokens in a plain file, a self-signed serving
  certificate, etcd over plain HTTP on loopback, etcd without fsync.
- Consul is a single in-memory dev agent (a server); Prometheus has no UI assets (API only).
- Ports come from ``free_port()``, which can race with other programs on the machine; a start
  that loses the race fails with the component's log in the message.
- Synchronous (subprocess + urllib): meant for fixtures and helper threads, not for code that
  must not block an event loop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "bins" / "build.sh"
LOCAL_DIR = REPO_ROOT / ".local"
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "consul",
    "prometheus",
    "promtool",
    "prometheus-operator",
    "dashboard-lint",
)
LOG_TAIL_LINES = 40
_STATE_FILE = "state.json"

# (token, user name, uid, groups): one line of kube-apiserver's --token-auth-file.
TokenSpec = tuple[str, str, str, Sequence[str]]


class ComponentError(RuntimeError):
    """A component could not be built, started or queried."""


# ---------------------------------------------------------------------------------------------
# binaries, ports, HTTP


_binaries: dict[str, Path] = {}


def binary(name: str) -> Path:
    """Path of component ``name``, built by ``hack/bins/build.sh NAME`` first if missing.

    A cold build takes minutes: build.sh's progress lines (start, a heartbeat every 30 s, done)
    are passed on to stderr as they come, so a caller is never silent for minutes. Concurrent
    callers share one build (build.sh locks per component). Call this (or ``build``) before a
    start deadline begins: every ``start`` here does.
    """
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    cached = _binaries.get(name)
    if cached is not None and cached.is_file():
        return cached
    with subprocess.Popen(
        [str(BUILD_SCRIPT), name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        if stdout is None or stderr is None:  # pragma: no cover - both are pipes
            raise ComponentError(f"{BUILD_SCRIPT}: no pipes")
        progress = _relay(stderr)
        lines = stdout.read().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(progress[-LOG_TAIL_LINES:])
        raise ComponentError(
            f"{BUILD_SCRIPT} {name} failed (exit {proc.returncode}); "
            f"rerun: hack/bins/build.sh {name}\n{tail}"
        )
    path = Path(lines[-1])
    if not path.is_file():
        raise ComponentError(f"{BUILD_SCRIPT} {name} printed {path}, which is not a file")
    _binaries[name] = path
    return path


def _relay(stream: Iterable[str]) -> list[str]:
    """Copy build.sh's progress lines to stderr as they arrive; return them all."""
    seen = []
    for line in stream:
        seen.append(line.rstrip("\n"))
        sys.stderr.write(line)
        sys.stderr.flush()
    return seen


def build(names: Iterable[str]) -> dict[str, Path]:
    """Build (or find) every component in ``names``, in order, before anything starts."""
    return {name: binary(name) for name in names}


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (never negative: a spent deadline still checks once)."""
    return max(deadline - time.monotonic(), 0.0)


_handed_out_ports: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (not handed out twice per process)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise ComponentError("no free loopback port found")


@dataclass(frozen=True)
class HttpResponse:
    """A complete HTTP answer, whatever its status. Header names are lower-cased."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    cafile: Path | None = None,
    timeout: float = 10.0,
) -> HttpResponse:
    """One HTTP request with urllib; answers of every status are returned, never raised.

    A dict or list body is sent as JSON. ``token`` becomes ``Authorization: Bearer``. Connection
    failures raise ``OSError`` (``urllib.error.URLError``).
    """
    all_headers = dict(headers or {})
    data: bytes | None
    if body is None:
        data = None
    elif isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return HttpResponse(
                status=response.status,
                headers={k.lower(): v for k, v in response.headers.items()},
                body=response.read(),
            )
    except urllib.error.HTTPError as error:
        with error:
            return HttpResponse(
                status=error.code,
                headers={k.lower(): v for k, v in error.headers.items()},
                body=error.read(),
            )


# ---------------------------------------------------------------------------------------------
# processes


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class _Process:
    """One program in its own process group, logging stdout and stderr to a file.

    Either started here (``start``) or adopted from a pid recorded by an earlier run (``adopt``,
    for the CLI): an adopted pid counts only while its command line still starts with the
    recorded executable, so a recycled pid is never signalled.
    """

    def __init__(self, name: str, *, pid: int, exe: str, log_path: Path) -> None:
        self.name = name
        self.pid = pid
        self.exe = exe
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> _Process:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        process = cls(name, pid=popen.pid, exe=argv[0], log_path=log_path)
        process._popen = popen
        return process

    @classmethod
    def adopt(cls, record: Mapping[str, Any]) -> _Process:
        return cls(
            str(record["name"]),
            pid=int(record["pid"]),
            exe=str(record["exe"]),
            log_path=Path(record["log"]),
        )

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "exe": self.exe, "log": str(self.log_path)}

    def exit_code(self) -> int | None:
        """None while running; the exit code (or -1 for an adopted process) once it is gone."""
        if self._popen is not None:
            return self._popen.poll()
        cmdline = _cmdline(self.pid)
        if cmdline[:1] == [self.exe] and not _is_zombie(self.pid):
            return None
        return -1

    def alive(self) -> bool:
        return self.exit_code() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``; idempotent."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        if not self._wait_gone(timeout):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self._wait_gone(10.0)

    def _wait_gone(self, timeout: float) -> bool:
        if self._popen is not None:
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log at {self.log_path}: {error})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"


def _wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    watch: Sequence[_Process],
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it returns True; fail early if a watched process exits.

    Exceptions of ``check`` (``OSError``, ``ValueError``, ``KeyError``) count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error = "none"
    while True:
        for process in watch:
            code = process.exit_code()
            if code is not None:
                raise ComponentError(
                    f"{process.name} exited (code {code}) while waiting for {what}\n"
                    + process.log_tail()
                )
        try:
            if check():
                return
        except (OSError, ValueError, KeyError) as error:
            last_error = f"{type(error).__name__}: {error}"
        if time.monotonic() >= deadline:
            logs = "\n".join(process.log_tail() for process in watch)
            raise ComponentError(
                f"timed out after {timeout:g}s waiting for {what} (last error: {last_error})\n"
                + logs
            )
        time.sleep(interval)


class _Component:
    """Shared bookkeeping: work directory, processes, a state file for the CLI."""

    def __init__(self) -> None:
        self._workdir: Path | None = None
        self._processes: list[_Process] = []

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ComponentError(f"{type(self).__name__} is not started")
        return self._workdir

    def _begin(self, workdir: Path) -> None:
        if self._processes and any(p.alive() for p in self._processes):
            raise ComponentError(f"{type(self).__name__} is already running in {self._workdir}")
        self._processes = []
        self._workdir = workdir.resolve()
        self._workdir.mkdir(parents=True, exist_ok=True)

    def _spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
    ) -> _Process:
        process = _Process.start(
            name, argv, log_path=self.workdir / f"{name}.log", env=env, cwd=self.workdir
        )
        self._processes.append(process)
        self._save_state()  # so that a CLI run killed half-way still leaves the pids behind
        return process

    def _started(self, fn: Callable[[], None]) -> None:
        """Run the start sequence ``fn``; on any failure stop what was started and re-raise."""
        try:
            fn()
        except BaseException:
            self.stop()
            raise
        self._save_state()

    def _state(self) -> dict[str, Any]:
        return {}

    def _save_state(self) -> None:
        state = {"processes": [p.record() for p in self._processes], **self._state()}
        (self.workdir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _adopt(self, workdir: Path) -> dict[str, Any] | None:
        """Load a state file written by ``start``; None when there is none."""
        path = workdir / _STATE_FILE
        if not path.is_file():
            return None
        state: dict[str, Any] = json.loads(path.read_text())
        self._workdir = workdir.resolve()
        self._processes = [_Process.adopt(r) for r in state.get("processes", [])]
        return state

    def running(self) -> bool:
        """True while every process of this component is alive."""
        return bool(self._processes) and all(p.alive() for p in self._processes)

    @property
    def log_files(self) -> list[Path]:
        return [p.log_path for p in self._processes]

    def stop(self) -> None:
        """Stop every process (the last started first); idempotent."""
        for process in reversed(self._processes):
            process.stop()
        if self._workdir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._workdir / _STATE_FILE).unlink()


# ---------------------------------------------------------------------------------------------
# kube-apiserver + etcd


class ControlPlane(_Component):
    """etcd + kube-apiserver on loopback; the admin token is in group system:masters."""

    ADMIN_USER = "consul-sd-e2e-admin"

    def __init__(self) -> None:
        super().__init__()
        self.token = secrets.token_hex(24)
        self.port = 0
        self.etcd_url = ""

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The serving certificate the apiserver generated (it includes its own CA)."""
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def start(
        self,
        workdir: Path,
        *,
        extra_tokens: Iterable[TokenSpec] = (),
        timeout: float = 120.0,
    ) -> None:
        """Start etcd, then kube-apiserver; return once /readyz answers ok.

        ``extra_tokens`` adds identities, e.g. ``("tok", "system:serviceaccount:ns:sa", "uid-1",
        ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"])``.
        """
        # Built first: ``timeout`` counts start-up only, never a cold build of minutes.
        binaries = build(("etcd", "kube-apiserver"))
        self._begin(workdir)
        tokens = [(self.token, self.ADMIN_USER, "uid-admin", ["system:masters"]), *extra_tokens]
        self._started(lambda: self._start(tokens, binaries=binaries, timeout=timeout))

    def _start(
        self, tokens: Sequence[TokenSpec], *, binaries: Mapping[str, Path], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        etcd_binary, apiserver_binary = binaries["etcd"], binaries["kube-apiserver"]
        workdir = self.workdir
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(etcd_binary),
                "--name=e2e",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        _wait_until(
            lambda: http_request("GET", f"{self.etcd_url}/health").status == 200,
            what=f"etcd health at {self.etcd_url}/health",
            timeout=_remaining(deadline),
            watch=[etcd],
        )

        token_file = workdir / "tokens.csv"
        token_file.write_text(
            "".join(
                f'{token},{user},{uid},"{",".join(groups)}"\n'
                for token, user, uid, groups in tokens
            )
        )
        token_file.chmod(0o600)
        sa_key = workdir / "service-account.key"
        if not sa_key.exists():
            subprocess.run(
                ["openssl", "genrsa", "-out", str(sa_key), "2048"],
                check=True,
                capture_output=True,
            )
        self.port = free_port()
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(apiserver_binary),
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={workdir / 'certs'}",
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--token-auth-file={token_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://127.0.0.1:{self.port}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--profiling=false",
            ],
        )

        def ready() -> bool:
            if not self.ca_file.is_file():
                return False
            answer = http_request(
                "GET", f"{self.server}/readyz", token=self.token, cafile=self.ca_file
            )
            return answer.status == 200

        _wait_until(
            ready,
            what=f"kube-apiserver {self.server}/readyz",
            timeout=_remaining(deadline),
            watch=[etcd, apiserver],
            interval=0.25,
        )
        self.write_kubeconfig(self.kubeconfig)

    def _state(self) -> dict[str, Any]:
        return {"port": self.port, "token": self.token, "etcd_url": self.etcd_url}

    @classmethod
    def attach(cls, workdir: Path) -> ControlPlane | None:
        """The control plane a CLI run left in ``workdir``, if it still answers /readyz."""
        plane = cls()
        state = plane._adopt(workdir)
        if state is None:
            return None
        plane.port, plane.token, plane.etcd_url = state["port"], state["token"], state["etcd_url"]
        return plane

    def healthy(self) -> bool:
        try:
            return self.running() and self.request("GET", "/readyz").status == 200
        except OSError:
            return False

    def restart_apiserver(self, *, downtime: float = 0.0, timeout: float = 120.0) -> None:
        """Stop kube-apiserver (SIGTERM) and start it again: same port, certs, tokens, etcd.

        etcd keeps running, so every object survives; clients see their connections and watches
        break and the port refuse connections for the stop, ``downtime`` seconds and the start.
        Returns once /readyz answers ok again (``timeout`` counts the start only).
        """
        old = next(p for p in self._processes if p.name == "kube-apiserver" and p.alive())
        argv = _cmdline(old.pid)  # read before the stop: the argv of this very process
        if not argv:
            raise ComponentError(f"cannot read kube-apiserver's command line (pid {old.pid})")
        old.stop()
        time.sleep(downtime)
        new = _Process.start(old.name, argv, log_path=old.log_path, cwd=self.workdir)
        self._processes[self._processes.index(old)] = new
        self._save_state()
        _wait_until(
            lambda: self.request("GET", "/readyz").status == 200,
            what=f"restarted kube-apiserver {self.server}/readyz",
            timeout=timeout,
            watch=list(self._processes),
            interval=0.25,
        )

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        namespace: str = "default",
    ) -> Path:
        """Write a kubeconfig for ``token`` (default: the admin token) to ``path``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "consul-sd-e2e",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": "consul-sd-e2e", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "consul-sd-e2e",
                    "context": {
                        "cluster": "consul-sd-e2e",
                        "user": "consul-sd-e2e",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "consul-sd-e2e",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
        token: str | None = None,
        content_type: str | None = None,
        timeout: float = 30.0,
    ) -> HttpResponse:
        """An API request (``path`` like ``/api/v1/namespaces``), as admin unless ``token``."""
        headers = {"Content-Type": content_type} if content_type else None
        return http_request(
            method,
            self.server + path,
            body=body,
            headers=headers,
            token=token or self.token,
            cafile=self.ca_file,
            timeout=timeout,
        )

    def apply(self, path: str, document: Mapping[str, Any], *, field_manager: str) -> None:
        """Server-side apply ``document`` at ``path`` as admin, taking over any conflict."""
        answer = self.request(
            "PATCH",
            f"{path}?fieldManager={field_manager}&force=true",
            body=json.dumps(document),
            content_type="application/apply-patch+yaml",
        )
        if answer.status not in (200, 201):
            raise ComponentError(f"applying {path} failed ({answer.status}): {answer.text}")

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Consul


class ConsulAgent(_Component):
    """A Consul dev agent (in-memory server) with its HTTP API on 127.0.0.1.

    DNS is off; gRPC, server RPC and serf get free loopback ports. With ``acl_master_token``
    ACLs are on with ``default_policy = "deny"`` and that token is the initial management token
    (and the agent's own token).
    """

    def __init__(
        self,
        *,
        acl_master_token: str | None = None,
        http_max_conns_per_client: int | None = None,
        extra_hcl: Sequence[str] = (),
        node_name: str = "consul-sd-e2e",
    ) -> None:
        super().__init__()
        self.acl_master_token = acl_master_token
        self.http_max_conns_per_client = http_max_conns_per_client
        self.extra_hcl = list(extra_hcl)
        self.node_name = node_name
        self.http_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, workdir: Path, *, timeout: float = 60.0) -> None:
        """Start the agent; return once it has a leader (and, with ACLs, the token works).

        The binary is built first; ``timeout`` counts start-up only.
        """
        executable = binary("consul")
        self._begin(workdir)
        self._started(lambda: self._start(executable, timeout=timeout))

    def _start(self, executable: Path, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.http_port = free_port()
        hcl = list(self.extra_hcl)
        if self.acl_master_token is not None:
            token = json.dumps(self.acl_master_token)
            hcl.append(
                'acl { enabled = true default_policy = "deny" '
                f"tokens {{ initial_management = {token} agent = {token} }} }}"
            )
        if self.http_max_conns_per_client is not None:
            hcl.append(f"limits {{ http_max_conns_per_client = {self.http_max_conns_per_client} }}")
        argv = [
            str(executable),
            "agent",
            "-dev",
            f"-node={self.node_name}",
            "-client=127.0.0.1",
            "-bind=127.0.0.1",
            "-advertise=127.0.0.1",
            f"-http-port={self.http_port}",
            "-dns-port=-1",
            f"-grpc-port={free_port()}",
            "-grpc-tls-port=-1",
            f"-server-port={free_port()}",
            f"-serf-lan-port={free_port()}",
            f"-serf-wan-port={free_port()}",
            "-log-level=warn",
        ]
        argv += [f"-hcl={line}" for line in hcl]
        agent = self._spawn("consul", argv)
        _wait_until(
            lambda: http_request("GET", f"{self.url}/v1/status/leader").json() not in ("", None),
            what=f"a Consul leader at {self.url}/v1/status/leader",
            timeout=_remaining(deadline),
            watch=[agent],
        )
        if self.acl_master_token is not None:
            _wait_until(
                lambda: self.request("GET", "/v1/acl/token/self").status == 200,
                what="the Consul initial management token to work",
                timeout=_remaining(deadline),
                watch=[agent],
            )

    def restart(self, *, kill: bool = False, downtime: float = 0.0, timeout: float = 60.0) -> None:
        """Stop the agent and start it again with the same command line: the same ports.

        A dev agent keeps nothing: the new one starts empty and replays the same raft index
        sequence, which is what a Consul restart looks like to a client. ``kill`` sends SIGKILL
        (no graceful leave) instead of SIGTERM. Returns once the new agent has a leader
        (``timeout`` counts the start only). Another program may take one of the ports while the
        agent is down (they come from ``free_port``): the start then fails with the agent's log.
        """
        old = next(p for p in self._processes if p.name == "consul" and p.alive())
        argv = _cmdline(old.pid)  # read before the stop: the argv of this very process
        if not argv:
            raise ComponentError(f"cannot read consul's command line (pid {old.pid})")
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(old.pid, signal.SIGKILL)
        old.stop()  # with kill: waits until the killed process is gone
        time.sleep(downtime)
        new = _Process.start(old.name, argv, log_path=old.log_path, cwd=self.workdir)
        self._processes[self._processes.index(old)] = new
        self._save_state()
        _wait_until(
            lambda: self.request("GET", "/v1/status/leader").json() not in ("", None),
            what=f"a leader on the restarted Consul agent {self.url}",
            timeout=timeout,
            watch=[new],
        )

    def _state(self) -> dict[str, Any]:
        return {"http_port": self.http_port, "acl_master_token": self.acl_master_token}

    @classmethod
    def attach(cls, workdir: Path) -> ConsulAgent | None:
        """The agent a CLI run left in ``workdir`` (check ``running()``)."""
        agent = cls()
        state = agent._adopt(workdir)
        if state is None:
            return None
        agent.http_port, agent.acl_master_token = state["http_port"], state["acl_master_token"]
        return agent

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | str | Mapping[str, Any] | Sequence[Any] | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> HttpResponse:
        """An HTTP API request (``path`` like ``/v1/catalog/services``).

        ``token`` None sends the ACL master token if there is one; "" sends no token.
        """
        use = self.acl_master_token if token is None else token
        headers = {"X-Consul-Token": use} if use else None
        return http_request(method, self.url + path, body=body, headers=headers, timeout=timeout)

    def __enter__(self) -> ConsulAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Prometheus


PrometheusConfig = Mapping[str, Any] | str


class Prometheus(_Component):
    """Prometheus v3 (consul_sd, file_sd, http_sd compiled in) with the lifecycle API on."""

    def __init__(
        self,
        config: PrometheusConfig | None = None,
        *,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.config: PrometheusConfig = (
            config if config is not None else {"global": {"scrape_interval": "15s"}}
        )
        self.extra_args = list(extra_args)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.workdir / "prometheus.yml"

    def start(self, workdir: Path, *, timeout: float = 60.0) -> None:
        """Write the config to ``workdir``, start Prometheus; return once /-/ready answers.

        The binary is built first; ``timeout`` counts start-up only.
        """
        executable = binary("prometheus")
        self._begin(workdir)
        self._started(lambda: self._start(executable, timeout=timeout))

    def _start(self, executable: Path, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.write_config(self.config)
        self.port = free_port()
        process = self._spawn(
            "prometheus",
            [
                str(executable),
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                *self.extra_args,
            ],
        )
        _wait_until(
            lambda: http_request("GET", f"{self.url}/-/ready").status == 200,
            what=f"Prometheus {self.url}/-/ready",
            timeout=_remaining(deadline),
            watch=[process],
        )

    def write_config(self, config: PrometheusConfig) -> None:
        """Replace the config file atomically (call ``reload()`` to apply it while running)."""
        self.config = config
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_file)

    def reload(self) -> None:
        """POST /-/reload; raises ComponentError with Prometheus' message if it is rejected."""
        answer = http_request("POST", f"{self.url}/-/reload", timeout=30.0)
        if answer.status != 200:
            raise ComponentError(f"Prometheus reload failed ({answer.status}): {answer.text}")

    def targets(self, state: str = "active") -> list[dict[str, Any]]:
        """/api/v1/targets: ``state`` is "active", "dropped" or "any" (active then dropped)."""
        if state not in ("active", "dropped", "any"):
            raise ValueError(f"state must be active, dropped or any, not {state!r}")
        query = urllib.parse.urlencode({"state": state})
        answer = http_request("GET", f"{self.url}/api/v1/targets?{query}")
        if answer.status != 200:
            raise ComponentError(f"/api/v1/targets answered {answer.status}: {answer.text}")
        data = answer.json()["data"]
        result: list[dict[str, Any]] = []
        if state in ("active", "any"):
            result += data.get("activeTargets") or []
        if state in ("dropped", "any"):
            result += data.get("droppedTargets") or []
        return result

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# prometheus-operator


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's "=" (value) and timestamp tags, which Go's YAML never emits:
    prometheus-operator's CRDs list ``=`` as an enum value, which PyYAML would refuse."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:value", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def crd_documents() -> list[dict[str, Any]]:
    """The CRDs embedded in the prometheus-operator binary (its ``crds`` subcommand)."""
    out = subprocess.run(
        [str(binary("prometheus-operator")), "crds"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ComponentError(f"prometheus-operator crds failed ({out.returncode}): {out.stderr}")
    return [doc for doc in yaml.load_all(out.stdout, Loader=_Yaml12Loader) if doc]


def apply_crds(
    control_plane: ControlPlane,
    documents: Iterable[Mapping[str, Any]],
    *,
    field_manager: str = "consul-sd-e2e",
    timeout: float = 60.0,
) -> list[str]:
    """Server-side apply CRD ``documents``; return their names once all are Established."""
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for document in documents:
        name = document["metadata"]["name"]
        names.append(name)
        control_plane.apply(f"{base}/{name}", document, field_manager=field_manager)

    def established(name: str) -> bool:
        answer = control_plane.request("GET", f"{base}/{name}")
        conditions = (answer.json().get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for name in sorted(names):
        _wait_until(
            functools.partial(established, name),
            what=f"CRD {name} to be Established",
            timeout=timeout,
            watch=control_plane._processes,
        )
    return sorted(names)


def install_crds(
    control_plane: ControlPlane,
    *,
    names: Iterable[str] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Apply prometheus-operator's CRDs; return their names once all are Established.

    ``names`` (e.g. ``["scrapeconfigs.monitoring.coreos.com"]``) limits the set; default all.
    """
    wanted = set(names) if names is not None else None
    documents = [d for d in crd_documents() if wanted is None or d["metadata"]["name"] in wanted]
    found = {d["metadata"]["name"] for d in documents}
    if wanted is not None and wanted - found:
        raise ComponentError(f"prometheus-operator ships no CRD named {sorted(wanted - found)}")
    return apply_crds(control_plane, documents, timeout=timeout)


class PrometheusOperator(_Component):
    """prometheus-operator out of cluster (KUBECONFIG = the control plane's admin kubeconfig).

    Install the CRDs first (``install_crds``): controllers whose CRD is missing stay off. With no
    kubelet, no Prometheus pod ever runs, but the config Secret ``prometheus-<name>`` is written.
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        *,
        namespaces: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.control_plane = control_plane
        self.namespaces = list(namespaces)
        self.extra_args = list(extra_args)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workdir: Path, *, timeout: float = 120.0) -> None:
        """Start the operator; return once its web server answers /healthz.

        The binary is built first; ``timeout`` counts start-up only.
        """
        executable = binary("prometheus-operator")
        self._begin(workdir)
        self._started(lambda: self._start(executable, timeout=timeout))

    def _start(self, executable: Path, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.port = free_port()
        argv = [
            str(executable),
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log-level=info",
        ]
        if self.namespaces:
            argv.append(f"--namespaces={','.join(self.namespaces)}")
        argv += self.extra_args
        env = {**os.environ, "KUBECONFIG": str(self.control_plane.kubeconfig)}
        process = self._spawn("prometheus-operator", argv, env=env)
        _wait_until(
            lambda: http_request("GET", f"{self.url}/healthz").status == 200,
            what=f"prometheus-operator {self.url}/healthz",
            timeout=_remaining(deadline),
            watch=[process],
            interval=0.25,
        )

    def _state(self) -> dict[str, Any]:
        return {"port": self.port}

    @classmethod
    def attach(cls, workdir: Path, control_plane: ControlPlane) -> PrometheusOperator | None:
        operator = cls(control_plane)
        state = operator._adopt(workdir)
        if state is None:
            return None
        operator.port = state["port"]
        return operator

    def __enter__(self) -> PrometheusOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# CLI: python -m tests.support.components cluster-up | cluster-down | consul-up | ...


def _cluster_up(_: argparse.Namespace) -> int:
    workdir = LOCAL_DIR / "cluster"
    plane = ControlPlane.attach(workdir)
    if plane is not None and plane.healthy():
        print(f"control plane already running at {plane.server}")
    else:
        if plane is not None:
            plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        build(("etcd", "kube-apiserver"))
        print("starting etcd + kube-apiserver", flush=True)
        plane = ControlPlane()
        plane.start(workdir)
    kubeconfig = plane.write_kubeconfig(LOCAL_DIR / "kubeconfig")
    print(
        f"kube-apiserver {plane.server} (logs in {workdir})\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  curl --cacert {plane.ca_file} -H 'Authorization: Bearer {plane.token}' "
        f"{plane.server}/version\n"
        "stop it with: python -m tests.support.components cluster-down"
    )
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    _prometheus_operator_down(args)
    plane = ControlPlane.attach(LOCAL_DIR / "cluster")
    if plane is not None:
        plane.stop()
    with contextlib.suppress(FileNotFoundError):
        (LOCAL_DIR / "kubeconfig").unlink()
    print("control plane stopped")
    return 0


def _consul_up(args: argparse.Namespace) -> int:
    workdir = LOCAL_DIR / "consul"
    agent = ConsulAgent.attach(workdir)
    if agent is not None and agent.running():
        print(f"consul agent already running at {agent.address}")
    else:
        if agent is not None:
            agent.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        agent = ConsulAgent(
            acl_master_token=args.acl_master_token,
            http_max_conns_per_client=args.http_max_conns_per_client,
        )
        agent.start(workdir)
    (LOCAL_DIR / "consul-address").write_text(agent.address + "\n")
    print(
        f"consul dev agent {agent.url} (address also in {LOCAL_DIR / 'consul-address'}, "
        f"logs in {workdir})\n"
        f"  export CONSUL_HTTP_ADDR={agent.address}"
        + (f" CONSUL_HTTP_TOKEN={agent.acl_master_token}" if agent.acl_master_token else "")
        + "\nstop it with: python -m tests.support.components consul-down"
    )
    return 0


def _build(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.names) - set(COMPONENTS))
    if unknown:
        print(f"unknown components {unknown}; known: {', '.join(COMPONENTS)}", file=sys.stderr)
        return 2
    for name, path in build(args.names or COMPONENTS).items():
        print(f"{name}: {path}")
    return 0


def _consul_down(_: argparse.Namespace) -> int:
    agent = ConsulAgent.attach(LOCAL_DIR / "consul")
    if agent is not None:
        agent.stop()
    with contextlib.suppress(FileNotFoundError):
        (LOCAL_DIR / "consul-address").unlink()
    print("consul agent stopped")
    return 0


def _prometheus_operator_up(_: argparse.Namespace) -> int:
    plane = ControlPlane.attach(LOCAL_DIR / "cluster")
    if plane is None or not plane.healthy():
        print("no control plane running: run `cluster-up` first", file=sys.stderr)
        return 1
    workdir = LOCAL_DIR / "prometheus-operator"
    operator = PrometheusOperator.attach(workdir, plane)
    if operator is not None and operator.running():
        print(f"prometheus-operator already running at {operator.url}")
        return 0
    if operator is not None:
        operator.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"installed CRDs: {', '.join(install_crds(plane))}")
    operator = PrometheusOperator(plane)
    operator.start(workdir)
    print(
        f"prometheus-operator {operator.url} (logs in {workdir})\n"
        "stop it with: python -m tests.support.components prometheus-operator-down"
    )
    return 0


def _prometheus_operator_down(_: argparse.Namespace) -> int:
    plane = ControlPlane.attach(LOCAL_DIR / "cluster") or ControlPlane()
    operator = PrometheusOperator.attach(LOCAL_DIR / "prometheus-operator", plane)
    if operator is not None:
        operator.stop()
        print("prometheus-operator stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.components",
        description=f"Run the real components in the background; state under {LOCAL_DIR}.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_command = commands.add_parser(
        "build", help="build (or find) components before starting any, with progress"
    )
    build_command.add_argument("names", nargs="*", metavar="NAME", help=", ".join(COMPONENTS))
    commands.add_parser("cluster-up", help="etcd + kube-apiserver; writes .local/kubeconfig")
    commands.add_parser("cluster-down", help="stop the control plane (and prometheus-operator)")
    consul = commands.add_parser(
        "consul-up", help="a Consul dev agent; writes .local/consul-address"
    )
    consul.add_argument("--acl-master-token", default=None, help="enable ACLs (default deny)")
    consul.add_argument("--http-max-conns-per-client", type=int, default=None)
    commands.add_parser("consul-down", help="stop the Consul agent")
    commands.add_parser("prometheus-operator-up", help="install CRDs, start prometheus-operator")
    commands.add_parser("prometheus-operator-down", help="stop prometheus-operator")
    args = parser.parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "build": _build,
        "cluster-up": _cluster_up,
        "cluster-down": _cluster_down,
        "consul-up": _consul_up,
        "consul-down": _consul_down,
        "prometheus-operator-up": _prometheus_operator_up,
        "prometheus-operator-down": _prometheus_operator_down,
    }
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    try:
        return handlers[args.command](args)
    except ComponentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "COMPONENTS",
    "ComponentError",
    "ConsulAgent",
    "ControlPlane",
    "HttpResponse",
    "Prometheus",
    "PrometheusOperator",
    "TokenSpec",
    "apply_crds",
    "binary",
    "build",
    "crd_documents",
    "free_port",
    "http_request",
    "install_crds",
]
