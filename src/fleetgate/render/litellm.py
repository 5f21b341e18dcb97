"""The fleet's routes as a LiteLLM proxy config, for people who keep LiteLLM in front.

Same public names, aliases, profiles, limits and retries as the fleetgate gateway. LiteLLM
applies rpm/tpm/max_parallel_requests per deployment entry; fleetgate's queue depth and wait
have no LiteLLM equivalent and are left out (said in the file's header).
"""

from __future__ import annotations

from typing import Any

import yaml

from fleetgate.render import words
from fleetgate.render.artifacts import Source, gateway_hash
from fleetgate.spec import public_models


def _secret(value: str | None) -> str | None:
    """LiteLLM reads secrets as ``os.environ/VAR``; only a lone ``${VAR}`` maps onto that."""
    if not value:
        return None
    refs = words.env_refs(value)
    return f"os.environ/{refs[0]}" if refs and value == f"${{{refs[0]}}}" else None


def render_litellm(source: Source) -> str:
    fleet = source.fleet
    gw = fleet.gateway
    if gw is None:
        raise ValueError("the fleet file has no gateway section")
    models = public_models(fleet)
    model_list: list[dict[str, Any]] = []
    for public in models.values():
        if public.kind == "alias":
            continue
        limits = public.limits
        for name in public.deployments:
            dep = fleet.deployments[name]
            host = fleet.hosts[dep.host]
            params: dict[str, Any] = {
                "model": f"hosted_vllm/{dep.public_name(name)}",
                "api_base": f"http://{host.address}:{dep.port}/v1",
                "timeout": gw.request_timeout_s,
            }
            for key, value in (
                ("rpm", limits.rpm),
                ("tpm", limits.tpm),
                ("max_parallel_requests", limits.concurrency),
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
    aliases = {a: models[a].profile or models[a].route for a in gw.aliases if a in models}
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
        f"# Rendered by fleetgate from {source.fleet_file} (LiteLLM proxy config); "
        f"settings sha256:{gateway_hash(source)}.\n"
        "# Do not edit: change the fleet file and render again.\n"
        "# LiteLLM applies rpm, tpm and max_parallel_requests per model_list entry; fleetgate's\n"
        "# queue_depth and queue_wait_s have no LiteLLM equivalent and are not exported.\n"
    )
    return head + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)
