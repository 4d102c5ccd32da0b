"""The Consul client's contract: parameters as Prometheus sends them, credentials only in
headers, clear errors, retries, TLS. Against the simulator, and a TLS replay for certificates."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from consul_sd.consul.client import ConsulClient, RetryPolicy
from consul_sd.consul.endpoint import ConsulEndpoint
from consul_sd.consul.errors import (
    ConsulACLDenied,
    ConsulBadRequest,
    ConsulBadResponse,
    ConsulDatacenterUnknown,
    ConsulServerError,
    ConsulUnreachable,
)
from consul_sd.consul.records import (
    parse_check_states,
    parse_health_entries,
    parse_node_indexes,
    parse_service_checks,
    parse_service_list,
)
from consul_sd.consul.tls import build_ssl_context
from consul_simulator import ConsulSimulator

pytestmark = pytest.mark.looptime
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.1, max_delay=0.5)


@pytest.fixture
async def sim() -> AsyncIterator[ConsulSimulator]:
    async with ConsulSimulator(jitter=False) as simulator:
        simulator.register(
            {
                "Node": "n1",
                "Address": "10.0.0.1",
                "NodeMeta": {"rack": "r1"},
                "Service": {"ID": "web-1", "Service": "web", "Port": 80, "Tags": ["a", "b"]},
            }
        )
        simulator.register(
            {
                "Node": "n2",
                "Address": "10.0.0.2",
                "NodeMeta": {"rack": "r2"},
                "Service": {"ID": "web-2", "Service": "web", "Port": 80, "Tags": ["a"]},
            }
        )
        yield simulator


def client(sim: ConsulSimulator, **endpoint: Any) -> ConsulClient:
    return ConsulClient(
        endpoint=ConsulEndpoint(server=sim.address, **endpoint),
        max_connections=4,
        retry=FAST_RETRY,
    )


async def test_tags_and_node_meta_are_sent_as_prometheus_sends_them(sim: ConsulSimulator) -> None:
    async with client(sim) as consul:
        both, _ = await consul.service_instances("web", tags=["a", "b"])
        rack, _ = await consul.service_instances("web", node_meta={"rack": "r2"})
    assert [i.service_id for i in both or []] == ["web-1"]
    assert [i.service_id for i in rack or []] == ["web-2"]


async def test_an_unchanged_index_is_not_decoded(sim: ConsulSimulator) -> None:
    async with client(sim) as consul:
        first, index = await consul.service_instances("web")
        again, same = await consul.service_instances("web", unchanged_index=index)
    assert first
    assert again is None
    assert same == index


async def test_the_token_travels_in_a_header_never_in_the_url() -> None:
    seen: list[tuple[str, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((str(request.rel_url), request.headers.get("X-Consul-Token")))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/catalog/services", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        endpoint = ConsulEndpoint(server=f"127.0.0.1:{port}", token="s3cret", datacenter="east")
        async with ConsulClient(endpoint=endpoint, max_connections=1) as consul:
            await consul.list_services()
    finally:
        await runner.cleanup()
    ((url, token),) = seen
    assert token == "s3cret"
    assert "s3cret" not in url
    assert "dc=east" in url
    assert "stale=" in url
    assert "s3cret" not in repr(endpoint)


async def test_acl_denial_is_reported_as_acl_denied(sim: ConsulSimulator) -> None:
    sim.acl_token = "right"
    async with client(sim, token="wrong") as consul:
        with pytest.raises(ConsulACLDenied, match="ACL not found"):
            await consul.list_services()
    assert sim.counters.requests["catalog_services"] == 1  # a 403 is not retried


async def test_an_unknown_datacenter_is_reported_as_such(sim: ConsulSimulator) -> None:
    async with client(sim, datacenter="mars") as consul:
        with pytest.raises(ConsulDatacenterUnknown, match="No path to datacenter"):
            await consul.list_services()


async def test_a_namespace_on_community_edition_is_a_bad_request(sim: ConsulSimulator) -> None:
    async with client(sim, namespace="team-a") as consul:
        with pytest.raises(ConsulBadRequest):
            await consul.list_services()


async def test_malformed_json_is_a_bad_response_naming_the_endpoint(sim: ConsulSimulator) -> None:
    sim.faults.malformed_services = {"web"}
    async with client(sim) as consul:
        with pytest.raises(ConsulBadResponse, match="/v1/health/service/web"):
            await consul.service_instances("web")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([{"Node": "n"}], "Node is not an object"),
        ([{"Node": {"Node": "n"}, "Service": {"Port": "80"}}], "Service.Port is not an integer"),
        ([{"Node": {"Node": 1}, "Service": {}}], "must be strings"),
        ([{"Node": {"Meta": {"k": 1}}, "Service": {}}], "Node.Meta is not a map of strings"),
    ],
)
def test_unexpected_shapes_are_bad_responses(answer: Any, message: str) -> None:
    with pytest.raises(ConsulBadResponse, match=message):
        parse_health_entries(answer, where="/v1/health/service/x")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"Node": "n"}, "expected a list"),
        (["n"], "entry 0 is not an object"),
        ([{"Node": "n", "CheckID": 7}], "must be strings"),
    ],
)
def test_unexpected_check_rows_are_bad_responses(answer: Any, message: str) -> None:
    with pytest.raises(ConsulBadResponse, match=f"/v1/health/state: .*{message}"):
        parse_check_states(answer)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"Node": "n"}, "expected a list"),
        (["n"], "entry 0 is not an object"),
        ([{"Node": "n", "CheckID": "c", "ServiceName": 7}], "must be strings"),
    ],
)
def test_unexpected_rows_of_every_check_are_bad_responses(answer: Any, message: str) -> None:
    with pytest.raises(ConsulBadResponse, match=f"/v1/health/state/any: .*{message}"):
        parse_service_checks(answer)


def test_every_check_read_groups_service_checks_and_leaves_node_checks_out() -> None:
    rows = [
        {"Node": "a", "CheckID": "serfHealth", "ServiceName": ""},
        {"Node": "a", "CheckID": "c1", "ServiceName": "web"},
        {"Node": "b", "CheckID": "c1", "ServiceName": "web", "Status": "critical"},
        {"Node": "b", "CheckID": "c2", "ServiceName": "db"},
    ]
    assert parse_service_checks(rows) == {
        "web": frozenset({("a", "c1"), ("b", "c1")}),
        "db": frozenset({("b", "c2")}),
    }


@pytest.mark.parametrize(
    "answer", [[{"Node": "n"}], [{"Node": "n", "ModifyIndex": "9"}], [{"ModifyIndex": 9}]]
)
def test_node_rows_without_a_name_and_integer_index_are_bad_responses(answer: Any) -> None:
    with pytest.raises(ConsulBadResponse, match="/v1/catalog/nodes: entry 0"):
        parse_node_indexes(answer)


async def test_unhealthy_checks_and_node_indexes_are_read_with_their_tables_index(
    sim: ConsulSimulator,
) -> None:
    sim.register(
        {
            "Node": "n1",
            "Address": "10.0.0.1",
            "Service": {"ID": "web-1", "Service": "web", "Port": 80},
            "Check": {"CheckID": "c1", "Name": "c", "Status": "warning", "ServiceID": "web-1"},
        }
    )
    sim.register({"Node": "n2", "Address": "10.0.0.2"})
    async with client(sim) as consul:
        checks, checks_index = await consul.unhealthy_checks()
        nodes, nodes_index = await consul.list_nodes()
        assert await consul.nodes_table_index() == nodes_index
        assert await consul.services_table_index() == sim.catalog.table_index["services"]
        assert await consul.services_on_nodes(["n1", "n2"]) == {"web"}
    (check,) = checks
    assert (check.node, check.check_id, check.service_name, check.status) == (
        "n1",
        "c1",
        "web",
        "warning",
    )
    assert checks_index == sim.catalog.table_index["checks"]
    assert nodes_index == sim.catalog.table_index["nodes"]
    assert ("n2", nodes_index) in nodes


async def test_server_errors_are_retried_with_backoff_then_reported(sim: ConsulSimulator) -> None:
    sim.faults.error_rate = 1.0
    async with client(sim) as consul:
        with pytest.raises(ConsulServerError):
            await consul.list_services()
    assert sim.counters.requests["catalog_services"] == 3


async def test_a_transient_error_is_retried_into_success(sim: ConsulSimulator) -> None:
    sim.faults.fail_services = {"web"}
    async with client(sim) as consul:
        call = asyncio.create_task(consul.service_instances("web"))
        while not sim.counters.responses_by_status.get(500):
            await asyncio.sleep(0.01)
        sim.faults.fail_services = set()  # the fault lifts before the retry
        instances, _ = await call
    assert instances
    assert sim.counters.responses_by_status[500] == 1
    assert sim.counters.requests["health_service"] == 2


async def test_a_refused_connection_is_consul_unreachable(unused_tcp_port: int) -> None:
    endpoint = ConsulEndpoint(server=f"127.0.0.1:{unused_tcp_port}")
    async with ConsulClient(endpoint=endpoint, max_connections=1, retry=FAST_RETRY) as consul:
        with pytest.raises(ConsulUnreachable):
            await consul.list_services()


@pytest.mark.looptime(False)
async def test_tls_verifies_the_server_and_presents_the_client_certificate(
    tmp_path: Path,
) -> None:
    authority = trustme.CA()
    server_cert = authority.issue_cert("consul.example")
    client_cert = authority.issue_cert("consul-sd")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_context)
    authority.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        peers.append(transport.get_extra_info("peercert"))
        return web.json_response({"Config": {"Datacenter": "tls-dc"}})

    app = web.Application()
    app.router.add_get("/v1/agent/self", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        context = build_ssl_context(
            ca_pem=authority.cert_pem.bytes().decode(),
            cert_pem=client_cert.cert_chain_pems[0].bytes().decode(),
            key_pem=client_cert.private_key_pem.bytes().decode(),
        )
        endpoint = ConsulEndpoint(
            server=f"127.0.0.1:{port}",
            scheme="https",
            ssl_context=context,
            server_name="consul.example",
        )
        async with ConsulClient(endpoint=endpoint, max_connections=1) as consul:
            assert await consul.agent_datacenter() == "tls-dc"
        wrong = ConsulEndpoint(
            server=f"127.0.0.1:{port}",
            scheme="https",
            ssl_context=build_ssl_context(),  # the system store does not trust this CA
            server_name="consul.example",
        )
        async with ConsulClient(endpoint=wrong, max_connections=1, retry=FAST_RETRY) as consul:
            with pytest.raises(ConsulUnreachable, match="certificate"):
                await consul.agent_datacenter()
    finally:
        await runner.cleanup()
    assert peers
    assert peers[0] is not None  # the server saw our client certificate


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def local_consul(path: str, handler: Handler) -> AsyncIterator[ConsulEndpoint]:
    """A one-route HTTP server on 127.0.0.1 that answers as the test says."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield ConsulEndpoint(server=f"127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


async def test_a_429_is_retried_into_success() -> None:
    answers = [
        web.Response(status=429, text="Your IP is issuing too many concurrent connections"),
        web.json_response({"web": []}, headers={"X-Consul-Index": "3"}),
    ]
    asked = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        return answers.pop(0)

    async with (
        local_consul("/v1/catalog/services", handler) as endpoint,
        ConsulClient(endpoint=endpoint, max_connections=2, retry=FAST_RETRY) as consul,
    ):
        services, index = await consul.list_services()
    assert (services, index) == ({"web": ()}, 3)
    assert asked == 2


async def test_a_blocking_request_waits_out_consuls_wait_over_16_jitter() -> None:
    wait = 320.0

    async def handler(request: web.Request) -> web.Response:
        # Consul adds up to wait/16 to the wait, then takes a moment to send the answer.
        await asyncio.sleep(wait + wait / 16 + 1)
        return web.json_response([], headers={"X-Consul-Index": "8"})

    loop = asyncio.get_running_loop()
    async with (
        local_consul("/v1/health/service/web", handler) as endpoint,
        ConsulClient(endpoint=endpoint, max_connections=2, retry=FAST_RETRY) as consul,
    ):
        started = loop.time()
        instances, index = await consul.service_instances("web", index=7, wait=wait)
    assert (instances, index) == ([], 8)
    assert loop.time() - started == pytest.approx(wait + wait / 16 + 1, abs=0.5)  # one request


def test_the_catalogs_tags_are_sorted_as_consul_sends_them_in_any_order() -> None:
    # Consul builds each service's tag list from a map: two reads of one catalog differ in order
    # (2529 of 7001 services on a real agent), which must not read as 2529 changed services.
    first = parse_service_list({"web": ["prod", "canary", "v2"], "db": None})
    again = parse_service_list({"web": ["v2", "prod", "canary"], "db": []})
    assert first == again == {"web": ("canary", "prod", "v2"), "db": ()}
