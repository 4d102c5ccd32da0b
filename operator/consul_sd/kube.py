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
from typing import Any, Literal, Protocol

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from consul_sd.api.names import (
    DISCOVERY_LABEL,
    GROUP,
    KIND,
    OPERATOR_NAME,
    PLURAL,
    SCRAPE_CONFIG_GROUP,
    SCRAPE_CONFIG_PLURAL,
    SCRAPE_CONFIG_VERSION,
    VERSION,
)

logger = logging.getLogger(__name__)

_APPLY = "application/apply-patch+yaml"
# (connect, read) seconds for every apiserver request; a read waits at most this long per chunk.
REQUEST_TIMEOUT = (5.0, 30.0)
_MERGE = "application/merge-patch+json"


class KubeError(Exception):
    """An apiserver answer other than success, with its HTTP status."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class SecretNotFound(Exception):
    """A Secret or a key the spec names is missing; reported as reason SecretNotFound."""

    reason = "SecretNotFound"


class SecretInvalid(Exception):
    """A Secret value that cannot be what the spec uses it as; its message never holds it."""

    reason = "SecretInvalid"


def decode_secret_value(encoded: str, *, where: str) -> str:
    """A Secret's base64 value as UTF-8 text; the error names the position, never a byte."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise SecretInvalid(f"{where} is not valid base64") from None
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise SecretInvalid(f"{where} is not UTF-8 text (byte {exc.start})") from None


def output_body(
    *,
    owner: DiscoveryRef,
    kind: OutputKind,
    name: str,
    labels: Mapping[str, str],
    payload: Mapping[str, Any],
) -> dict[str, Any]:
    """A ConfigMap (``payload``: its data) or ScrapeConfig (its spec) owned by ``owner``."""
    api_version = "v1" if kind == "ConfigMap" else f"{SCRAPE_CONFIG_GROUP}/{SCRAPE_CONFIG_VERSION}"
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": dict(labels),
            "ownerReferences": [owner.owner_reference()],
        },
        "data" if kind == "ConfigMap" else "spec": dict(payload),
    }


def owner_uid(item: Mapping[str, Any]) -> str | None:
    """The uid of the object's controlling ConsulDiscovery, if a ConsulDiscovery controls it."""
    for reference in (item.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller") and reference.get("kind") == KIND:
            uid = reference.get("uid")
            return uid if isinstance(uid, str) else None
    return None


OutputKind = Literal["ConfigMap", "ScrapeConfig"]


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
        """One API request, bounded by :data:`REQUEST_TIMEOUT` (connect, read) on its socket.

        A partition that stops forwarding without closing the connection ends in a timeout,
        never a call that hangs forever.
        """

        def request() -> Any:
            # The body is read here too, in the worker thread: a body that stalls must never
            # block the event loop (every CR's loop and kopf's share it).
            response = function(
                *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
            )
            return response.data

        try:
            data = await asyncio.to_thread(request)
        except ApiException as exc:
            raise _describe(exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"apiserver unreachable: {type(exc).__name__}", status=0) from None
        return json.loads(data) if data else None

    # ---------------------------------------------------------------------------- Secrets

    async def read_secret_value(self, *, namespace: str, name: str, key: str) -> str:
        """One key of a Secret as text; :class:`SecretInvalid` if it is not UTF-8."""
        try:
            secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        except KubeError as exc:
            if exc.status == 404:
                raise SecretNotFound(f"Secret {namespace}/{name} not found") from None
            raise
        encoded = (secret.get("data") or {}).get(key)
        if encoded is None:
            raise SecretNotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return decode_secret_value(encoded, where=f"Secret {namespace}/{name} key {key!r}")

    # ---------------------------------------------------------------------------- Outputs

    def _output_api(self, kind: OutputKind) -> _OutputAPI:
        if kind == "ConfigMap":
            return _ConfigMapAPI(self._core)
        return _ScrapeConfigAPI(self._custom)

    async def list_outputs(
        self, *, namespace: str, kind: OutputKind, discovery: str
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` labelled as this discovery's (the caller checks ownership)."""
        try:
            result = await self._call(
                self._output_api(kind).list,
                namespace,
                label_selector=f"{DISCOVERY_LABEL}={discovery}",
            )
        except KubeError as exc:
            if exc.status == 404 and kind == "ScrapeConfig":  # prometheus-operator not installed
                return []
            raise
        return list(result.get("items", []))

    async def read_output(self, *, namespace: str, kind: OutputKind, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self._output_api(kind).read, name, namespace)
        return result

    async def create_output(
        self,
        *,
        owner: DiscoveryRef,
        kind: OutputKind,
        name: str,
        labels: Mapping[str, str],
        payload: Mapping[str, Any],
    ) -> str:
        """Create a new object; a 409 :class:`KubeError` if the name is taken. Returns its uid."""
        body = output_body(owner=owner, kind=kind, name=name, labels=labels, payload=payload)
        created = await self._call(self._output_api(kind).create, owner.namespace, body)
        return str(created["metadata"]["uid"])

    async def apply_output(
        self,
        *,
        owner: DiscoveryRef,
        kind: OutputKind,
        name: str,
        labels: Mapping[str, str],
        payload: Mapping[str, Any],
        uid: str | None = None,
    ) -> str:
        """Server-side apply of an object this discovery owns. Returns its uid.

        ``uid``: the object written before. The apiserver then refuses to write another
        (a 422 "metadata.uid ... immutable" for a namesake, a 409 when it is gone).
        """
        body = output_body(owner=owner, kind=kind, name=name, labels=labels, payload=payload)
        if uid is not None:
            body["metadata"]["uid"] = uid
        applied = await self._call(
            self._output_api(kind).patch,
            name,
            owner.namespace,
            body,
            field_manager=OPERATOR_NAME,
            force=True,
            _content_type=_APPLY,
        )
        return str(applied["metadata"]["uid"])

    async def delete_output(self, *, namespace: str, kind: OutputKind, name: str, uid: str) -> None:
        """Delete the object with this uid only (a precondition): never a namesake."""
        options = {"preconditions": {"uid": uid}}
        try:
            await self._call(self._output_api(kind).delete, name, namespace, body=options)
        except KubeError as exc:
            # 404: already gone; 409: the name now belongs to another object, left alone.
            if exc.status not in (404, 409):
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
            "source": {"component": OPERATOR_NAME},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": OPERATOR_NAME,
        }
        try:
            await self._call(self._core.create_namespaced_event, ref.namespace, body)
        except KubeError as exc:
            logger.warning(
                "could not post event %s on %s/%s: %s", reason, ref.namespace, ref.name, exc
            )


class _OutputAPI(Protocol):
    """The list/read/create/patch/delete calls of one output kind, with namespaced arguments."""

    def list(self, namespace: str, **kwargs: Any) -> Any: ...
    def read(self, name: str, namespace: str, **kwargs: Any) -> Any: ...
    def create(self, namespace: str, body: Any, **kwargs: Any) -> Any: ...
    def patch(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any: ...
    def delete(self, name: str, namespace: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class _ConfigMapAPI:
    core: Any

    def list(self, namespace: str, **kwargs: Any) -> Any:
        return self.core.list_namespaced_config_map(namespace, **kwargs)

    def read(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self.core.read_namespaced_config_map(name, namespace, **kwargs)

    def create(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self.core.create_namespaced_config_map(namespace, body, **kwargs)

    def patch(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self.core.patch_namespaced_config_map(name, namespace, body, **kwargs)

    def delete(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self.core.delete_namespaced_config_map(name, namespace, **kwargs)


@dataclass(frozen=True)
class _ScrapeConfigAPI:
    custom: Any

    def _where(self, namespace: str) -> tuple[str, str, str, str]:
        return (SCRAPE_CONFIG_GROUP, SCRAPE_CONFIG_VERSION, namespace, SCRAPE_CONFIG_PLURAL)

    def list(self, namespace: str, **kwargs: Any) -> Any:
        return self.custom.list_namespaced_custom_object(*self._where(namespace), **kwargs)

    def read(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self.custom.get_namespaced_custom_object(*self._where(namespace), name, **kwargs)

    def create(self, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self.custom.create_namespaced_custom_object(*self._where(namespace), body, **kwargs)

    def patch(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        return self.custom.patch_namespaced_custom_object(
            *self._where(namespace), name, body, **kwargs
        )

    def delete(self, name: str, namespace: str, **kwargs: Any) -> Any:
        return self.custom.delete_namespaced_custom_object(*self._where(namespace), name, **kwargs)
