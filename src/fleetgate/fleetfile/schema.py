"""The fleet file's schema.

Every other layer takes a validated :class:`Fleet`; nothing downstream re-reads YAML.

The rendered scripts run on the owner's machines, so a value is refused here unless it is what
its field means: no string holds a control character (a newline would end the comment or line
it is written into), an address, user or path never starts with ``-`` (ssh and every other
command would read it as an option), and images, env var names, hostnames and paths have their
own shapes (:mod:`fleetgate.fleetfile.values`). Rendering still quotes every value for its
dialect; these rules are the first of two walls, not the only one.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetgate.fleetfile.envrefs import lone_env_ref
from fleetgate.fleetfile.gpus import Architecture, GpuModel, lookup_gpu
from fleetgate.fleetfile.values import (
    Address,
    EnvName,
    Executable,
    HostPath,
    ImageRef,
    ModelId,
    UserName,
    refuse_control_characters,
)

KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"]
Quantization = Literal["none", "awq", "gptq", "int8", "fp8", "bitsandbytes"]
Name = Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """Every string of the fleet file, in every model, list and mapping (keys too)."""
        return refuse_control_characters(value)


class Gpu(_Strict):
    """A GPU on a host: a catalog name, or explicit memory and architecture."""

    name: str | None = None
    memory_gib: Annotated[float, Field(gt=0)] | None = None
    arch: Architecture | None = None
    p2p: bool | None = Field(
        default=None, description="NVLink/PCIe peer-to-peer between GPUs; default: the catalog's"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve(self) -> Gpu:
        if self.name is not None and (self.memory_gib is None or self.arch is None):
            try:
                known = lookup_gpu(self.name)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None
            object.__setattr__(self, "memory_gib", self.memory_gib or known.memory_gib)
            object.__setattr__(self, "arch", self.arch or known.arch)
            if self.p2p is None:
                object.__setattr__(self, "p2p", known.p2p)
        if self.memory_gib is None or self.arch is None:
            raise ValueError("a GPU needs a catalog name, or both memory_gib and arch")
        return self

    @property
    def model(self) -> GpuModel:
        assert self.memory_gib is not None and self.arch is not None
        return GpuModel(
            name=self.name or f"{self.memory_gib:g} GiB {self.arch}",
            memory_gib=self.memory_gib,
            arch=self.arch,
            p2p=bool(self.p2p),
        )


class Ssh(_Strict):
    user: UserName | None = None
    port: Port = 22
    identity_file: HostPath | None = None


_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


class Wake(_Strict):
    """Wake-on-LAN: where the magic packet for the host's network card goes."""

    mac: str = Field(description="the network card's MAC, aa:bb:cc:dd:ee:ff")
    address: str = Field(
        default="255.255.255.255",
        description="a broadcast address (of the host's subnet) or the host's unicast address",
    )
    port: Port = 9

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        if not _MAC.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a MAC address: write six two-digit hex bytes, "
                "e.g. 3c:7c:3f:1e:22:b0 (or with '-', or none)"
            )
        digits = value.replace(":", "").replace("-", "").lower()
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))

    @field_validator("address")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
            raise ValueError(
                f"{value!r} is not an IPv4 address: Wake-on-LAN needs a broadcast address "
                "like 192.168.1.255 or the host's own address"
            )
        return value


class Host(_Strict):
    """A machine: where it is, how to reach it, what GPUs it has, how it wakes and sleeps."""

    address: Address = "127.0.0.1"
    os: Literal["linux", "windows"] = "linux"
    transport: Literal["local", "ssh"] = "ssh"
    ssh: Ssh = Ssh()
    workdir: HostPath | None = Field(
        default=None, description="where releases live on the host; default ~/fleetgate"
    )
    fleetgate_bin: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9._+@/\-]+$",
        description="absolute path of the fleetgate executable on the host; default: "
        "/usr/local/bin/fleetgate in the gateway's systemd unit, the PATH's in its script",
    )
    gpus: list[Gpu] = []
    desktop_reserve_gib: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="GPU memory (GiB) the host's desktop and other apps hold before vLLM starts; "
        "vLLM's start-up check needs total x gpu_memory_utilization free. Default: 1.0 on "
        "Windows (a desktop holds 0.3-1.5), none on Linux",
    )
    ram_gib: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="host RAM; checks that sleeping models' weights fit in it"
    )
    default: Name | None = Field(
        default=None, description="the deployment to bring back when the host's GPU is idle"
    )
    wake: Wake | None = None
    wake_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    suspend_after_idle_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="suspend the host (over its transport) after this long with nothing running",
    )


class Deployment(_Strict):
    """One vLLM server."""

    host: Name
    port: Port = 8000
    model: ModelId = Field(description="Hugging Face id")
    model_path: HostPath | None = Field(default=None, description="a local model directory")
    quantization: Quantization | None = Field(
        default=None, description="None: detected from the model id (AWQ, GPTQ, ...)"
    )
    served_model_name: Name | None = None
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    max_num_seqs: Annotated[int, Field(ge=1)] | None = None
    kv_cache_dtype: KvCacheDtype = "auto"
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    enforce_eager: bool = False
    max_num_batched_tokens: Annotated[int, Field(ge=16)] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    extra_args: list[str] = []
    env: dict[EnvName, str] = {}
    image: ImageRef = "vllm/vllm-openai:v0.32.0"
    runtime: Literal["docker", "process"] = "docker"
    python: Executable | None = Field(
        default=None,
        description="runtime: process: the python that has vLLM installed; default python3",
    )
    hf_cache: HostPath | None = Field(default=None, description="default ~/.cache/huggingface")
    gpu: Annotated[int, Field(ge=0)] = Field(
        default=0, description="index of the (first) GPU in the host's gpus: it runs on"
    )
    on_demand: bool = Field(
        default=False, description="started (or woken) when a request needs it, stopped when idle"
    )
    idle_stop_s: Annotated[float, Field(gt=0)] = 600.0
    load_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    swap: Literal["restart", "sleep"] = "restart"

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if ":" not in value.rsplit("/", 1)[-1] or value.endswith(":latest"):
            raise ValueError(f"pin the image tag (e.g. vllm/vllm-openai:v0.32.0), not {value!r}")
        return value

    def public_name(self, key: str) -> str:
        return self.served_model_name or key


class Limits(_Strict):
    """What a route (or a profile of it) allows."""

    max_input_tokens: Annotated[int, Field(ge=1)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    concurrency: Annotated[int, Field(ge=1)] | None = None
    queue_depth: Annotated[int, Field(ge=0)] | None = None
    queue_wait_s: Annotated[float, Field(gt=0)] | None = None
    load_wait_s: Annotated[float, Field(gt=0)] | None = None
    clamp_max_tokens: bool | None = None


# What every route starts from; ``gateway.defaults`` overrides it field by field.
DEFAULT_LIMITS = Limits(
    queue_depth=16, queue_wait_s=30.0, load_wait_s=180.0, clamp_max_tokens=False
)


def merge_limits(*layers: Limits) -> Limits:
    """Later layers win field by field where they set a value."""
    merged: dict[str, object] = {}
    for layer in layers:
        merged.update({k: v for k in Limits.model_fields if (v := getattr(layer, k)) is not None})
    return Limits.model_validate(merged)


class Route(Limits):
    """A public model name pointing at one or more deployments."""

    deployments: list[Name] = Field(min_length=1)
    routing: Literal["least_outstanding", "ordered"] = "least_outstanding"
    profiles: dict[Name, Limits] = {}


# A key's priority class: higher is served first. The two names are the usual classes; a small
# integer places a key between or around them.
PRIORITY_CLASSES = {"interactive": 10, "batch": 0}
Priority = Literal["interactive", "batch"] | Annotated[int, Field(ge=0, le=100)]
PERIODS = ("day", "week", "month")


def priority_value(priority: Priority) -> int:
    """The number a priority class stands for (``interactive`` 10, ``batch`` 0)."""
    return PRIORITY_CLASSES[priority] if isinstance(priority, str) else priority


class Budgets(_Strict):
    """What a key may spend per calendar day, week (from Monday) and month, in the gateway's
    time zone; tokens are prompt + completion as the backend reports them."""

    tokens_per_day: Annotated[int, Field(ge=1)] | None = None
    tokens_per_week: Annotated[int, Field(ge=1)] | None = None
    tokens_per_month: Annotated[int, Field(ge=1)] | None = None
    requests_per_day: Annotated[int, Field(ge=1)] | None = None
    requests_per_week: Annotated[int, Field(ge=1)] | None = None
    requests_per_month: Annotated[int, Field(ge=1)] | None = None

    def limits(self) -> list[tuple[str, str, int]]:
        """Each budget that is set, as (``tokens`` or ``requests``, period, allowed)."""
        return [
            (unit, period, value)
            for unit in ("tokens", "requests")
            for period in PERIODS
            if (value := getattr(self, f"{unit}_per_{period}")) is not None
        ]


class KeySpec(_Strict):
    """What a client key may use and spend (a key of the fleet file, or one made at run time
    with ``fleetgate keys create``)."""

    name: Name
    routes: list[str] = ["*"]
    priority: Priority = "interactive"
    max_concurrency: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="requests of this key in flight at once; more wait in the queue"
    )
    budgets: Budgets = Budgets()


class ApiKey(KeySpec):
    key: str = Field(min_length=1, repr=False)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        # a ${VAR} left as written (loading without secrets, for plan) is not a key to judge
        if len(value) < 8 and lone_env_ref(value) is None:
            raise ValueError("an API key needs at least 8 characters")
        return value

    def allows(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes


class HealthCheck(_Strict):
    interval_s: Annotated[float, Field(gt=0)] = 5.0
    timeout_s: Annotated[float, Field(gt=0)] = 2.0
    unhealthy_after: Annotated[int, Field(ge=1)] = 2


class Gateway(_Strict):
    """The OpenAI-compatible gateway in front of the deployments."""

    host: Name = Field(description="the host (from hosts:) that runs the gateway")
    listen: Address = "0.0.0.0"
    port: Port = 4000
    api_keys: list[ApiKey] = []
    admin_key: str | None = Field(default=None, repr=False)
    metrics_key: str | None = Field(
        default=None,
        repr=False,
        description="if set, /metrics and /health/ready need it (Bearer); else they are open",
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_buffered_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=256 * 1024 * 1024,
        description="request bodies held at once, all requests together; past it 503",
    )
    header_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0, description="a connection without a complete request head is closed"
    )
    body_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="a request body not received within this gets 408"
    )
    max_connections: Annotated[int, Field(ge=1)] = Field(
        default=1024, description="open client connections at once; past it 503 and closed"
    )
    drain_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="on SIGTERM, how long requests in progress may finish"
    )
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    request_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    max_response_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=32 * 1024 * 1024, description="a longer non-streamed backend answer gets 502"
    )
    health: HealthCheck = HealthCheck()
    redis_url: str | None = Field(default=None, description="share RPM/TPM between replicas")
    cors_origins: list[str] = Field(
        default=[], description="browser origins allowed to call the gateway ('*' for any)"
    )
    store: str | None = Field(
        default=None,
        repr=False,
        description="keys created at run time and usage: a SQLite file path, or a "
        "postgresql:// DSN shared by several gateways; default: in memory",
    )
    timezone: str = Field(default="UTC", description="where budget days, weeks and months begin")
    defaults: Limits = DEFAULT_LIMITS
    routes: dict[Name, Route] = {}
    aliases: dict[Name, Name] = {}

    @property
    def stop_timeout_s(self) -> int:
        """How long a supervisor waits after SIGTERM before it kills the gateway: the drain
        deadline, plus time for the requests it ended to say so and for the process to exit."""
        return math.ceil(self.drain_timeout_s) + 15

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        """An origin is scheme://host[:port], as a browser sends it: no path, no slash."""
        for origin in value:
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (
                not sep or scheme not in ("http", "https") or not rest or "/" in rest
            ):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port] "
                    "(e.g. https://chat.example.org) or '*'"
                )
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
            ) from None
        return value

    @field_validator("defaults")
    @classmethod
    def _over_builtin(cls, value: Limits) -> Limits:
        """``defaults: {rpm: 100}`` sets rpm and keeps the built-in queue and clamp."""
        return merge_limits(DEFAULT_LIMITS, value)


class Fleet(_Strict):
    """The whole fleet: hosts, the vLLM deployments on them, and the gateway."""

    version: Literal[1] = 1
    name: str = "fleet"
    hosts: dict[Name, Host]
    deployments: dict[Name, Deployment] = {}
    gateway: Gateway | None = None
