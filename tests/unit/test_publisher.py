"""The output publisher's rules, against a fake apiserver that keeps owners and uids.

Every test that changes the outputs checks the promise directly: after every single write or
delete, the objects together hold every target that exists both before and after the change.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from consul_sd.api.spec import Output, parse_spec
from consul_sd.kube import KubeError
from consul_sd.outputs.publisher import RELIST_SECONDS, OutputPublisher
from consul_sd.outputs.shards import shard_index
from tests.unit.fake_kube import REF, FakeKube, Killed, lines_of
from tests.unit.test_outputs import fleet


def config_map_output(*, shard_bytes: int = 512 * 1024, **extra: Any) -> Output:
    spec = parse_spec(
        {
            "consul": {"server": "c:8500"},
            "output": {
                "configMap": {"name": "cr", "maxShardBytes": shard_bytes, **extra},
            },
        },
        require_output=True,
    )
    assert spec.output is not None
    return spec.output


def scrape_config_output(**extra: Any) -> Output:
    spec = parse_spec(
        {
            "consul": {"server": "c:8500"},
            "output": {"scrapeConfig": {"name": "sc", "maxTargetsPerObject": 100}, **extra},
        },
        require_output=True,
    )
    assert spec.output is not None
    return spec.output


def http_sd_output(**http_sd: Any) -> Output:
    output = scrape_config_output(httpSD=http_sd)
    assert output.scrape_config is not None
    scrape = output.scrape_config.model_copy(update={"targets_from": "HTTPSD"})
    return output.model_copy(update={"scrape_config": scrape})


BASE_URL = "http://consul-sd-operator-metrics.monitoring.svc:9090"


async def started(kube: FakeKube, output: Output) -> OutputPublisher:
    publisher = OutputPublisher(kube=kube, ref=REF, output=output)
    await publisher.resume()
    return publisher


def assert_never_below(kube: FakeKube, *, before: set[str], after: set[str]) -> None:
    """Every state after each write held every target that exists before and after."""
    kept = before & after
    for i, held in enumerate(kube.held_after_each_write):
        missing = kept - held
        assert not missing, f"after write {i + 1}, {len(missing)} targets were missing"


def shards(kube: FakeKube) -> list[str]:
    return sorted(name for _, name in kube.objects)


# ------------------------------------------------------------------------ shard count changes


async def test_growing_the_shard_count_never_drops_a_target_in_between() -> None:
    kube = FakeKube()
    publisher = await started(kube, config_map_output(shard_bytes=16 * 1024))
    small, large = fleet(60), fleet(240)
    assert await publisher.write(small) is None
    count = len(kube.objects)
    kube.held_after_each_write.clear()
    assert await publisher.write(large) is None
    assert len(kube.objects) > count
    assert_never_below(kube, before=lines_of(small), after=lines_of(large))
    assert kube.held() == lines_of(large)


async def test_shrinking_the_shard_count_deletes_only_after_the_targets_moved() -> None:
    kube = FakeKube()
    publisher = await started(kube, config_map_output(shard_bytes=16 * 1024))
    large, small = fleet(240), fleet(16)
    assert await publisher.write(large) is None
    count = len(kube.objects)
    kube.held_after_each_write.clear()
    assert await publisher.write(small) is None
    assert len(kube.objects) < count
    assert_never_below(kube, before=lines_of(large), after=lines_of(small))
    assert kube.held() == lines_of(small)


async def test_a_creation_refused_midway_keeps_every_target_for_good() -> None:
    """A ResourceQuota refusing the Nth ConfigMap: nothing that existed was narrowed."""
    kube = FakeKube()
    publisher = await started(kube, config_map_output(shard_bytes=16 * 1024))
    small, large = fleet(60), fleet(240)
    assert await publisher.write(small) is None
    created = 0

    def quota(verb: str, kind: str, name: str) -> KubeError | None:
        nonlocal created
        if verb == "create":
            created += 1
            if created > 2:
                return KubeError("HTTP 403: exceeded quota: configmaps", status=403)
        return None

    kube.refuse = quota
    problem = await publisher.write(large)
    assert problem is not None
    assert problem.reason == "OutputWriteFailed"
    assert "exceeded quota" in problem.message
    assert kube.held() >= lines_of(small)
    assert all(verb == "create" for verb, _, _ in kube.calls if verb != "list")


@pytest.mark.parametrize("survived", [0, 1, 2, 3, 5, 8, 13, 21])
async def test_a_kill_between_any_two_writes_leaves_a_superset_and_a_restart_finishes(
    survived: int,
) -> None:
    kube = FakeKube()
    output = config_map_output(shard_bytes=16 * 1024)
    publisher = await started(kube, output)
    small, large = fleet(60), fleet(240)
    assert await publisher.write(small) is None
    kube.held_after_each_write.clear()
    kube.kill_after = survived
    with pytest.raises(Killed):
        await publisher.write(large)
    assert kube.held() >= lines_of(small) & lines_of(large)
    kube.kill_after = None
    restarted = await started(kube, output)
    assert await restarted.write(large) is None
    assert_never_below(kube, before=lines_of(small), after=lines_of(large))
    assert kube.held() == lines_of(large)


async def test_a_service_spread_over_existing_shards_is_written_to_its_new_homes_first() -> None:
    """A service grown past a quarter of a shard moves instances between existing objects."""
    kube = FakeKube()
    output = config_map_output(shard_bytes=16 * 1024)
    publisher = await started(kube, output)
    before = fleet(40)
    assert await publisher.write(before) is None
    homes = sorted(name for _, name in kube.objects)
    # A service whose home is written first, so it would lose its instances before the
    # shards they move to hold them, were it not widened.
    first = next(name for name in sorted(before) if shard_index(name, len(homes)) == 0)
    after = dict(before)
    after[first] = fleet(40, instances=40)[first]
    kube.held_after_each_write.clear()
    assert await publisher.write(after) is None
    assert sorted(name for _, name in kube.objects) == homes
    assert_never_below(kube, before=lines_of(before), after=lines_of(after))
    assert kube.held() == lines_of(after)


async def test_a_restart_seeds_the_targets_the_outputs_hold() -> None:
    kube = FakeKube()
    output = config_map_output(shard_bytes=16 * 1024)
    publisher = await started(kube, output)
    groups = fleet(120)
    assert await publisher.write(groups) is None
    restarted = OutputPublisher(kube=kube, ref=REF, output=output)
    seed = await restarted.resume()
    assert seed == groups


async def test_a_restart_rewrites_nothing_that_is_current() -> None:
    kube = FakeKube()
    output = config_map_output(shard_bytes=16 * 1024)
    assert await (await started(kube, output)).write(fleet(120)) is None
    kube.calls.clear()
    restarted = await started(kube, output)
    assert await restarted.write(fleet(120)) is None
    assert [verb for verb, _, _ in kube.calls if verb != "list"] == []


async def test_scrape_config_shards_move_superset_first_too() -> None:
    kube = FakeKube()
    publisher = await started(kube, scrape_config_output())
    small, large = fleet(30), fleet(200)
    assert await publisher.write(small) is None
    kube.held_after_each_write.clear()
    assert await publisher.write(large) is None
    assert_never_below(kube, before=lines_of(small), after=lines_of(large))
    assert kube.held() == lines_of(large)


async def test_objects_no_longer_wanted_are_deleted_after_every_write_of_the_new_set() -> None:
    kube = FakeKube()
    first = await started(kube, config_map_output())
    assert await first.write(fleet(10)) is None
    renamed = await started(kube, config_map_output(name="renamed"))
    kube.calls.clear()
    assert await renamed.write(fleet(10)) is None
    verbs = [(verb, name) for verb, _, name in kube.calls if verb != "list"]
    assert verbs == [("create", "renamed-0"), ("delete", "cr-0")]


# --------------------------------------------------------------------------------- ownership


async def test_an_output_name_another_discovery_owns_is_a_conflict_left_untouched() -> None:
    kube = FakeKube()
    kube.add_object("ConfigMap", "cr-0", owner_uid="uid-team-a", payload={"cr-0.json": "[]"})
    before = json.dumps(kube.objects[("ConfigMap", "cr-0")], sort_keys=True)
    publisher = await started(kube, config_map_output())
    problem = await publisher.write(fleet(5))
    assert problem is not None
    assert problem.reason == "OutputConflict"
    assert "ConfigMap ns/cr-0 already exists and belongs to ConsulDiscovery other" in (
        problem.message
    )
    assert json.dumps(kube.objects[("ConfigMap", "cr-0")], sort_keys=True) == before
    assert [verb for verb, _, _ in kube.calls if verb not in ("list", "read")] == ["create"]


async def test_a_users_config_map_is_never_taken_over_nor_deleted_later() -> None:
    kube = FakeKube()
    kube.add_object("ConfigMap", "victim-0", owner_uid=None, payload={"app.conf": "keep me"})
    victim = json.dumps(kube.objects[("ConfigMap", "victim-0")], sort_keys=True)
    publisher = await started(kube, config_map_output(name="victim"))
    problem = await publisher.write(fleet(5))
    assert problem is not None
    assert problem.reason == "OutputConflict"
    assert "belongs to no ConsulDiscovery" in problem.message
    renamed = await started(kube, config_map_output(name="fleet"))
    assert await renamed.write(fleet(5)) is None
    assert json.dumps(kube.objects[("ConfigMap", "victim-0")], sort_keys=True) == victim


async def test_an_object_labelled_as_ours_but_owned_by_another_uid_is_not_deleted() -> None:
    kube = FakeKube()
    kube.add_object("ConfigMap", "old-3", owner_uid="uid-previous-cr", payload={})
    kube.objects[("ConfigMap", "old-3")]["metadata"]["labels"] = {"consul-sd.io/discovery": "cr"}
    publisher = await started(kube, config_map_output())
    assert await publisher.write(fleet(5)) is None
    assert ("ConfigMap", "old-3") in kube.objects


async def test_an_object_this_discovery_owns_but_forgot_is_taken_back() -> None:
    kube = FakeKube()
    kube.add_object("ConfigMap", "cr-0", owner_uid=REF.uid, payload={"cr-0.json": "[]"})
    publisher = OutputPublisher(kube=kube, ref=REF, output=config_map_output())
    assert await publisher.write(fleet(5)) is None  # no resume: the name is not known as ours
    assert kube.held() == lines_of(fleet(5))


async def test_an_oversize_write_says_output_too_large() -> None:
    kube = FakeKube()
    publisher = await started(kube, config_map_output())
    assert await publisher.write(fleet(5)) is None
    kube.refuse = lambda verb, kind, name: KubeError(
        "HTTP 422: Too long: must have at most 1048576 bytes", status=422
    )
    problem = await publisher.write(fleet(6))
    assert problem is not None
    assert (problem.reason, "Too long" in problem.message) == ("OutputTooLarge", True)
    assert kube.held() == lines_of(fleet(5))


async def test_a_422_that_is_not_about_size_is_a_write_failure_not_output_too_large() -> None:
    kube = FakeKube()
    publisher = await started(kube, config_map_output())
    kube.refuse = lambda verb, kind, name: KubeError(
        "HTTP 422: metadata.ownerReferences: Invalid value: only one reference can have "
        "Controller set to true",
        status=422,
    )
    problem = await publisher.write(fleet(5))
    assert problem is not None
    assert problem.reason == "OutputWriteFailed"


async def test_a_namesake_created_after_an_out_of_band_delete_is_never_written_nor_deleted() -> (
    None
):
    kube = FakeKube()
    publisher = await started(kube, config_map_output())
    assert await publisher.write(fleet(3)) is None
    # Someone deletes cr-0 and creates their own ConfigMap of that name.
    del kube.objects[("ConfigMap", "cr-0")]
    kube.add_object("ConfigMap", "cr-0", owner_uid=None, payload={"user.txt": "precious"})
    problem = await publisher.write(fleet(4))
    assert problem is not None
    assert problem.reason == "OutputConflict"
    assert kube.objects[("ConfigMap", "cr-0")]["data"] == {"user.txt": "precious"}
    renamed = await started(kube, config_map_output(name="other"))
    assert await renamed.write(fleet(4)) is None
    assert kube.objects[("ConfigMap", "cr-0")]["data"] == {"user.txt": "precious"}


async def test_an_owned_output_deleted_out_of_band_is_written_again_at_the_next_listing() -> None:
    now = [0.0]
    kube = FakeKube()
    publisher = OutputPublisher(
        kube=kube, ref=REF, output=config_map_output(), clock=lambda: now[0]
    )
    await publisher.resume()
    assert await publisher.write(fleet(3)) is None
    del kube.objects[("ConfigMap", "cr-0")]
    assert await publisher.write(fleet(3)) is None  # unchanged bytes: trusted from memory
    now[0] += RELIST_SECONDS
    assert await publisher.write(fleet(3)) is None
    assert kube.held() == lines_of(fleet(3))


async def test_an_owned_output_deleted_out_of_band_is_created_again_when_targets_change() -> None:
    kube = FakeKube()
    publisher = await started(kube, config_map_output())
    assert await publisher.write(fleet(3)) is None
    del kube.objects[("ConfigMap", "cr-0")]
    assert await publisher.write(fleet(4)) is None
    assert kube.held() == lines_of(fleet(4))


# ------------------------------------------------------------------------------ HTTP SD form


async def test_the_http_sd_form_is_one_object_whatever_the_fleet_size() -> None:
    kube = FakeKube()
    publisher = OutputPublisher(kube=kube, ref=REF, output=http_sd_output(), http_sd_base=BASE_URL)
    await publisher.resume()
    assert await publisher.write(fleet(10)) is None
    assert await publisher.write(fleet(2000)) is None
    assert set(kube.objects) == {("ScrapeConfig", "sc")}
    (config,) = kube.objects[("ScrapeConfig", "sc")]["spec"]["httpSDConfigs"]
    assert config["url"] == f"{BASE_URL}/targets/ns/cr"
    assert [(o.name, o.targets) for o in publisher.outputs] == [("sc", 6000)]


async def test_switching_from_static_to_http_sd_writes_it_before_deleting_the_static_shards() -> (
    None
):
    kube = FakeKube()
    static = await started(kube, scrape_config_output())
    targets = fleet(200)
    assert await static.write(targets) is None
    static_names = {key for key in kube.objects}
    assert len(static_names) > 1
    kube.objects_after_each_write.clear()
    kube.held_after_each_write.clear()
    switched = OutputPublisher(kube=kube, ref=REF, output=http_sd_output(), http_sd_base=BASE_URL)
    await switched.resume()
    assert await switched.write(targets) is None
    for objects, held in zip(
        kube.objects_after_each_write, kube.held_after_each_write, strict=True
    ):
        # Every state: the HTTP SD object exists, or the static shards still hold everything.
        assert ("ScrapeConfig", "sc") in objects or held >= lines_of(targets)
    assert set(kube.objects) == {("ScrapeConfig", "sc")}


async def test_an_http_sd_object_name_another_discovery_owns_is_a_conflict_left_untouched() -> None:
    kube = FakeKube()
    kube.add_object("ScrapeConfig", "sc", owner_uid="uid-team-a", payload={"staticConfigs": []})
    before = json.dumps(kube.objects[("ScrapeConfig", "sc")], sort_keys=True)
    publisher = OutputPublisher(kube=kube, ref=REF, output=http_sd_output(), http_sd_base=BASE_URL)
    await publisher.resume()
    problem = await publisher.write(fleet(5))
    assert problem is not None
    assert problem.reason == "OutputConflict"
    assert json.dumps(kube.objects[("ScrapeConfig", "sc")], sort_keys=True) == before
