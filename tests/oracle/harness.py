"""What the oracle tests share: Prometheus jobs on both sides, our processes, label comparison.

The oracle is Prometheus itself: one job uses its own ``consul_sd_configs`` (the reference), the
others use ``file_sd_configs`` on files written by ``consul-sd discover`` (ours), or
``http_sd_configs`` on what ``consul-sd discover --listen`` serves. Targets are compared by their
``discoveredLabels`` from /api/v1/targets, keyed by (node, service ID, address), after dropping
what is job-specific (``job``, ``__meta_filepath``, ``__meta_url``, the ``__scheme__`` style
settings) and empty values (Prometheus treats an empty label as an absent one).

Every job relabels ``__address__`` to a closed loopback port and copies the node and service ID
into target labels. The first keeps any scrape (1h interval) on 127.0.0.1 whatever address Consul
holds; the second keeps targets that share an address apart, since Prometheus silently merges
active targets whose final label sets are equal. ``discoveredLabels`` are taken before
relabeling, so neither changes what is compared. With no rule dropping anything, consul_sd and
file_sd targets all show up under ``activeTargets`` (``droppedTargets`` stays empty). Prometheus's
discovery manager hands updates to the scrape manager at most every 5s, so each agreement takes
that long at least.

Also here: ``Discoverer``/``start_once``/``finish`` (our CLI as processes), ``ConfigMapVolume``
and ``ConfigMapMirror`` (the operator's ConfigMap output laid out as the kubelet mounts it),
``SimulatorThread`` (the simulator beside the real agent) and the ACL helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from consul_sd.api.spec import ConfigMapOutput, Mode
from consul_sd.consul.client import ConsulClient
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.discovery.query import DiscoveryQuery
from consul_sd.discovery.run import run_discovery
from consul_sd.discovery.snapshots import Snapshot, is_publishable
from consul_sd.outputs.filesd import FileSDWriter
from consul_sd.outputs.shards import config_map_shards
from consul_simulator import ConsulSimulator
from tests.support.components import ConsulAgent, HttpResponse, Prometheus, http_request

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "consul_sd.cli"]
CLI_ENV = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
MODES = ("polling", "blocking", "auto")


def discover_argv(server: str, *args: str, mode: str) -> list[str]:
    """``consul-sd discover`` against ``server`` in ``mode``, at the oracle's short intervals."""
    return [
        *CLI,
        "discover",
        "--server",
        server,
        "--mode",
        mode,
        "--refresh-interval",
        "1s",
        "--watch-timeout",
        "10s",
        *args,
    ]


# Any scrape that happens (1h interval, random offset) goes to the discard port on loopback.
SCRAPE_ADDRESS = "127.0.0.1:9"
_T = TypeVar("_T")

Labels = dict[str, str]
TargetKey = tuple[str, str, str]
"""(``__meta_consul_node``, ``__meta_consul_service_id``, ``__address__``)."""
TargetSet = dict[TargetKey, Labels]


# ------------------------------------------------------------------------------------- labels


def normalize(labels: Mapping[str, str]) -> Labels:
    """The labels discovery produced, without job settings and without empty values."""
    kept: Labels = {}
    for name, value in labels.items():
        if value == "" or name in ("job", "__meta_filepath", "__meta_url"):
            continue
        is_setting = name.startswith("__") and name.endswith("__")
        if is_setting and name != "__address__" and not name.startswith("__meta_"):
            continue  # __scheme__, __metrics_path__, __scrape_interval__, ...
        kept[name] = value
    return kept


def target_key(labels: Mapping[str, str]) -> TargetKey:
    return (
        labels.get("__meta_consul_node", ""),
        labels.get("__meta_consul_service_id", ""),
        labels.get("__address__", ""),
    )


def target_set(label_sets: Sequence[Mapping[str, str]], *, where: str) -> TargetSet:
    """Targets keyed by ``target_key``; two targets with one key are a failure of their own."""
    targets: TargetSet = {}
    for raw in label_sets:
        labels = normalize(raw)
        key = target_key(labels)
        if key in targets:
            pytest.fail(f"{where}: two targets share node/service id/address {key}")
        targets[key] = labels
    return targets


def file_sd_targets(path: Path) -> TargetSet:
    """The targets of a file_sd JSON file, as Prometheus reads it (group labels + address)."""
    groups = json.loads(path.read_text())
    label_sets = []
    for group in groups:
        for address in group["targets"]:
            label_sets.append({**group.get("labels", {}), "__address__": address})
    return target_set(label_sets, where=str(path))


def prometheus_jobs(prometheus: Prometheus) -> dict[str, TargetSet]:
    """Every active target of ``prometheus``, grouped by scrape pool (job)."""
    by_job: dict[str, list[Mapping[str, str]]] = {}
    for target in prometheus.targets("active"):
        by_job.setdefault(target["scrapePool"], []).append(target["discoveredLabels"])
    return {job: target_set(sets, where=f"job {job}") for job, sets in by_job.items()}


def describe_difference(
    expected: TargetSet, actual: TargetSet, *, names: tuple[str, str] = ("reference", "ours")
) -> str:
    """A readable account of how two target sets differ (empty when they are equal)."""
    lines: list[str] = []
    only_expected = sorted(set(expected) - set(actual))
    only_actual = sorted(set(actual) - set(expected))
    if only_expected:
        lines.append(f"only in {names[0]} ({len(only_expected)}): {only_expected[:10]}")
    if only_actual:
        lines.append(f"only in {names[1]} ({len(only_actual)}): {only_actual[:10]}")
    for key in sorted(set(expected) & set(actual)):
        left, right = expected[key], actual[key]
        if left == right:
            continue
        changed = {
            name: (left.get(name), right.get(name))
            for name in sorted(set(left) | set(right))
            if left.get(name) != right.get(name)
        }
        lines.append(f"{key}: label ({names[0]}, {names[1]}): {changed}")
        if len(lines) > 20:
            lines.append("...")
            break
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Selector:
    """One selector, given the same to Prometheus's consul_sd and to ``consul-sd discover``."""

    services: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    node_meta: Mapping[str, str] = field(default_factory=dict)
    filter: str = ""
    health_filter: str = ""
    tag_separator: str = ""

    def consul_sd_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.services:
            fields["services"] = list(self.services)
        if self.tags:
            fields["tags"] = list(self.tags)
        if self.node_meta:
            fields["node_meta"] = dict(self.node_meta)
        if self.filter:
            fields["filter"] = self.filter
        if self.health_filter:
            fields["health_filter"] = self.health_filter
        if self.tag_separator:
            fields["tag_separator"] = self.tag_separator
        return fields

    def cli_args(self) -> list[str]:
        args: list[str] = []
        if self.services:
            args += ["--services", ",".join(self.services)]
        if self.tags:
            args += ["--tags", ",".join(self.tags)]
        if self.node_meta:
            args += ["--node-meta", ",".join(f"{k}={v}" for k, v in self.node_meta.items())]
        if self.filter:
            args += ["--filter", self.filter]
        if self.health_filter:
            args += ["--health-filter", self.health_filter]
        if self.tag_separator:
            args += ["--tag-separator", self.tag_separator]
        return args


# ------------------------------------------------------------------------------- Prometheus


def _relabel() -> list[dict[str, Any]]:
    return [
        {"source_labels": ["__meta_consul_node"], "target_label": "consul_node"},
        {"source_labels": ["__meta_consul_service_id"], "target_label": "consul_service_id"},
        {"target_label": "__address__", "replacement": SCRAPE_ADDRESS},
    ]


def consul_job(
    name: str,
    server: str,
    selector: Selector | None = None,
    *,
    token: str | None = None,
    datacenter: str | None = None,
) -> dict[str, Any]:
    """A job with Prometheus's own consul_sd (refresh_interval 1s)."""
    sd: dict[str, Any] = {"server": server, "refresh_interval": "1s"}
    sd.update((selector or Selector()).consul_sd_fields())
    if token is not None:
        sd["token"] = token
    if datacenter is not None:
        sd["datacenter"] = datacenter
    return {"job_name": name, "consul_sd_configs": [sd], "relabel_configs": _relabel()}


def file_job(name: str, files: Sequence[Path | str]) -> dict[str, Any]:
    """A job reading file_sd files (re-read on fsnotify events, and every second)."""
    return {
        "job_name": name,
        "file_sd_configs": [{"files": [str(f) for f in files], "refresh_interval": "1s"}],
        "relabel_configs": _relabel(),
    }


def http_job(name: str, url: str) -> dict[str, Any]:
    """A job fetching HTTP SD from ``url`` (``consul-sd discover --listen``) every second."""
    return {
        "job_name": name,
        "http_sd_configs": [{"url": url, "refresh_interval": "1s"}],
        "relabel_configs": _relabel(),
    }


def prometheus_config(jobs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1h", "scrape_timeout": "10s"},
        "scrape_configs": [dict(job) for job in jobs],
    }


# ------------------------------------------------------------------------------------ waiting


def wait_until(
    check: Callable[[], _T | None],
    *,
    what: str,
    timeout: float,
    explain: Callable[[], str] | None = None,
    interval: float = 0.25,
) -> _T:
    """Poll ``check`` until it returns something truthy; fail with ``explain()`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = explain() if explain is not None else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{detail}")
        time.sleep(interval)


def wait_for_agreement(
    prometheus: Prometheus,
    *,
    reference: str,
    jobs: Sequence[str],
    expect: Callable[[TargetSet], bool],
    what: str,
    timeout: float = 30.0,
) -> dict[str, TargetSet]:
    """Wait until job ``reference`` satisfies ``expect`` and every job in ``jobs`` equals it."""
    last: dict[str, TargetSet] = {}

    def agreed() -> dict[str, TargetSet] | None:
        nonlocal last
        last = prometheus_jobs(prometheus)
        wanted = last.get(reference, {})
        if not expect(wanted):
            return None
        if all(last.get(job, {}) == wanted for job in jobs):
            return last
        return None

    def explain() -> str:
        wanted = last.get(reference, {})
        parts = [f"{reference}: {len(wanted)} targets, expectation met: {expect(wanted)}"]
        for job in jobs:
            got = last.get(job, {})
            diff = describe_difference(wanted, got, names=(reference, job))
            parts.append(f"--- {job} ({len(got)} targets)\n{diff or 'equal'}")
        return "\n".join(parts)

    return wait_until(agreed, what=what, timeout=timeout, explain=explain)


def count_is(number: int) -> Callable[[TargetSet], bool]:
    return lambda targets: len(targets) == number


# ------------------------------------------------------------------------------------- Consul


def put(agent: ConsulAgent, path: str, body: Any = None, *, token: str | None = None) -> Any:
    """A Consul write that must succeed; returns the decoded answer (or None)."""
    answer = agent.request("PUT", path, body=body, token=token)
    assert answer.status == 200, f"PUT {path} answered {answer.status}: {answer.text}"
    return answer.json() if answer.body.strip() else None


def register_all(
    agent: ConsulAgent, bodies: Sequence[Mapping[str, Any]], *, token: str | None = None
) -> None:
    for body in bodies:
        put(agent, "/v1/catalog/register", body, token=token)


def service_ids_in_catalog(agent: ConsulAgent) -> set[str]:
    ids: set[str] = set()
    for name in agent.request("GET", "/v1/catalog/services").json():
        for row in agent.request("GET", f"/v1/catalog/service/{name}").json():
            ids.add(row["ServiceID"])
    return ids


# ---------------------------------------------------------------------------------- consul-sd


class Discoverer:
    """``consul-sd discover --output FILE`` running as a process until ``stop``."""

    def __init__(
        self,
        workdir: Path,
        *,
        server: str,
        output: Path,
        mode: str,
        args: Sequence[str] = (),
    ) -> None:
        self.output = output
        self.log_path = workdir / f"consul-sd-{output.stem}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = discover_argv(server, "--output", str(output), *args, mode=mode)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=CLI_ENV,
                cwd=workdir,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_running(self) -> None:
        code = self.process.poll()
        assert code is None, f"consul-sd exited with {code}:\n{self.log()[-3000:]}"

    def targets(self) -> TargetSet:
        """What the output file holds now (empty before the first write)."""
        self.assert_running()
        if not self.output.exists():
            return {}
        return file_sd_targets(self.output)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def discover_once(
    server: str,
    *args: str,
    mode: str = "auto",
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """``consul-sd discover --once`` to stdout; the completed process (not checked)."""
    return subprocess.run(
        discover_argv(server, "--once", *args, mode=mode),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=timeout,
        check=False,
    )


def start_once(server: str, output: Path, *args: str, mode: str) -> subprocess.Popen[str]:
    """``consul-sd discover --once --output FILE`` started in the background."""
    return subprocess.Popen(
        discover_argv(server, "--once", "--output", str(output), *args, mode=mode),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )


def finish(
    processes: Mapping[Any, subprocess.Popen[str]], *, timeout: float = 90.0
) -> dict[Any, str]:
    """Wait for background ``--once`` runs, each of which must succeed; kill what is left.

    Returns each run's stderr (its log).
    """
    logs: dict[Any, str] = {}
    try:
        for key, process in processes.items():
            _, logs[key] = process.communicate(timeout=timeout)
            assert process.returncode == 0, f"{key}: exit {process.returncode}: {logs[key]}"
        return logs
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


# ------------------------------------------------------------------------------ kubelet volume


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a mounted ConfigMap.

    Each data key is a symlink ``KEY -> ..data/KEY``; ``..data`` is a symlink to a hidden
    timestamped directory holding the files. An update writes a new timestamped directory, swaps
    ``..data`` with one rename (``..data_tmp`` -> ``..data``), adds and removes the key symlinks,
    then deletes the old directory: the kubelet's AtomicWriter sequence.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.updates = 0

    def write(self, data: Mapping[str, bytes]) -> None:
        data_link = self.directory / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        new = Path(tempfile.mkdtemp(prefix=stamp, dir=self.directory))
        for key, content in data.items():
            (new / key).write_bytes(content)
        temporary = self.directory / "..data_tmp"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(new.name)
        temporary.replace(data_link)
        for key in data:
            link = self.directory / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for entry in self.directory.iterdir():
            if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in data:
                entry.unlink()
        if old is not None:
            for file in (self.directory / old).iterdir():
                file.unlink()
            (self.directory / old).rmdir()
        self.updates += 1


# ---------------------------------------------------------------------------------- simulator


class SimulatorThread:
    """A ``ConsulSimulator`` serving from its own event loop in a daemon thread.

    The oracle's tests are synchronous (they drive processes); the simulator is asyncio. It is
    reached over HTTP like the agent, so the same bodies and the same CLI runs apply to both.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.simulator = ConsulSimulator(jitter=False)
        self.fleet_answers: list[tuple[Any, int, str]] = []
        self._call(self.simulator.start())

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    @property
    def address(self) -> str:
        return self.simulator.address

    def request(self, method: str, path: str, *, body: Any = None) -> HttpResponse:
        return http_request(method, f"http://{self.address}{path}", body=body)

    def stop(self) -> None:
        self._call(self.simulator.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# ------------------------------------------------------------------------- operator's layout


class ConfigMapMirror:
    """The operator's output path without an apiserver, running in a thread.

    ``run_discovery`` feeds snapshots; each one the operator would publish is cut into ConfigMap
    shards by ``config_map_shards`` (sticky shard count, as the runner keeps it) and, when the
    data changed, written to a ``ConfigMapVolume`` as the kubelet would project it.
    """

    def __init__(self, server: str, volume: ConfigMapVolume, *, mode: Mode = "Blocking") -> None:
        self.volume = volume
        self.output = ConfigMapOutput(name="oracle", max_shard_bytes=16 * 1024)
        self.query = DiscoveryQuery(
            mode=mode, refresh_interval=1.0, watch_timeout=10.0, max_concurrent=50
        )
        self.endpoint = ConsulEndpoint(server=server)
        self.error: BaseException | None = None
        self._last: dict[str, bytes] | None = None
        self._shards: int | None = None
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._run())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as error:  # reported by assert_running
            self.error = error
        finally:
            self._loop.close()

    async def _run(self) -> None:
        client = ConsulClient(endpoint=self.endpoint, max_connections=self.query.max_concurrent + 1)
        async with client:
            await run_discovery(query=self.query, client=client, publish=self._publish)

    async def _publish(self, snapshot: Snapshot) -> None:
        if not is_publishable(snapshot, published_before=self._last is not None):
            return
        shards = config_map_shards(snapshot.groups, output=self.output, previous=self._shards)
        data = {shard.key: shard.data for shard in shards}
        if data != self._last:
            self.volume.write(data)
            self._last = data
            self._shards = len(shards)

    def assert_running(self) -> None:
        assert self.error is None, f"the ConfigMap mirror failed: {self.error!r}"
        assert self._thread.is_alive(), "the ConfigMap mirror stopped"

    def targets(self) -> TargetSet:
        """Every target the mounted shards hold now."""
        self.assert_running()
        merged: TargetSet = {}
        for path in sorted(self.volume.directory.glob("*.json")):
            merged.update(file_sd_targets(path))
        return merged

    def stop(self) -> None:
        task = self._task
        if task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(15)


# ----------------------------------------------------------------------------------------- ACL


MASTER = "4f1c9a52-oracle-master-token"
READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def create_read_token(agent: ConsulAgent) -> tuple[str, str]:
    """A token with only the read policy: (AccessorID, SecretID)."""
    put(agent, "/v1/acl/policy", {"Name": "discovery-read", "Rules": READ_RULES})
    token = put(
        agent,
        "/v1/acl/token",
        {"Description": "consul-sd oracle", "Policies": [{"Name": "discovery-read"}]},
    )
    return str(token["AccessorID"]), str(token["SecretID"])


async def revoke_mid_run(
    agent: ConsulAgent, *, accessor: str, query: DiscoveryQuery, token: str, output: Path
) -> tuple[bytes, FileSDWriter, list[Snapshot]]:
    """Run discovery into ``output``; after its first write, delete the token.

    Returns the bytes of that first write, the writer, and the snapshots seen after the delete
    (waiting until one reports ACLDenied and two more followed).
    """
    writer = FileSDWriter(output)
    snapshots: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        snapshots.append(snapshot)
        await writer.publish(snapshot)

    async def until(condition: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"{query.mode}: timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    endpoint = ConsulEndpoint(server=agent.address, token=token)
    async with ConsulClient(endpoint=endpoint, max_connections=query.max_concurrent + 1) as client:
        task = asyncio.create_task(run_discovery(query=query, client=client, publish=publish))
        try:
            await until(lambda: writer.writes == 1, "the first write", 20)
            written = output.read_bytes()
            answer = await asyncio.to_thread(agent.request, "DELETE", f"/v1/acl/token/{accessor}")
            assert answer.status == 200, answer.text
            revoked_at = len(snapshots)

            def denied() -> bool:
                return any(
                    s.problem is not None and s.problem.reason == "ACLDenied"
                    for s in snapshots[revoked_at:]
                )

            await until(denied, "a snapshot reporting ACLDenied", 20)
            # Two more snapshots: nothing may be written while every request is denied.
            seen = len(snapshots)
            await until(lambda: len(snapshots) >= seen + 2, "two more snapshots", 20)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return written, writer, snapshots[revoked_at:]
