"""What a probe aims at: a gateway URL with its public models and their limits.

From a URL the limits come from the gateway's ``GET /v1/models``; from a fleet file they come
from the file itself (and the gateway's address from its ``gateway:`` section), which also
names each model's backends for token counting when the gateway offers no ``/tokenize``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import Fleet, deployment_url, gateway_url, has_env_refs, public_models
from fleetgate.probes.http import ApiClient, Reply


@dataclass(frozen=True)
class ProbeBackend:
    """A deployment behind a model, as reachable from here (for direct token counts)."""

    name: str
    url: str
    served_model: str
    max_model_len: int | None


@dataclass(frozen=True)
class ModelUnderTest:
    """A public model name with the limits it is expected to enforce."""

    name: str
    kind: str = "route"  # route | profile | alias
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_model_len: int | None = None  # what the fleet file (or gateway) plans
    clamp_max_tokens: bool = False
    backends: tuple[ProbeBackend, ...] = ()


KINDS = ("route", "profile", "alias")


class TargetError(FleetgateError):
    """The probe's target cannot be used: it will not say what it serves."""


class Unreachable(TargetError):
    """Nothing answers HTTP at the target's URL (refused, no such host, timeout)."""


@dataclass
class Target:
    url: str
    api_key: str | None = None
    models: list[ModelUnderTest] = field(default_factory=list)
    # every name a request may use (aliases and look-alike profiles too), as listed or planned
    served: list[str] = field(default_factory=list)

    def unknown(self, names: list[str]) -> list[str]:
        """Those of ``names`` the target does not serve."""
        known = set(self.served) | {m.name for m in self.models}
        return [n for n in names if n not in known]

    def model(self, name: str) -> ModelUnderTest:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"{name!r} is not a model of {self.url}")


def _extension(card: dict[str, Any]) -> dict[str, Any] | None:
    """fleetgate's own facts on a gateway's card (kind, target, limits); None from a bare vLLM."""
    ext = card.get("fleetgate")
    return ext if isinstance(ext, dict) and ext.get("kind") in KINDS else None


def _int(card: dict[str, Any], *names: str) -> int | None:
    """The first integer field among ``names``: fleetgate's limits first, then the card's own
    (and a nested ``limits`` object)."""
    ext = _extension(card) or {}
    for where in (ext.get("limits"), card, card.get("limits")):
        if not isinstance(where, dict):
            continue
        for name in names:
            value = where.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def models_from_listing(body: Any) -> list[ModelUnderTest]:
    """Parse a ``/v1/models`` answer (the gateway's, or a bare vLLM's).

    fleetgate's cards say what each name is (route, profile, alias) and its limits: every one
    is kept, as from the fleet file. A card without them (another server) whose ``root`` names
    another card is taken for a profile, and dropped when its limits equal one already listed
    for that root (an alias, most likely: nothing new to test).
    """
    cards = body.get("data", []) if isinstance(body, dict) else []
    ids = {c.get("id") for c in cards if isinstance(c, dict)}
    out: list[ModelUnderTest] = []
    seen: set[tuple[object, ...]] = set()
    for card in cards:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            continue
        ext = _extension(card)
        limits = (ext or card).get("limits")
        if not isinstance(limits, dict):
            limits = {}
        root = card.get("root")
        if ext is not None:
            kind = ext["kind"]
        else:
            is_profile = isinstance(root, str) and root != card["id"] and root in ids
            kind = "profile" if is_profile else "route"
        clamp = card.get("clamp_max_tokens") or limits.get("clamp_max_tokens")
        model = ModelUnderTest(
            name=card["id"],
            kind=str(kind),
            max_input_tokens=_int(card, "max_input_tokens"),
            max_output_tokens=_int(card, "max_output_tokens"),
            max_model_len=_int(card, "max_model_len"),
            clamp_max_tokens=bool(clamp),
        )
        if ext is None:
            same = (
                root if kind != "route" else card["id"],
                model.max_input_tokens,
                model.max_output_tokens,
                model.max_model_len,
                model.clamp_max_tokens,
            )
            if same in seen:
                continue
            seen.add(same)
        out.append(model)
    return out


def _ids(body: Any) -> list[str]:
    cards = body.get("data", []) if isinstance(body, dict) else []
    return [c["id"] for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str)]


async def _listing(url: str, api_key: str | None) -> Reply:
    async with ApiClient(url, api_key, timeout_s=30) as api:
        reply = await api.models()
    if reply.transport_error:
        raise Unreachable(f"cannot reach {url}: {reply.summary()}")
    return reply


async def target_from_url(url: str, api_key: str | None = None) -> Target:
    """Ask the gateway which models it serves; raises :class:`Unreachable` when nothing
    answers, :class:`TargetError` when it will not list its models."""
    url = url.rstrip("/")
    reply = await _listing(url, api_key)
    if not reply.ok:
        raise TargetError(f"GET {url}/v1/models answered {reply.summary()}")
    return Target(url, api_key, models_from_listing(reply.body), _ids(reply.body))


async def confirm_served(target: Target) -> Target:
    """Ask the target (a fleet file's gateway) what it serves: ``served`` becomes its listing
    when it gives one. Raises :class:`Unreachable` when nothing answers."""
    reply = await _listing(target.url, target.api_key)
    if reply.ok and _ids(reply.body):
        target.served = _ids(reply.body)
    return target


def target_from_fleet(fleet: Fleet, url: str | None = None, api_key: str | None = None) -> Target:
    """Every public model of the fleet with the limits the file sets.

    ``url`` overrides the gateway address (a local fleet from ``fleetgate up``). The key is
    ``api_key``, else the fleet's first API key when its ``${VAR}`` resolved.
    """
    if api_key is None and fleet.gateway is not None:
        keys = [k.key for k in fleet.gateway.api_keys if not has_env_refs(k.key)]
        api_key = keys[0] if keys else None
    models = []
    for pm in public_models(fleet).values():
        backends = []
        for dep_name in pm.deployments:
            dep = fleet.deployments[dep_name]
            backends.append(
                ProbeBackend(
                    dep_name,
                    deployment_url(fleet, dep_name),
                    dep.public_name(dep_name),
                    dep.max_model_len,
                )
            )
        models.append(
            ModelUnderTest(
                name=pm.name,
                kind=pm.kind,
                max_input_tokens=pm.limits.max_input_tokens,
                max_output_tokens=pm.limits.max_output_tokens,
                max_model_len=pm.max_model_len,
                clamp_max_tokens=pm.limits.clamp_max_tokens,
                backends=tuple(backends),
            )
        )
    served = list(public_models(fleet))
    return Target((url or gateway_url(fleet)).rstrip("/"), api_key, models, served)
