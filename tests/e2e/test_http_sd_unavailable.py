"""An operator without ``--http-sd-url`` cannot give a CR the HTTP SD ScrapeConfig it asks for.

Its own module: the operator here must be the only one watching, or another operator (with a
URL) would answer the same CR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.e2e.operator_harness import (
    Operator,
    Simulator,
    condition,
    create_cr,
    eventually,
    get_cr,
)
from tests.e2e.test_http_sd_operator import http_sd_cr
from tests.support.components import ControlPlane

pytestmark = pytest.mark.e2e


def test_without_an_http_sd_url_the_scrape_config_form_is_http_sd_unavailable(
    api: k8s.ApiClient,
    control_plane: ControlPlane,
    consul_sd_crd: None,
    namespace: str,
    simulator: Callable[..., Simulator],
    tmp_path: Any,
) -> None:
    sim = simulator(services=2, instances=1)
    bare = Operator(control_plane, tmp_path, scope=("--namespace", namespace))
    try:
        create_cr(api, namespace, http_sd_cr("nourl", server=sim.address))

        def unavailable() -> dict[str, Any]:
            ready = condition(get_cr(api, namespace, "nourl"), "Ready")
            assert ready.get("reason") == "HTTPSDUnavailable", ready
            return ready

        ready = eventually(unavailable, timeout=60, what="HTTPSDUnavailable")
        assert "--http-sd-url" in ready["message"]
    finally:
        bare.stop()
