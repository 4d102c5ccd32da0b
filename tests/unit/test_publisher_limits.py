"""Publisher limits found by a hostile review, each pinned here.

- Widening keeps only targets whose new object was not written earlier in the same pass, so a
  growth whose every planned shard fits never writes an object past the ConfigMap limit.
- A resume retried after a failure (an apiserver blip between the two kinds' lists) counts
  each object once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from consul_sd.api.spec import parse_spec
from consul_sd.controller.runner import GenerationSink
from consul_sd.kube import KubeError, OutputKind
from consul_sd.outputs.publisher import OutputPublisher
from consul_sd.outputs.shards import shard_index
from consul_sd.targets import TargetGroup
from tests.unit.fake_kube import REF, FakeKube
from tests.unit.test_outputs import fleet
from tests.unit.test_publisher import config_map_output
from tests.unit.test_runner import SPEC, snapshot

CONFIG_MAP_LIMIT = 1024 * 1024


def services_in(
    shard: int, *, of: int, count: int, pool: Mapping[str, TargetGroup]
) -> dict[str, TargetGroup]:
    chosen = {n: g for n, g in sorted(pool.items()) if shard_index(n, of) == shard}
    return dict(list(chosen.items())[:count])


def size_of(groups: Mapping[str, TargetGroup]) -> int:
    return sum(len(t.line) + 2 for g in groups.values() for t in g)


async def test_a_growth_whose_every_shard_fits_is_written() -> None:
    kube = FakeKube()
    kube.max_object_bytes = CONFIG_MAP_LIMIT
    publisher = OutputPublisher(
        kube=kube, ref=REF, output=config_map_output(shard_bytes=900 * 1024)
    )
    await publisher.resume()
    pool = fleet(3000)
    # ~600 KiB that will all live in shard 1 of 4, and ~850 KiB that will live in shard 0.
    moving = services_in(1, of=4, count=10**9, pool=pool)
    while size_of(moving) > 600 * 1024:
        moving.popitem()
    arriving = services_in(0, of=4, count=10**9, pool=pool)
    while size_of(arriving) > 850 * 1024:
        arriving.popitem()
    assert await publisher.write(moving) is None
    assert len(kube.objects) == 1  # one shard of ~600 KiB
    grown = {**moving, **arriving}
    problem = await publisher.write(grown)
    sizes = {
        name: len(next(iter(o["data"].values())).encode()) for (_, name), o in kube.objects.items()
    }
    assert problem is None, f"{problem}; objects now: {sizes}"


async def test_a_resume_retried_after_a_failure_counts_each_object_once() -> None:
    kube = FakeKube()
    first = GenerationSink(
        kube=kube, ref=REF, generation=3, spec=parse_spec(SPEC, require_output=True)
    )
    await first.resume()
    await first.publish(snapshot(5))  # cr-0 written
    real_list = kube.list_outputs
    failures = iter([True])

    async def flaky(*, namespace: str, kind: OutputKind, discovery: str) -> list[dict[str, Any]]:
        if kind == "ScrapeConfig" and next(failures, False):
            raise KubeError("apiserver unreachable: ProtocolError", status=0)
        return await real_list(namespace=namespace, kind=kind, discovery=discovery)

    kube.list_outputs = flaky  # type: ignore[method-assign]
    restarted = GenerationSink(
        kube=kube,
        ref=REF,
        generation=3,
        spec=parse_spec(SPEC, require_output=True),
        ready_before=True,
    )
    with contextlib.suppress(KubeError):  # the runner's boundary reports it, then resumes again
        await restarted.resume()
    await restarted.resume()
    await restarted.report_blocked(None)
    status = kube.statuses[-1]
    assert len(status["outputs"]) == 1, status["outputs"]
