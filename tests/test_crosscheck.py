"""Cross checks of a fleet (fleetfile/crosscheck.py) and its public names and limits (routes.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fleetgate.errors import FleetgateError
from fleetgate.fleetfile import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LIMITS,
    Fleet,
    FleetError,
    check_fleet,
    deployment_slots,
    public_models,
    require_gateway,
    require_valid,
    resolve_alias,
    route_limits,
)
from fleetgate.gateway.config import GatewayConfig
from fleetgate.probes.targets import target_from_fleet

BASE: dict[str, Any] = {
    "hosts": {
        "gpu1": {"os": "linux", "gpus": ["RTX 4090"]},
        "gw": {"os": "linux"},
    },
    "deployments": {
        "llama": {
            "host": "gpu1",
            "port": 8000,
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "max_model_len": 8192,
            "max_num_seqs": 4,
        },
    },
    "gateway": {
        "host": "gw",
        "port": 4000,
        "routes": {
            "llama-8b": {
                "deployments": ["llama"],
                "max_input_tokens": 7000,
                "max_output_tokens": 1024,
                "concurrency": 4,
            },
        },
    },
}


def edit(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, last = path.split("/")
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def problems(*edits: tuple[str, Any]) -> list:
    data = copy.deepcopy(BASE)
    for path, value in edits:
        edit(data, path, value)
    return check_fleet(Fleet.model_validate(data))


def errors(*edits: tuple[str, Any]) -> list:
    return [p for p in problems(*edits) if p.level == "error"]


def warnings(*edits: tuple[str, Any]) -> list:
    return [p for p in problems(*edits) if p.level == "warning"]


def test_base_fleet_is_clean() -> None:
    assert problems() == []


# --- route limits against the deployment ------------------------------------------------------


def test_input_plus_output_over_max_model_len() -> None:
    [p] = errors(("gateway/routes/llama-8b/max_input_tokens", 7500))
    assert p.path == "gateway.routes.llama-8b.max_input_tokens"
    assert "7500" in p.message and "1024" in p.message and "8524" in p.message
    assert "8192" in p.message and "'llama'" in p.message
    assert "lower max_input_tokens to 7168" in p.suggestion


def test_input_plus_output_exactly_max_model_len_is_fine() -> None:
    assert errors(("gateway/routes/llama-8b/max_input_tokens", 8192 - 1024)) == []


def test_input_alone_over_max_model_len() -> None:
    # no output limit: the input limit alone must still leave room in the context
    [p] = errors(
        ("gateway/routes/llama-8b/max_input_tokens", 9000),
        ("gateway/routes/llama-8b/max_output_tokens", DELETE),
    )
    assert p.path == "gateway.routes.llama-8b.max_input_tokens"
    assert "9000" in p.message and "8192" in p.message


def test_output_alone_over_max_model_len() -> None:
    [p] = errors(
        ("gateway/routes/llama-8b/max_input_tokens", DELETE),
        ("gateway/routes/llama-8b/max_output_tokens", 10000),
    )
    assert p.path == "gateway.routes.llama-8b.max_output_tokens"
    assert "10000" in p.message and "8192" in p.message


def test_limits_over_max_model_len_via_a_profile() -> None:
    # the profile inherits max_output_tokens 1024 and raises the input limit
    [p] = errors(
        ("gateway/routes/llama-8b/profiles", {"llama-8b-long": {"max_input_tokens": 7900}}),
    )
    assert p.path == "gateway.routes.llama-8b.profiles.llama-8b-long.max_input_tokens"
    assert "8924" in p.message


def test_limits_over_max_model_len_via_gateway_defaults() -> None:
    [p] = errors(
        ("gateway/routes/llama-8b/max_output_tokens", DELETE),
        ("gateway/defaults", {"max_output_tokens": 4096}),
    )
    assert "7000" in p.message and "4096" in p.message


def test_each_deployment_of_a_route_is_checked() -> None:
    [p] = errors(
        ("deployments/small", {"host": "gpu1", "port": 8001, "model": "m", "max_model_len": 4096}),
        ("gateway/routes/llama-8b/deployments", ["llama", "small"]),
        ("gateway/routes/llama-8b/concurrency", 2),
    )
    assert "'small'" in p.message and "4096" in p.message


def test_model_default_context_is_not_checked_here() -> None:
    # without max_model_len the model's own context applies; spec does not know it
    assert errors(("deployments/llama/max_model_len", DELETE)) == []


def test_concurrency_over_max_num_seqs() -> None:
    [p] = errors(("gateway/routes/llama-8b/concurrency", 5))
    assert p.path == "gateway.routes.llama-8b.concurrency"
    assert "5" in p.message and "max_num_seqs 4" in p.message
    assert "lower concurrency to 4" in p.suggestion


def test_concurrency_over_max_num_seqs_via_a_profile() -> None:
    [p] = errors(
        ("gateway/routes/llama-8b/profiles", {"burst": {"concurrency": 8, "queue_depth": 64}}),
    )
    assert p.path == "gateway.routes.llama-8b.profiles.burst.concurrency"


# --- ports, hosts, references ----------------------------------------------------------------


def test_two_deployments_on_one_host_and_port() -> None:
    [p] = errors(("deployments/other", {"host": "gpu1", "port": 8000, "model": "m"}))
    assert p.path == "deployments.other.port"
    assert "gpu1:8000" in p.message and "'llama'" in p.message


def test_same_port_on_different_hosts_is_fine() -> None:
    assert (
        errors(
            ("hosts/gpu2", {"gpus": ["RTX 3090"]}),
            ("deployments/other", {"host": "gpu2", "port": 8000, "model": "m"}),
        )
        == []
    )


def test_gateway_port_clashes_with_a_deployment() -> None:
    [p] = errors(("gateway/host", "gpu1"), ("gateway/port", 8000))
    assert p.path == "gateway.port"
    assert "gpu1:8000" in p.message and "'llama'" in p.message


def test_gateway_on_unknown_host() -> None:
    [p] = errors(("gateway/host", "nowhere"))
    assert p.path == "gateway.host"
    assert "'nowhere'" in p.message and "gpu1" in p.suggestion


def test_deployment_on_unknown_host() -> None:
    [p] = errors(("deployments/llama/host", "nowhere"))
    assert p.path == "deployments.llama.host"
    assert "unknown host 'nowhere'" in p.message
    assert "gpu1" in p.suggestion and "gw" in p.suggestion


def test_deployment_on_a_host_without_gpus() -> None:
    [p] = errors(("deployments/llama/host", "gw"))
    assert p.path == "hosts.gw.gpus"
    assert "'llama'" in p.message


def test_tensor_parallel_over_the_host_gpus() -> None:
    [p] = errors(("deployments/llama/tensor_parallel_size", 2))
    assert p.path == "deployments.llama.tensor_parallel_size"
    assert "2 GPUs asked" in p.message and "has 1" in p.message
    assert (
        errors(
            ("deployments/llama/tensor_parallel_size", 2),
            ("hosts/gpu1/gpus", ["RTX 4090", "RTX 4090"]),
        )
        == []
    )


def test_route_naming_an_unknown_deployment() -> None:
    [p] = errors(("gateway/routes/llama-8b/deployments", ["llama", "ghost"]))
    assert p.path == "gateway.routes.llama-8b.deployments"
    assert "unknown deployment 'ghost'" in p.message
    assert "llama" in p.suggestion


def test_duplicate_route_and_profile_names() -> None:
    [p] = errors(
        ("gateway/routes/qwen", {"deployments": ["llama"], "profiles": {"llama-8b": {}}}),
    )
    assert p.path == "gateway.routes.qwen"
    assert "'llama-8b' is used twice" in p.message


def test_alias_cycle() -> None:
    [p] = errors(("gateway/aliases", {"a": "b", "b": "c", "c": "a"}))[:1]
    assert p.path == "gateway.aliases.a"
    assert "alias cycle: a -> b -> c -> a" in p.message
    # every alias of the cycle is reported
    assert len(errors(("gateway/aliases", {"a": "b", "b": "c", "c": "a"}))) == 3


def test_alias_to_itself() -> None:
    [p] = errors(("gateway/aliases", {"a": "a"}))
    assert "cycle" in p.message


def test_alias_to_nothing() -> None:
    [p] = errors(("gateway/aliases", {"fast": "llama-70b"}))
    assert p.path == "gateway.aliases.fast"
    assert "'llama-70b'" in p.message
    assert "llama-8b" in p.suggestion


def test_alias_shadowing_a_route() -> None:
    [p] = errors(("gateway/aliases", {"llama-8b": "llama-8b"}))
    assert "shadows" in p.message


def test_alias_chain_to_a_profile_is_fine() -> None:
    assert (
        errors(
            ("gateway/routes/llama-8b/profiles", {"llama-8b-burst": {"queue_depth": 64}}),
            ("gateway/aliases", {"burst": "llama-8b-burst", "b": "burst"}),
        )
        == []
    )


def test_api_key_for_an_unknown_route() -> None:
    [p] = errors(
        (
            "gateway/api_keys",
            [
                {"name": "ok", "key": "sk-0123456789", "routes": ["*"]},
                {"name": "bad", "key": "sk-0123456789", "routes": ["llama-8b", "gpt-4"]},
            ],
        )
    )
    assert p.path == "gateway.api_keys.1.routes"
    assert "'gpt-4'" in p.message


def test_api_key_may_name_an_alias_or_profile() -> None:
    assert (
        errors(
            ("gateway/routes/llama-8b/profiles", {"burst": {}}),
            ("gateway/aliases", {"llama": "llama-8b"}),
            (
                "gateway/api_keys",
                [{"name": "k", "key": "sk-0123456789", "routes": ["llama", "burst"]}],
            ),
        )
        == []
    )


def test_no_gateway_means_no_gateway_checks() -> None:
    assert problems(("gateway", DELETE)) == []


# --- warnings --------------------------------------------------------------------------------


def test_fp8_kv_on_ampere_warns() -> None:
    [p] = problems(("hosts/gpu1/gpus", ["RTX 3090"]), ("deployments/llama/kv_cache_dtype", "fp8"))
    assert p.level == "warning"
    assert p.path == "deployments.llama.kv_cache_dtype"
    assert "ampere" in p.message
    assert "kv_cache_dtype: auto" in p.suggestion


@pytest.mark.parametrize("gpu", ["RTX 4090", "L4", "H100", "RTX 5090"])
def test_fp8_kv_on_ada_and_newer_is_quiet(gpu: str) -> None:
    assert problems(("hosts/gpu1/gpus", [gpu]), ("deployments/llama/kv_cache_dtype", "fp8")) == []


def test_fp16_kv_on_ampere_is_quiet() -> None:
    assert problems(("hosts/gpu1/gpus", ["RTX 3090"])) == []


# --- public names and their limits -------------------------------------------------------------


def reference_like() -> Fleet:
    data = copy.deepcopy(BASE)
    route = data["gateway"]["routes"]["llama-8b"]
    route.update(tpm=120000, rpm=60, queue_depth=16, queue_wait_s=30)
    route["profiles"] = {"llama-8b-burst": {"queue_depth": 64, "queue_wait_s": 180}}
    data["deployments"]["qwen"] = {
        "host": "gpu1",
        "port": 8001,
        "model": "Qwen/Qwen2.5-7B-Instruct-AWQ",
        "max_model_len": 8192,
        "max_num_seqs": 3,
    }
    data["gateway"]["routes"]["qwen-7b"] = {"deployments": ["qwen"], "max_input_tokens": 4000}
    data["gateway"]["aliases"] = {"llama": "llama-8b", "burst": "llama-8b-burst", "l": "llama"}
    return Fleet.model_validate(data)


def test_profile_inherits_route_limits_and_overrides_the_queue() -> None:
    fleet = reference_like()
    route = route_limits(fleet, "llama-8b")
    burst = route_limits(fleet, "llama-8b", "llama-8b-burst")
    assert (burst.queue_depth, burst.queue_wait_s) == (64, 180)
    assert (route.queue_depth, route.queue_wait_s) == (16, 30)
    for field in ("max_input_tokens", "max_output_tokens", "tpm", "rpm", "concurrency"):
        assert getattr(burst, field) == getattr(route, field) is not None


def test_gateway_defaults_fill_what_a_route_leaves_out() -> None:
    limits = route_limits(reference_like(), "qwen-7b")
    assert limits.max_input_tokens == 4000
    assert limits.queue_depth == 16 and limits.queue_wait_s == 30.0  # Gateway.defaults
    assert limits.clamp_max_tokens is False
    assert limits.tpm is None and limits.rpm is None


def test_concurrency_defaults_to_max_num_seqs() -> None:
    assert route_limits(reference_like(), "qwen-7b").concurrency == 3


def test_concurrency_default_is_the_smallest_max_num_seqs() -> None:
    data = copy.deepcopy(BASE)
    data["deployments"]["b"] = {"host": "gpu1", "port": 8001, "model": "m", "max_num_seqs": 2}
    data["gateway"]["routes"]["llama-8b"]["deployments"] = ["llama", "b"]
    del data["gateway"]["routes"]["llama-8b"]["concurrency"]
    assert route_limits(Fleet.model_validate(data), "llama-8b").concurrency == 2


def test_alias_resolution() -> None:
    fleet = reference_like()
    assert resolve_alias(fleet, "l") == "llama-8b"
    assert resolve_alias(fleet, "burst") == "llama-8b-burst"
    assert resolve_alias(fleet, "llama-8b") == "llama-8b"


def test_public_models_lists_routes_profiles_and_aliases() -> None:
    models = public_models(reference_like())
    assert set(models) == {"llama-8b", "llama-8b-burst", "qwen-7b", "llama", "burst", "l"}
    assert models["llama-8b"].kind == "route" and models["llama-8b"].profile is None
    burst = models["llama-8b-burst"]
    assert (burst.kind, burst.route, burst.profile) == ("profile", "llama-8b", "llama-8b-burst")
    assert burst.deployments == ("llama",)
    assert burst.limits.queue_depth == 64
    l_alias = models["l"]
    assert (l_alias.kind, l_alias.route, l_alias.profile) == ("alias", "llama-8b", None)
    assert l_alias.limits == models["llama-8b"].limits
    assert models["burst"].limits == burst.limits
    assert models["qwen-7b"].deployments == ("qwen",)


def test_public_models_without_gateway() -> None:
    data = copy.deepcopy(BASE)
    del data["gateway"]
    assert public_models(Fleet.model_validate(data)) == {}


# -- derived facts: defaults, slots, max_model_len, valid-or-raise ------------------------------


def test_partial_gateway_defaults_merge_field_by_field() -> None:
    """Regression: ``defaults: {rpm: 100}`` used to replace the whole block (queue_depth None)."""
    data = edit(copy.deepcopy(BASE), "gateway/defaults", {"rpm": 100})
    fleet = Fleet.model_validate(data)
    assert fleet.gateway is not None
    assert fleet.gateway.defaults.model_dump() == {
        **DEFAULT_LIMITS.model_dump(),
        "rpm": 100,
    }
    limits = route_limits(fleet, "llama-8b")
    assert (limits.rpm, limits.queue_depth, limits.queue_wait_s) == (100, 16, 30.0)
    assert limits.clamp_max_tokens is False
    config = GatewayConfig.from_fleet(fleet).models["llama-8b"]
    assert (config.rpm, config.queue_depth, config.queue_wait_s) == (100, 16, 30.0)


def test_gateway_defaults_override_the_builtin_ones() -> None:
    data = edit(copy.deepcopy(BASE), "gateway/defaults", {"queue_depth": 0, "queue_wait_s": 5})
    limits = route_limits(Fleet.model_validate(data), "llama-8b")
    assert (limits.queue_depth, limits.queue_wait_s) == (0, 5.0)


def test_slots_are_the_smallest_route_concurrency_and_profiles_share_them() -> None:
    data = copy.deepcopy(BASE)
    data["deployments"]["free"] = {"host": "gpu1", "port": 8001, "model": "m"}
    data["deployments"]["idle"] = {"host": "gpu1", "port": 8002, "model": "m"}
    routes = data["gateway"]["routes"]
    routes["llama-8b"]["profiles"] = {"burst": {"concurrency": 1}}
    routes["small"] = {"deployments": ["llama"], "concurrency": 2}
    routes["free"] = {"deployments": ["free"]}
    fleet = Fleet.model_validate(data)
    assert not [p for p in check_fleet(fleet) if p.level == "error"]
    # idle: no route uses it; free: no concurrency, no max_num_seqs -> vLLM's default batch
    assert deployment_slots(fleet) == {"llama": 2, "free": DEFAULT_CONCURRENCY}
    gateway = GatewayConfig.from_fleet(fleet)
    assert {d.name: d.concurrency for d in gateway.deployments.values()} == {
        "llama": 2,
        "free": DEFAULT_CONCURRENCY,
    }


def test_public_model_max_model_len_is_the_smallest_of_its_deployments() -> None:
    data = copy.deepcopy(BASE)
    data["deployments"]["short"] = {
        "host": "gpu1",
        "port": 8001,
        "model": "m",
        "max_model_len": 2048,
    }
    data["deployments"]["unsized"] = {"host": "gpu1", "port": 8002, "model": "m"}
    data["gateway"]["routes"]["llama-8b"]["max_input_tokens"] = 1000
    data["gateway"]["routes"]["llama-8b"]["deployments"] = ["llama", "short", "unsized"]
    data["gateway"]["routes"]["unsized"] = {"deployments": ["unsized"]}
    data["gateway"]["aliases"] = {"l": "llama-8b"}
    fleet = Fleet.model_validate(data)
    models = public_models(fleet)
    assert (models["llama-8b"].max_model_len, models["l"].max_model_len) == (2048, 2048)
    assert models["unsized"].max_model_len is None
    config = GatewayConfig.from_fleet(fleet)
    assert config.models["l"].max_model_len == 2048
    assert {m.name: m.max_model_len for m in target_from_fleet(fleet).models} == {
        "llama-8b": 2048,
        "unsized": None,
        "l": 2048,
    }


def test_require_valid_raises_every_error_and_passes_warnings() -> None:
    data = edit(copy.deepcopy(BASE), "deployments/llama/host", "nowhere")
    with pytest.raises(FleetError) as caught:
        require_valid(Fleet.model_validate(data), "fleet.yaml")
    assert caught.value.file == "fleet.yaml"
    assert [p.path for p in caught.value.problems] == ["deployments.llama.host"]
    assert isinstance(caught.value, FleetgateError)
    # an fp8 KV cache on ampere is only a warning: the fleet is returned as is
    warned = Fleet.model_validate(edit(copy.deepcopy(BASE), "hosts/gpu1/gpus", ["RTX 3090"]))
    warned = warned.model_copy(
        update={
            "deployments": {
                "llama": warned.deployments["llama"].model_copy(update={"kv_cache_dtype": "fp8"})
            }
        }
    )
    assert check_fleet(warned) and require_valid(warned) is warned


def test_require_gateway_names_the_missing_section() -> None:
    data = edit(copy.deepcopy(BASE), "gateway", DELETE)
    with pytest.raises(FleetError, match="no gateway section"):
        require_gateway(Fleet.model_validate(data))
