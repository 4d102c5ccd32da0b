"""All Kubernetes I/O of the operator: Secrets, outputs, status, events.

One :class:`Kube` wraps the official client (blocking) and runs each call in a worker thread so
the discovery loops never stall on the apiserver. Outputs are written with server-side apply
(field manager ``consul-sd-operator``) so a rewrite is one idempotent request, and listed by the
``consul-sd.io/discovery`` label so a restarted operator finds what it wrote before. Errors come
back as :class:`KubeError` with the apiserver's status and message, or :class:`SecretNotFound`.
Secret values are returned to the caller and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from consul_sd.crd import GROUP, KIND, PLURAL, VERSION
from consul_sd.outputs import DISCOVERY_LABEL

logger = logging.getLogger(__name__)

FIELD_MANAGER = "consul-sd-operator"
SCRAPE_CONFIG_GROUP = "monitoring.coreos.com"
SCRAPE_CONFIG_VERSION = "v1alpha1"
SCRAPE_CONFIG_PLURAL = "scrapeconfigs"
_APPLY = "application/apply-patch+yaml"
_MERGE = "application/merge-patch+json"


class KubeError(Exception):
    """An apiserver answer other than success, with its HTTP status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class SecretNotFound(Exception):
    """A Secret or a key the spec names is missing; reported as reason SecretNotFound."""

    reason = "SecretNotFound"


@dataclass(frozen=True)
class DiscoveryRef:
    """The ConsulDiscovery an output or event belongs to."""

    namespace: str
    name: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
        }


def _describe(exc: ApiException) -> KubeError:
    message = exc.reason or ""
    try:
        body = json.loads(exc.body or "{}")
        message = body.get("message") or message
    except (ValueError, TypeError, AttributeError):
        pass
    return KubeError(f"HTTP {exc.status}: {message}"[:1000], status=int(exc.status or 0))


class Kube:
    """Async facade over the Kubernetes client for exactly what the operator does."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        return cls(k8s.ApiClient())

    async def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await asyncio.to_thread(function, *args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise _describe(exc) from None
        data = response.data
        return json.loads(data) if data else None

    # ---------------------------------------------------------------------------- Secrets

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str:
        try:
            secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                raise SecretNotFound(f"Secret {namespace}/{name} not found") from None
            raise
        encoded = (secret.get("data") or {}).get(key)
        if encoded is None:
            raise SecretNotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(encoded).decode()

    # ---------------------------------------------------------------------------- Outputs

    async def list_config_maps(self, *, namespace: str, discovery: str) -> list[dict[str, Any]]:
        result = await self._call(
            self._core.list_namespaced_config_map,
            namespace,
            label_selector=f"{DISCOVERY_LABEL}={discovery}",
        )
        return list(result.get("items", []))

    async def list_scrape_configs(self, *, namespace: str, discovery: str) -> list[dict[str, Any]]:
        try:
            result = await self._call(
                self._custom.list_namespaced_custom_object,
                SCRAPE_CONFIG_GROUP,
                SCRAPE_CONFIG_VERSION,
                namespace,
                SCRAPE_CONFIG_PLURAL,
                label_selector=f"{DISCOVERY_LABEL}={discovery}",
            )
        except KubeError as exc:
            if exc.status == 404:  # prometheus-operator's CRDs are not installed
                return []
            raise
        return list(result.get("items", []))

    async def apply_config_map(
        self,
        *,
        owner: DiscoveryRef,
        name: str,
        data: Mapping[str, str],
        labels: Mapping[str, str],
    ) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": owner.namespace,
                "labels": dict(labels),
                "ownerReferences": [owner.owner_reference()],
            },
            "data": dict(data),
        }
        await self._call(
            self._core.patch_namespaced_config_map,
            name,
            owner.namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=_APPLY,
        )

    async def apply_scrape_config(
        self,
        *,
        owner: DiscoveryRef,
        name: str,
        spec: Mapping[str, Any],
        labels: Mapping[str, str],
    ) -> None:
        body = {
            "apiVersion": f"{SCRAPE_CONFIG_GROUP}/{SCRAPE_CONFIG_VERSION}",
            "kind": "ScrapeConfig",
            "metadata": {
                "name": name,
                "namespace": owner.namespace,
                "labels": dict(labels),
                "ownerReferences": [owner.owner_reference()],
            },
            "spec": dict(spec),
        }
        await self._call(
            self._custom.patch_namespaced_custom_object,
            SCRAPE_CONFIG_GROUP,
            SCRAPE_CONFIG_VERSION,
            owner.namespace,
            SCRAPE_CONFIG_PLURAL,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=_APPLY,
        )

    async def delete_output(self, *, namespace: str, kind: str, name: str) -> None:
        try:
            if kind == "ConfigMap":
                await self._call(self._core.delete_namespaced_config_map, name, namespace)
            else:
                await self._call(
                    self._custom.delete_namespaced_custom_object,
                    SCRAPE_CONFIG_GROUP,
                    SCRAPE_CONFIG_VERSION,
                    namespace,
                    SCRAPE_CONFIG_PLURAL,
                    name,
                )
        except KubeError as exc:
            if exc.status != 404:
                raise

    # ----------------------------------------------------------------------- Status, events

    async def patch_status(self, *, ref: DiscoveryRef, status: Mapping[str, Any]) -> None:
        await self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            ref.namespace,
            PLURAL,
            ref.name,
            {"status": dict(status)},
            _content_type=_MERGE,
        )

    async def post_event(self, *, ref: DiscoveryRef, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event on the ConsulDiscovery; failures are logged, never raised."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": FIELD_MANAGER,
        }
        try:
            await self._call(self._core.create_namespaced_event, ref.namespace, body)
        except KubeError as exc:
            logger.warning(
                "could not post event %s on %s/%s: %s", reason, ref.namespace, ref.name, exc
            )
