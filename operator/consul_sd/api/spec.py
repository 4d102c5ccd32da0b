"""The ConsulDiscovery spec: the single source of truth for the CR, the CRD schema and the CLI.

Pydantic v2 models with the camelCase field names users write in YAML. ``deploy/crds/`` is
generated from these models (see ``crd``), and ``consul-sd discover --spec`` reads the same shape.
Rules a JSON schema can express (enums, minimums, duration patterns) live in field constraints so
they reach the CRD; rules it cannot (cross-field checks) are model validators, reported through
status by the operator. Validation messages name the field as users wrote it
(``spec.maxConcurrent: must be >= 1``); see :func:`describe_validation_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from consul_sd.api.durations import DURATION_PATTERN, parse_duration

MAX_WATCH_TIMEOUT = 600.0  # Consul caps a blocking wait at 10m.
# Below one second a CR turns into a request storm (1ms gave 878 requests/s to a 14-service
# fleet) for no fresher targets: Prometheus's own refresh floor is in seconds too.
MIN_REFRESH_INTERVAL = 1.0
# Below a minute a full read would be most of the load a quiet fleet puts on Consul.
MIN_RESYNC_INTERVAL = 60.0
# A CR's name is the value of labels on its outputs and metrics; label values stop at 63.
MAX_DISCOVERY_NAME = 63
# Durations shorter than 1s, for the CRD's CEL rule (RE2): every unit above ms zero, ms < 1000.
_BELOW_ONE_SECOND = r"^(0+y)?(0+w)?(0+d)?(0+h)?(0+m)?(0+s)?(0*[0-9]{1,3}ms)?$"
# Label names prometheus-operator accepts in staticConfigs labels and relabel targetLabel.
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# Kubernetes object names (RFC 1123 subdomain), leaving room for a "-NN" shard suffix.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, json_schema_extra={"x-consul-sd-duration": True}),
    AfterValidator(_check_duration),
]
ObjectName = Annotated[str, Field(min_length=1, max_length=240, pattern=OBJECT_NAME_PATTERN)]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(_Model):
    """A key of a Secret in the ConsulDiscovery's namespace."""

    name: ObjectName = Field(description="Secret name, in the ConsulDiscovery's namespace.")
    key: str = Field(min_length=1, description="Key of the Secret holding the value.")


class BasicAuthSecretRef(_Model):
    """HTTP basic auth for Consul from one Secret."""

    name: ObjectName = Field(description="Secret name, in the ConsulDiscovery's namespace.")
    username_key: str = Field(
        default="username", min_length=1, description="Key of the Secret holding the user name."
    )
    password_key: str = Field(
        default="password", min_length=1, description="Key of the Secret holding the password."
    )


class TLSConfig(_Model):
    """TLS to Consul. Without ``caSecretRef`` the system trust store verifies the server."""

    ca_secret_ref: SecretKeyRef | None = Field(
        default=None, description="PEM CA bundle that verifies Consul's certificate."
    )
    cert_secret_ref: SecretKeyRef | None = Field(
        default=None, description="PEM client certificate (with keySecretRef), for mTLS."
    )
    key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="PEM private key of the client certificate."
    )
    server_name: str = Field(
        default="",
        description="Name to verify the server certificate against; empty: the host of server.",
    )
    insecure_skip_verify: bool = Field(
        default=False, description="Do not verify the server certificate (testing only)."
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TLSConfig:
        if (self.cert_secret_ref is None) != (self.key_secret_ref is None):
            raise ValueError("certSecretRef and keySecretRef must be set together")
        return self


class ConsulConfig(_Model):
    """Where Consul is and how to talk to it (Prometheus's consul_sd client fields)."""

    server: str = Field(
        min_length=1,
        pattern=r"^(\[[0-9a-fA-F:.%a-zA-Z]+\]|[^:/\s\[\]]+)(:[0-9]{1,5})?$",
        description="host:port of a Consul agent or server, e.g. consul.consul.svc:8500.",
    )
    scheme: Literal["http", "https"] = Field(
        default="http", description="http, or https (TLS; see tls for the CA and a client cert)."
    )
    path_prefix: str = Field(
        default="",
        pattern=r"^(/[^?#\s]*)?$",
        description="Prefix of every API path, for Consul behind a reverse proxy.",
    )
    datacenter: str = Field(default="", description="Empty: the agent's own (/v1/agent/self).")
    namespace: str = Field(default="", description="Consul Enterprise namespace; sent when set.")
    partition: str = Field(default="", description="Consul Enterprise admin partition.")
    allow_stale: bool = Field(
        default=True,
        description="Let any Consul server answer (?stale), not only the leader: less load on "
        "the leader, and reads keep working without one.",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="The ACL token, sent as X-Consul-Token (never in URLs)."
    )
    basic_auth_secret_ref: BasicAuthSecretRef | None = Field(
        default=None, description="HTTP basic auth, for Consul behind a proxy that wants it."
    )
    tls: TLSConfig | None = Field(default=None, description="TLS settings for https.")

    @model_validator(mode="after")
    def _one_credential(self) -> ConsulConfig:
        if self.token_secret_ref is not None and self.basic_auth_secret_ref is not None:
            # Prometheus refuses the same combination: Consul reads only one of them.
            raise ValueError("tokenSecretRef and basicAuthSecretRef are mutually exclusive")
        return self


class Selector(_Model):
    """Which services and instances become targets (Prometheus's consul_sd filters)."""

    services: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Exact service names; empty means all."
    )
    tags: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="An instance must carry every one of these tags."
    )
    node_meta: dict[str, str] = Field(
        default_factory=dict,
        description="An instance's node must carry every one of these metadata key/value pairs "
        "(Prometheus's node_meta).",
    )
    filter: str = Field(default="", description="Consul filter expression for the catalog.")
    health_filter: str = Field(
        default="", description="Consul filter expression for /v1/health/service."
    )


class ConfigMapOutput(_Model):
    """file_sd JSON in ConfigMaps named ``<name>-<shard>``, one ``<name>-<shard>.json`` each."""

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=OBJECT_NAME_PATTERN)] = Field(
        description="Prefix of the ConfigMaps: <name>-0, <name>-1, ..."
    )
    max_shards: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Upper bound on shards; mount this many ConfigMaps with optional: true.",
    )
    max_shard_bytes: int = Field(
        default=512 * 1024,
        ge=16 * 1024,
        le=900 * 1024,
        description="Target size of one shard; ConfigMaps are limited to 1 MiB.",
    )


class RelabelConfig(_Model):
    """One relabeling rule, in prometheus-operator's RelabelConfig shape."""

    source_labels: list[Annotated[str, Field(pattern=LABEL_NAME_PATTERN)]] | None = Field(
        default=None, description="Labels whose values are joined and matched against regex."
    )
    separator: str | None = Field(default=None, description="Joins sourceLabels (default ;).")
    target_label: str | None = Field(default=None, description="Label the result is written to.")
    regex: str | None = Field(default=None, description="RE2, anchored (default (.*)).")
    modulus: int | None = Field(default=None, ge=0, description="Modulus for hashmod.")
    replacement: str | None = Field(default=None, description="Replacement (default $1).")
    action: (
        Literal[
            "replace",
            "Replace",
            "keep",
            "Keep",
            "drop",
            "Drop",
            "hashmod",
            "HashMod",
            "labelmap",
            "LabelMap",
            "labeldrop",
            "LabelDrop",
            "labelkeep",
            "LabelKeep",
            "lowercase",
            "Lowercase",
            "uppercase",
            "Uppercase",
            "keepequal",
            "KeepEqual",
            "dropequal",
            "DropEqual",
        ]
        | None
    ) = None


TargetsFrom = Literal["Static", "HTTPSD"]


class HTTPSDAuthorization(_Model):
    """The bearer token HTTP SD clients must send for this ConsulDiscovery's targets."""

    secret_ref: SecretKeyRef = Field(
        description="The token, in a Secret of the ConsulDiscovery's namespace; the generated "
        "ScrapeConfig references the same Secret."
    )


class HTTPSDOutput(_Model):
    """Serve this ConsulDiscovery's targets at ``<operator>/targets/<namespace>/<name>``."""

    authorization: HTTPSDAuthorization | None = Field(
        default=None,
        description="Require a bearer token; without it anyone who reaches the operator's port "
        "reads the fleet's addresses and metadata.",
    )
    refresh_interval: Duration = Field(
        default="30s",
        description="How often the generated ScrapeConfig asks Prometheus to fetch the targets. "
        "At least 1s.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"!self.matches('{_BELOW_ONE_SECOND}')", "message": "must be at least 1s"}
            ]
        },
    )

    @field_validator("refresh_interval")
    @classmethod
    def _refresh_at_least_one_second(cls, value: str) -> str:
        if parse_duration(value) < MIN_REFRESH_INTERVAL:
            raise ValueError("must be at least 1s")
        return value


class ScrapeConfigOutput(_Model):
    """Prometheus Operator ScrapeConfig objects: static targets, or one object using HTTP SD."""

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=OBJECT_NAME_PATTERN)] = Field(
        description="Static: prefix of the ScrapeConfigs <name>-0, <name>-1, ... "
        "HTTPSD: the name of the one ScrapeConfig."
    )
    targets_from: TargetsFrom = Field(
        default="Static",
        description="Static: the targets are written into the ScrapeConfigs, sharded; for small "
        "fleets (every target change reloads Prometheus's configuration). HTTPSD: one "
        "ScrapeConfig whose httpSDConfigs point at the operator, which serves the targets; what "
        "to use at scale (no reload on a target change, no size limit). Needs the operator's "
        "--http-sd-url.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels on the objects, for scrapeConfigSelector."
    )
    job_name: str | None = Field(
        default=None,
        min_length=1,
        description="ScrapeConfig jobName; empty: prometheus-operator names the job "
        "scrapeConfig/<namespace>/<object name>.",
    )
    scrape_interval: Duration | None = Field(
        default=None, description="Empty: the Prometheus's scrapeInterval."
    )
    scrape_timeout: Duration | None = Field(
        default=None, description="Empty: the Prometheus's scrapeTimeout."
    )
    metrics_path: str | None = Field(default=None, min_length=1, description="Empty: /metrics.")
    scheme: Literal["http", "https", "HTTP", "HTTPS"] | None = Field(
        default=None, description="Empty: http."
    )
    params: dict[str, list[str]] | None = Field(
        default=None, description="URL parameters sent with every scrape."
    )
    honor_labels: bool | None = Field(default=None, description="Prometheus's honor_labels.")
    honor_timestamps: bool | None = Field(
        default=None, description="Prometheus's honor_timestamps."
    )
    relabelings: list[RelabelConfig] = Field(
        default_factory=list,
        description="Target relabeling; the __meta_consul_* labels are available here.",
    )
    metric_relabelings: list[RelabelConfig] = Field(
        default_factory=list, description="Relabeling of scraped samples."
    )
    max_targets_per_object: int = Field(
        default=2000,
        ge=1,
        le=10000,
        description="Static: at most this many targets per ScrapeConfig object (each also stays "
        "under 1 MiB).",
    )


class Output(_Model):
    """Where the targets go; at least one of configMap, scrapeConfig and httpSD."""

    config_map: ConfigMapOutput | None = Field(
        default=None, description="file_sd JSON in ConfigMaps for a Prometheus that mounts them."
    )
    scrape_config: ScrapeConfigOutput | None = Field(
        default=None,
        description="Prometheus Operator ScrapeConfig objects: static targets (small fleets) or "
        "HTTP SD (at scale), see targetsFrom.",
    )
    http_sd: HTTPSDOutput | None = Field(
        default=None,
        alias="httpSD",
        description="Serve the targets as Prometheus HTTP SD from the operator at "
        "/targets/<namespace>/<name>; scrapeConfig.targetsFrom HTTPSD implies it (with these "
        "defaults when unset).",
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> Output:
        if self.config_map is None and self.scrape_config is None and self.http_sd is None:
            raise ValueError("set configMap, scrapeConfig or httpSD")
        return self

    @property
    def serves_http_sd(self) -> bool:
        """Whether the operator serves these targets at /targets/<namespace>/<name>."""
        uses = self.scrape_config is not None and self.scrape_config.targets_from == "HTTPSD"
        return self.http_sd is not None or uses

    @property
    def http_sd_settings(self) -> HTTPSDOutput:
        """``httpSD`` as set, or its defaults (scrapeConfig.targetsFrom HTTPSD without it)."""
        return self.http_sd if self.http_sd is not None else HTTPSDOutput()


Mode = Literal["Auto", "Polling", "Blocking"]


class ConsulDiscoverySpec(_Model):
    """What to discover, how, and where to write it."""

    consul: ConsulConfig
    selector: Selector = Field(default_factory=Selector)
    mode: Mode = Field(
        default="Auto",
        description="Auto: Blocking while every matched service can hold its own long-poll "
        "(at most maxConcurrent) when wakeOnChange is on, else below 1000; Polling above.",
    )
    refresh_interval: Duration = Field(
        default="30s",
        description="Polling: period between cycles. Blocking: minimum time between two "
        "queries of one watch, as in Prometheus. At least 1s.",
        # The same floor as the validator below, enforced by the apiserver on create/update.
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"!self.matches('{_BELOW_ONE_SECOND}')", "message": "must be at least 1s"}
            ]
        },
    )
    max_concurrent: int = Field(
        default=100,
        ge=1,
        le=5000,
        description="Polling: service requests in flight. Blocking: long-polls open.",
    )
    watch_timeout: Duration = Field(
        default="2m", description="Blocking query wait; Consul caps it at 10m."
    )
    wake_on_change: bool = Field(
        default=True,
        description="Polling: hold four long-polls on Consul's services, checks and nodes tables "
        "and run a cycle as soon as one moves, fetching only the services the change names; "
        "a change no table names (an instance's port, address, meta or tags edited) is read by "
        "a full cycle at most refreshInterval later. False: a cycle every refreshInterval.",
    )
    resync_interval: Duration = Field(
        default="10m",
        description="Every target is read again this often whatever Consul's indexes say "
        "(a Consul restarted without its data replays the same indexes with new content). "
        "At least 1m.",
    )
    tag_separator: str = Field(
        default=",",
        max_length=16,
        description="Joins an instance's tags into __meta_consul_tags (Prometheus's "
        "tag_separator); the value also starts and ends the joined string.",
    )
    output: Output | None = Field(default=None, description="Where the targets are written.")

    @field_validator("watch_timeout")
    @classmethod
    def _watch_timeout_in_range(cls, value: str) -> str:
        seconds = parse_duration(value)
        if seconds > MAX_WATCH_TIMEOUT:
            raise ValueError("must be at most 10m (Consul's limit)")
        if seconds < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("resync_interval")
    @classmethod
    def _resync_interval_at_least_one_minute(cls, value: str) -> str:
        if parse_duration(value) < MIN_RESYNC_INTERVAL:
            raise ValueError("must be at least 1m")
        return value

    @field_validator("refresh_interval")
    @classmethod
    def _refresh_interval_at_least_one_second(cls, value: str) -> str:
        if parse_duration(value) < MIN_REFRESH_INTERVAL:
            raise ValueError("must be at least 1s")
        return value

    @property
    def refresh_seconds(self) -> float:
        return parse_duration(self.refresh_interval)

    @property
    def watch_seconds(self) -> float:
        return parse_duration(self.watch_timeout)

    @property
    def resync_seconds(self) -> float:
        return parse_duration(self.resync_interval)


class SpecError(ValueError):
    """An invalid spec, with one message per problem, each naming the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_discovery_name(name: str) -> str | None:
    """The problem with a ConsulDiscovery's ``metadata.name``, or None when it can work.

    The apiserver accepts names up to 253 characters, but the name is the value of labels on
    every output object (and of metric labels), and label values stop at 63 characters.
    """
    if len(name) > MAX_DISCOVERY_NAME:
        return (
            f"metadata.name: {len(name)} characters, at most {MAX_DISCOVERY_NAME} "
            "(the name is a label value on the outputs)"
        )
    return None


def parse_spec(data: Mapping[str, Any], *, require_output: bool = False) -> ConsulDiscoverySpec:
    """Validate a spec mapping (as in a CR's ``spec``); :class:`SpecError` names every problem."""
    try:
        spec = ConsulDiscoverySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc)) from None
    if require_output and spec.output is None:
        raise SpecError(["spec.output: required (configMap, scrapeConfig or httpSD)"])
    return spec


def describe_validation_error(exc: ValidationError, *, prefix: str = "spec") -> list[str]:
    """Pydantic errors as ``spec.field.path: rule`` lines, in the YAML field names."""
    lines = []
    for error in exc.errors():
        path = ".".join([prefix, *(str(part) for part in error["loc"])])
        lines.append(f"{path}: {_describe_rule(error)}")
    return lines


def _describe_rule(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        if "@" in str(error["input"]):
            # user:password@host: the value may hold a credential, and status and events are
            # readable by more people than the spec's author.
            return (
                "credentials in an address are not supported and the value is not shown "
                "(use tokenSecretRef or basicAuth)"
            )
        if "([0-9]+)ms" in str(ctx.get("pattern", "")):
            return f"{error['input']!r} is not a duration like 30s, 5m or 1h30m"
        return f"{error['input']!r} does not match {ctx['pattern']}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]).lower()
