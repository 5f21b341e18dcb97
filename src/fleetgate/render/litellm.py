"""The fleet's routes as a LiteLLM proxy config, for people who keep LiteLLM in front.

Same public names, aliases, limits and retries as the fleetgate gateway, as far as LiteLLM can
say them. What it cannot:

- Profiles sharing one slot pool. LiteLLM caps ``max_parallel_requests`` per model_list entry
  (one semaphore per entry), and a public name is either its own entries or a
  ``model_group_alias`` of another name's entries. So a profile whose exported limits equal its
  route's becomes an alias of the route (same entries: the slots are shared, and so are rpm/tpm,
  which fleetgate counts per profile). A profile with limits of its own needs entries of its
  own, and then each deployment's slots are split between the entries that use it: the route
  can no longer borrow a slot the idle profile holds. Were each entry given the route's
  concurrency, LiteLLM would send twice the backend's slots.
- Per-key route restrictions (``api_keys[].routes``) and more than one key: a config file has
  only the ``master_key`` (allowed every model); per-key model lists are LiteLLM virtual keys,
  made through its API with a database.
- fleetgate's queue (``queue_depth``, ``queue_wait_s``).

And what LiteLLM enforces differently, said per public name in the export's header
(:func:`_differences`): LiteLLM has no per-deployment cap on max_tokens (``model_info``'s
``max_output_tokens`` is information, not a limit, and ``litellm_params`` values are defaults
a request overrides), so an output limit would need a proxy pre-call hook
(``async_pre_call_hook``), Python code this export does not write; it counts input with its own
tokenizer for ``enable_pre_call_checks`` (not the backend's chat template); and a full slot
pool is an immediate 429 without Retry-After instead of a place in a queue.
"""

from __future__ import annotations

from typing import Any

import yaml

from fleetgate.fleetfile import (
    PublicModel,
    deployment_slots,
    deployment_url,
    lone_env_ref,
    public_models,
    require_gateway,
)
from fleetgate.render.source import Source, gateway_hash, header

# Limits a LiteLLM entry carries besides max_parallel_requests.
_EXPORTED = ("rpm", "tpm", "max_input_tokens", "max_output_tokens")


def _secret(value: str | None) -> str | None:
    """LiteLLM reads secrets as ``os.environ/VAR``; only a lone ``${VAR}`` maps onto that."""
    name = lone_env_ref(value) if value else None
    return f"os.environ/{name}" if name else None


def _exported(public: PublicModel) -> tuple[object, ...]:
    return tuple(getattr(public.limits, key) for key in _EXPORTED)


def _lanes(
    models: dict[str, PublicModel], slots: dict[str, int]
) -> tuple[list[PublicModel], list[str]]:
    """The public names that get entries of their own (routes first), and notes on the rest.

    A profile is an alias of its route when its exported limits are the route's, or when a
    deployment has too few slots to give it one of its own.
    """
    notes: list[str] = []
    lanes = [m for m in models.values() if m.kind == "route"]
    for public in models.values():
        if public.kind != "profile":
            continue
        if _exported(public) == _exported(models[public.route]):
            notes.append(
                f"{public.name}: alias of {public.route} (same limits; queue not exported)"
            )
            continue
        users = {d: sum(d in m.deployments for m in lanes) for d in public.deployments}
        if any(d in slots and users[d] >= slots[d] for d in public.deployments):
            notes.append(
                f"{public.name}: alias of {public.route}, whose slots cannot be split further; "
                "its own rpm, tpm and token limits are NOT exported"
            )
            continue
        lanes.append(public)
    return lanes, notes


def _shares(lanes: list[PublicModel], slots: dict[str, int]) -> dict[tuple[str, str], int]:
    """max_parallel_requests of each (public name, deployment) entry: the deployment's slots
    split between its entries, routes first, never above the name's own concurrency."""
    shares: dict[tuple[str, str], int] = {}
    for dep, total in slots.items():
        users = [m for m in lanes if dep in m.deployments]
        for i, public in enumerate(users):
            share = total // len(users) + (1 if i < total % len(users) else 0)
            if public.limits.concurrency is not None:
                share = min(share, public.limits.concurrency)
            shares[(public.name, dep)] = max(share, 1)  # only routes outnumbering slots get 1
    return shares


def _differences(public: PublicModel) -> list[str]:
    """Where LiteLLM, given this export, behaves differently from fleetgate for ``public``."""
    lim = public.limits
    said: list[str] = []
    if lim.max_output_tokens is not None:
        said.append(
            f"max_output_tokens {lim.max_output_tokens} is NOT enforced (no per-deployment "
            "max_tokens cap; it would take a pre-call hook): longer answers come back"
        )
    if lim.max_input_tokens is not None:
        said.append(
            f"max_input_tokens {lim.max_input_tokens} is checked with LiteLLM's own tokenizer, "
            "not the backend's count with its chat template: the edge moves by some tokens"
        )
    said.append(
        "a request finding every slot busy gets an immediate 429 without Retry-After, where "
        f"fleetgate queues up to {lim.queue_depth} for {lim.queue_wait_s:g} s"
    )
    return [f"{public.name}: {line}" for line in said]


def render_litellm(source: Source) -> str:
    fleet = source.fleet
    gw = require_gateway(fleet)
    models = public_models(fleet)
    slots = deployment_slots(fleet)
    lanes, notes = _lanes(models, slots)
    shares = _shares(lanes, slots)
    for slotted, total in slots.items():
        given = sum(n for (_, d), n in shares.items() if d == slotted)
        if given > total:
            notes.append(f"{slotted}: more routes than its {total} slots; LiteLLM may send {given}")
    own = {m.name for m in lanes}
    model_list: list[dict[str, Any]] = []
    for public in lanes:
        limits = public.limits
        for name in public.deployments:
            dep = fleet.deployments[name]
            params: dict[str, Any] = {
                "model": f"hosted_vllm/{dep.public_name(name)}",
                "api_base": deployment_url(fleet, name) + "/v1",
                "timeout": gw.request_timeout_s,
            }
            for key, value in (
                ("rpm", limits.rpm),
                ("tpm", limits.tpm),
                ("max_parallel_requests", shares.get((public.name, name))),
            ):
                if value is not None:
                    params[key] = value
            info: dict[str, Any] = {"id": f"{public.name}@{name}"}
            max_input = limits.max_input_tokens or dep.max_model_len
            if max_input is not None:
                info["max_input_tokens"] = max_input
            if limits.max_output_tokens is not None:
                info["max_output_tokens"] = limits.max_output_tokens
            if dep.max_model_len is not None:
                info["max_tokens"] = dep.max_model_len
            model_list.append(
                {"model_name": public.name, "litellm_params": params, "model_info": info}
            )

    def group(public: PublicModel) -> str:
        """The entries a public name is served by (LiteLLM does not follow alias chains)."""
        name = public.profile or public.route
        return name if name in own else public.route

    aliases = {m.name: group(m) for m in models.values() if m.kind != "route" and m.name not in own}
    router: dict[str, Any] = {
        "enable_pre_call_checks": True,
        "num_retries": gw.retries,
        "timeout": gw.request_timeout_s,
    }
    if aliases:
        router["model_group_alias"] = aliases
    config: dict[str, Any] = {
        "model_list": model_list,
        "router_settings": router,
        "litellm_settings": {"num_retries": gw.retries, "request_timeout": gw.request_timeout_s},
    }
    master = _secret(gw.api_keys[0].key) if gw.api_keys else None
    if master:
        config["general_settings"] = {"master_key": master}
    head = (
        header(source, "LiteLLM proxy config", gateway_hash(source)) + "\n"
        "# LiteLLM caps max_parallel_requests per model_list entry and cannot share one slot\n"
        "# pool between a route and its profiles: a profile with the route's limits is a\n"
        "# model_group_alias of it (same entries, same slots); one with limits of its own gets\n"
        "# its own entries, and each deployment's slots are split between the entries on it.\n"
        "# Not exported: fleetgate's queue (queue_depth, queue_wait_s), API keys other than the\n"
        "# first (the master_key, allowed every model) and per-key route restrictions, which\n"
        "# in LiteLLM are virtual keys made through its API.\n"
    )
    head += "".join(f"# {note}\n" for note in notes)
    head += "# What LiteLLM does differently from fleetgate, per public name:\n"
    head += "".join(
        f"# {line}\n" for m in models.values() if m.kind != "alias" for line in _differences(m)
    )
    return head + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)
