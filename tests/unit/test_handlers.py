"""The kopf daemon of a ConsulDiscovery: one runner per generation, restarted, cleaned up.

``run_consul_discovery`` is called as kopf calls it, with fakes for its kwargs (kopf's ``stopped``
flag, the live ``meta`` and ``spec`` views, the memo) and a fake ``run_generation`` that records
what happens to each runner. Time is virtual (looptime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

import kopf
import pytest
from prometheus_client import REGISTRY

from consul_sd import metrics
from consul_sd.controller import handlers
from consul_sd.controller.progress import Progress
from consul_sd.controller.runner import HTTPSDServing
from consul_sd.kube import DiscoveryRef

pytestmark = pytest.mark.looptime
NAMESPACE, NAME = "monitoring", "fleet"


class Stopped:
    """kopf's DaemonStopped as the daemon uses it: a truth value, ``wait(timeout)``, ``reason``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: kopf.DaemonStoppingReason | None = None

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()


class NoKube:
    """The daemon only hands the client to the runner: any call on it is a test failure."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Kubernetes call: {name}")


class Runners:
    """Stands in for ``run_generation``: logs starts, crashes and cancellations with the time."""

    def __init__(self, *, crashes: int = 0) -> None:
        self.events: list[tuple[str, int, float]] = []
        self.specs: list[dict[str, Any]] = []
        self.ready_before: list[bool] = []
        self.serving: list[HTTPSDServing | None] = []
        self._crashes = crashes

    async def __call__(
        self,
        *,
        kube: Any,
        ref: DiscoveryRef,
        generation: int,
        spec_data: dict[str, Any],
        ready_before: bool,
        serving: HTTPSDServing | None,
    ) -> None:
        assert isinstance(kube, NoKube)
        self.ready_before.append(ready_before)
        self.serving.append(serving)
        assert ref == DiscoveryRef(namespace=NAMESPACE, name=NAME, uid="uid-1")
        now = asyncio.get_running_loop().time
        self.events.append(("started", generation, now()))
        self.specs.append(spec_data)
        if self._crashes:
            self._crashes -= 1
            self.events.append(("crashed", generation, now()))
            raise RuntimeError("a bug in the runner")
        try:
            await asyncio.Event().wait()
        finally:
            self.events.append(("cancelled", generation, now()))

    def story(self) -> list[tuple[str, int]]:
        return [(what, generation) for what, generation, _ in self.events]


class Daemon:
    """One ``run_consul_discovery`` task with the kwargs kopf gives it."""

    def __init__(
        self,
        runners: Runners,
        monkeypatch: pytest.MonkeyPatch,
        *,
        serving: HTTPSDServing | None = None,
    ) -> None:
        monkeypatch.setattr(handlers, "run_generation", runners)
        self.meta: dict[str, Any] = {"generation": 1}
        self.spec: dict[str, Any] = {"mode": "Polling"}
        self.status: dict[str, Any] = {}
        self.stopped = Stopped()
        kwargs: dict[str, Any] = {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": "uid-1",
            "meta": self.meta,
            "spec": self.spec,
            "status": self.status,
            "stopped": self.stopped,
            "logger": logging.getLogger("kopf.objects"),
            "memo": kopf.Memo(kube=NoKube(), serving=serving),
            "retry": 0,  # kopf passes more kwargs than the daemon reads
        }
        # kopf's decorator is untyped: the daemon as kopf calls it.
        daemon = cast(Callable[..., Coroutine[Any, Any, None]], handlers.run_consul_discovery)
        self.task = asyncio.create_task(daemon(**kwargs))

    async def stop(self, reason: kopf.DaemonStoppingReason | None = None) -> float:
        """Stop as kopf does (set the flag); how long the daemon took to return."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.stopped.reason = reason
        self.stopped.set()
        async with asyncio.timeout(60):
            await self.task
        return loop.time() - started


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_new_generation_cancels_the_old_runner_before_starting_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runners = Runners()
    daemon = Daemon(runners, monkeypatch)
    await asyncio.sleep(3)
    daemon.meta["generation"] = 2
    daemon.spec["mode"] = "Blocking"  # kopf updates the live views in place
    await asyncio.sleep(3)
    await daemon.stop()
    assert runners.story() == [
        ("started", 1),
        ("cancelled", 1),
        ("started", 2),
        ("cancelled", 2),
    ]
    assert [spec["mode"] for spec in runners.specs] == ["Polling", "Blocking"]


async def test_a_crashed_runner_is_restarted_after_a_pause_and_the_cr_is_named(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runners = Runners(crashes=1)
    daemon = Daemon(runners, monkeypatch)
    with caplog.at_level(logging.INFO, logger="kopf.objects"):
        await asyncio.sleep(30)
        await daemon.stop()
    assert runners.story() == [
        ("started", 1),
        ("crashed", 1),
        ("started", 1),
        ("cancelled", 1),
    ]
    crashed_at = runners.events[1][2]
    restarted_at = runners.events[2][2]
    # Not a hot loop against whatever makes it crash.
    assert restarted_at - crashed_at >= 5
    (error,) = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert f"{NAMESPACE}/{NAME}" in error.getMessage()
    assert "RuntimeError" in error.getMessage()


async def test_stopping_cancels_the_runner_and_forgets_the_crs_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    labels = {"namespace": NAMESPACE, "name": NAME}
    metrics.TARGETS.labels(NAMESPACE, NAME).set(42)
    # The liveness tracker on a clock the test moves.
    clock = Clock()
    progress = Progress(clock=clock)
    monkeypatch.setattr(handlers, "PROGRESS", progress)
    progress.track(f"{NAMESPACE}/{NAME}", allowance=0)
    runners = Runners()
    daemon = Daemon(runners, monkeypatch)
    await asyncio.sleep(3)
    clock.now = 10_000.0  # the loop would count as stalled now, were it still tracked
    assert progress.stalled() != []
    took = await daemon.stop()
    assert runners.story() == [("started", 1), ("cancelled", 1)]
    assert took <= handlers.GENERATION_POLL_SECONDS
    assert REGISTRY.get_sample_value("consul_sd_targets", labels) is None
    assert progress.stalled() == []


@pytest.mark.parametrize(
    ("status", "ready_before"),
    [
        ({}, False),
        ({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}, True),
        ({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False"}]}, False),
        ({"observedGeneration": 0, "conditions": [{"type": "Ready", "status": "True"}]}, False),
    ],
)
def test_a_runner_starts_ready_only_when_status_says_this_generation_was_ready(
    status: dict[str, Any], ready_before: bool
) -> None:
    assert handlers.was_ready(status, generation=1) is ready_before


class Store:
    """The target store as the daemon uses it: only ``forget`` is expected."""

    def __init__(self) -> None:
        self.forgotten: list[tuple[str, str]] = []

    def reserve(self, key: tuple[str, str]) -> None:
        raise AssertionError("the daemon never registers a CR; its runner does")

    def expect(self, key: tuple[str, str], *, token: str | None) -> None:
        raise AssertionError("the daemon never registers a CR; its runner does")

    def serve(self, key: tuple[str, str], groups: Any, *, token: str | None) -> None:
        raise AssertionError("the daemon never serves; its runner does")

    def forget(self, key: tuple[str, str]) -> None:
        self.forgotten.append(key)


async def test_a_deleted_cr_is_forgotten_by_the_target_store_and_runners_get_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store()
    serving = HTTPSDServing(store=store, base_url="http://op:9090")
    runners = Runners()
    daemon = Daemon(runners, monkeypatch, serving=serving)
    await asyncio.sleep(3)
    assert store.forgotten == []
    await daemon.stop(kopf.DaemonStoppingReason.RESOURCE_DELETED)
    assert runners.serving == [serving]
    assert store.forgotten == [(NAMESPACE, NAME)]


async def test_an_exiting_operator_keeps_serving_what_it_has_until_it_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store()
    daemon = Daemon(Runners(), monkeypatch, serving=HTTPSDServing(store=store))
    await asyncio.sleep(3)
    await daemon.stop(kopf.DaemonStoppingReason.OPERATOR_EXITING)
    assert store.forgotten == []


class SlowTeardown(Runners):
    """A runner whose cancellation takes 3 s (a gzip of a large body, a slow session close)."""

    async def __call__(self, **kwargs: Any) -> None:
        try:
            await super().__call__(**kwargs)
        except asyncio.CancelledError:
            await asyncio.sleep(3)
            raise


async def test_a_deleted_cr_is_forgotten_even_when_kopf_cancels_the_daemon_during_teardown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store()
    daemon = Daemon(SlowTeardown(), monkeypatch, serving=HTTPSDServing(store=store))
    await asyncio.sleep(3)
    daemon.stopped.reason = kopf.DaemonStoppingReason.RESOURCE_DELETED
    daemon.stopped.set()
    await asyncio.sleep(2.0)  # kopf: cancellation_backoff, then task.cancel()
    daemon.task.cancel()
    await asyncio.gather(daemon.task, return_exceptions=True)
    await asyncio.sleep(5)
    assert store.forgotten == [("monitoring", "fleet")], "a deleted CR stays served forever"
