"""The ConsulDiscovery status model and its condition vocabulary.

Kept apart from the spec so the CRD generator can publish its schema, and so the status the
operator writes (:mod:`consul_sd.controller.reporting` builds it from these models) is checked
by the same model the CRD declares. The condition rule is :mod:`consul_sd.controller.conditions`.
Reasons are CamelCase words users can search the troubleshooting guide for; messages say what
to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ConditionType = Literal["Ready", "Degraded", "Progressing"]

# Reasons used across the operator; ConsulError subclasses carry the Consul-side ones.
REASON_SYNCED = "Synced"
REASON_FIRST_SYNC = "FirstSyncPending"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_SECRET_NOT_FOUND = "SecretNotFound"
REASON_OUTPUT_TOO_LARGE = "OutputTooLarge"
REASON_OUTPUT_WRITE_FAILED = "OutputWriteFailed"
REASON_OUTPUT_CONFLICT = "OutputConflict"
REASON_SECRET_INVALID = "SecretInvalid"
REASON_KUBERNETES_ERROR = "KubernetesError"
REASON_INTERNAL_ERROR = "InternalError"
REASON_SERVICES_FAILING = "ServicesFailing"
REASON_HEALTHY = "Healthy"
# The spec asks for HTTP SD and this operator cannot serve it (no --http-sd-url, no server).
REASON_HTTP_SD_UNAVAILABLE = "HTTPSDUnavailable"


@dataclass(frozen=True)
class Problem:
    """A status reason and its one-line message: what a condition and a Warning event carry."""

    reason: str
    message: str


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Condition(_Model):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class OutputRef(_Model):
    kind: Literal["ConfigMap", "ScrapeConfig"]
    name: str
    targets: int = 0
    bytes: int = 0


class ConsulDiscoveryStatus(_Model):
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Degraded and Progressing."
    )
    reason: str | None = Field(
        default=None,
        description="One word for kubectl's Status column: the Degraded reason while degraded, "
        "else the Ready reason (Synced, or FirstSyncPending).",
    )
    mode: Literal["Polling", "Blocking"] | None = Field(
        default=None,
        description="The mode in effect; absent while Auto has not chosen one yet.",
    )
    services: int | None = Field(default=None, description="Services matched by the selector.")
    targets: int | None = Field(default=None, description="Targets written to the outputs.")
    failed_services: int | None = Field(
        default=None,
        description="Services whose last query failed (they keep their previous targets).",
    )
    last_sync_time: str | None = Field(
        default=None, description="When a complete snapshot was last published (RFC 3339)."
    )
    last_sync_duration: str | None = Field(
        default=None, description="How long the discovery behind the last snapshot took."
    )
    consul_requests: int | None = Field(
        default=None, description="Consul requests since the previous publication."
    )
    outputs: list[OutputRef] = Field(
        default_factory=list,
        description="The objects written: kind, name, targets and bytes of each.",
    )
