"""The fleet file's schema and loader: errors name the file, the path in it, the line and why."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleetgate.fleetfile import (
    FleetError,
    Gpu,
    client_address,
    deployment_url,
    env_refs,
    gateway_url,
    has_env_refs,
    http_url,
    load_fleet,
    lone_env_ref,
    parse_fleet,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "homelab" / "fleet.yaml"
EXAMPLE_BEFORE = EXAMPLE.with_name("fleet.before.yaml")


def problems_of(text: str, **kwargs) -> list:
    with pytest.raises(FleetError) as info:
        parse_fleet(textwrap.dedent(text), file="fleet.yaml", **kwargs)
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


MINIMAL = """\
    hosts:
      box:
        gpus: [RTX 3090]
    deployments:
      small:
        host: box
        model: Qwen/Qwen2.5-0.5B-Instruct
"""


def test_minimal_fleet_gets_vllm_defaults() -> None:
    fleet = parse_fleet(textwrap.dedent(MINIMAL)).fleet
    dep = fleet.deployments["small"]
    assert dep.port == 8000
    assert dep.kv_cache_dtype == "auto"
    assert dep.gpu_memory_utilization == 0.9
    assert dep.max_model_len is None and dep.max_num_seqs is None
    assert dep.image.startswith("vllm/vllm-openai:")
    assert dep.public_name("small") == "small"
    assert fleet.gateway is None
    gpu = fleet.hosts["box"].gpus[0]
    assert (gpu.name, gpu.arch) == ("RTX 3090", "ampere")
    # what CUDA reports, less than the 24 GB on the box
    assert 23.0 < gpu.memory_gib < 24.0


def test_reference_fleet_matches_design(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_API_KEY", "sk-owner-0123456789")
    monkeypatch.delenv("FLEETGATE_ADMIN_KEY", raising=False)
    loaded = load_fleet(EXAMPLE)
    fleet = loaded.fleet
    assert loaded.path == EXAMPLE
    w, a = fleet.deployments["wintermute"], fleet.deployments["armitage"]
    assert w.model == "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
    assert (w.served_model_name, w.max_model_len, w.max_num_seqs) == (
        "llama31-8b-wintermute",
        16384,
        2,
    )
    assert (w.kv_cache_dtype, w.gpu_memory_utilization) == ("fp8", 0.92)
    assert a.model == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert (a.served_model_name, a.max_model_len, a.max_num_seqs) == (
        "qwen2.5-7b-armitage",
        8192,
        1,
    )
    assert (a.kv_cache_dtype, a.gpu_memory_utilization) == ("fp8", 0.90)
    assert fleet.hosts["wintermute"].os == "windows"
    assert fleet.hosts["motoko"].os == "linux"
    gw = fleet.gateway
    assert gw is not None and gw.host == "motoko"
    assert gw.api_keys[0].key == "sk-owner-0123456789"
    assert gw.admin_key == ""  # ${FLEETGATE_ADMIN_KEY:-} with the variable unset
    r = gw.routes["llama31-8b-wintermute"]
    assert (r.max_input_tokens, r.max_output_tokens, r.tpm, r.rpm, r.concurrency) == (
        14000,
        1024,
        120000,
        60,
        2,
    )
    q = gw.routes["qwen2.5-7b-armitage"]
    assert (q.max_input_tokens, q.max_output_tokens, q.tpm, q.rpm, q.concurrency) == (
        7000,
        768,
        80000,
        40,
        1,
    )
    assert "llama31-8b-wintermute-burst" in r.profiles
    # the raw document keeps the reference, not the secret
    assert loaded.raw["gateway"]["api_keys"][0]["key"] == "${FLEETGATE_API_KEY}"


def test_before_fleet_is_the_previous_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_API_KEY", "sk-owner-0123456789")
    fleet = load_fleet(EXAMPLE_BEFORE).fleet
    w, a = fleet.deployments["wintermute"], fleet.deployments["armitage"]
    assert (w.max_model_len, w.gpu_memory_utilization, w.kv_cache_dtype) == (8192, 0.90, "auto")
    assert (a.max_model_len, a.gpu_memory_utilization, a.kv_cache_dtype) == (4096, 0.85, "auto")
    assert w.max_num_seqs is None and a.max_num_seqs is None


def test_wrong_type_names_file_path_line_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        hosts:
          box:
            gpus: [RTX 3090]
        deployments:
          wintermute:
            host: box
            model: m
            max_num_seqs: two
        """,
    )
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    [p] = info.value.problems
    assert p.path == "deployments.wintermute.max_num_seqs"
    assert p.line == 8
    assert "integer" in p.message and "'two'" in p.message
    text = str(info.value)
    assert text.startswith(f"{path}:8: deployments.wintermute.max_num_seqs: ")


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        """\
        hosts:
          box: {gpus: [RTX 3090]}
        deployments:
          a:
            host: box
            model: m
            port: 70000
            gpu_memory_utilization: 1.5
          b:
            host: box
            kv_cache_dtype: fp4
        """
    )
    by_path = {p.path: p for p in problems}
    assert set(by_path) == {
        "deployments.a.port",
        "deployments.a.gpu_memory_utilization",
        "deployments.b.model",
        "deployments.b.kv_cache_dtype",
    }
    assert by_path["deployments.a.port"].line == 7
    assert by_path["deployments.a.gpu_memory_utilization"].line == 8
    assert by_path["deployments.b.model"].message == "required field is missing"
    assert by_path["deployments.b.model"].line == 9  # where b starts
    assert "fp4" in by_path["deployments.b.kv_cache_dtype"].message


def test_unknown_field_points_at_its_line() -> None:
    [p] = problems_of(
        """\
        hosts:
          box:
            gpus: [RTX 3090]
            gpu_count: 2
        """
    )
    assert p.path == "hosts.box.gpu_count"
    assert p.line == 4
    assert "unknown field" in p.message


def test_misspelled_route_limit_is_unknown_field() -> None:
    [p] = problems_of(
        """\
        hosts:
          m: {}
        gateway:
          host: m
          routes:
            r:
              deployments: [d]
              max_input_token: 100
        """
    )
    assert (p.path, p.line) == ("gateway.routes.r.max_input_token", 8)
    assert "unknown field" in p.message


def test_invalid_yaml_gives_line(tmp_path: Path) -> None:
    path = write(tmp_path, "hosts:\n  box:\n    gpus: [RTX 3090\n  other: {}\n")
    with pytest.raises(FleetError) as info:
        load_fleet(path)
    [p] = info.value.problems
    assert p.message.startswith("not valid YAML")
    assert p.line is not None and 3 <= p.line <= 4
    assert str(path) in str(info.value)


def test_document_must_be_a_mapping() -> None:
    [p] = problems_of("- just\n- a list\n")
    assert "mapping" in p.message


def test_missing_file_is_a_fleet_error(tmp_path: Path) -> None:
    with pytest.raises(FleetError) as info:
        load_fleet(tmp_path / "nope.yaml")
    assert "cannot read" in info.value.problems[0].message


@pytest.mark.parametrize(
    "image",
    ["vllm/vllm-openai", "vllm/vllm-openai:latest", "registry.lan:5000/vllm-openai"],
)
def test_unpinned_image_is_refused(image: str) -> None:
    [p] = problems_of(
        f"""\
        hosts:
          box: {{gpus: [RTX 3090]}}
        deployments:
          d:
            host: box
            model: m
            image: "{image}"
        """
    )
    assert (p.path, p.line) == ("deployments.d.image", 7)
    assert "pin the image tag" in p.message


@pytest.mark.parametrize(
    "image",
    [
        "vllm/vllm-openai:v0.32.0",
        "registry.lan:5000/vllm-openai:v0.32.0",
        "vllm/vllm-openai@sha256:" + "0123456789abcdef" * 4,
    ],
)
def test_pinned_images_pass(image: str) -> None:
    text = MINIMAL + f'        image: "{image}"\n'
    assert parse_fleet(textwrap.dedent(text)).fleet.deployments["small"].image == image


def test_unknown_gpu_name_lists_known_ones() -> None:
    [p] = problems_of(
        """\
        hosts:
          box:
            gpus: [RTX 9999]
        """
    )
    assert p.path == "hosts.box.gpus.0"
    assert p.line == 3
    assert "unknown GPU 'RTX 9999'" in p.message
    assert "RTX 3090" in p.message and "memory_gib" in p.message


def test_gpu_by_name_is_forgiving_about_vendor_and_case() -> None:
    assert Gpu.model_validate("NVIDIA GeForce RTX 4090").arch == "ada"
    assert Gpu.model_validate("rtx 3060 12gb").memory_gib == pytest.approx(11.76)
    assert Gpu.model_validate("H100").arch == "hopper"


def test_gpu_by_explicit_memory_and_arch() -> None:
    gpu = Gpu.model_validate({"memory_gib": 10.5, "arch": "turing"})
    assert gpu.model.memory_gib == 10.5
    assert gpu.model.name == "10.5 GiB turing"
    # a catalog name with an override keeps the name, takes the override
    assert Gpu.model_validate({"name": "RTX 3090", "memory_gib": 22.0}).memory_gib == 22.0


def test_gpu_needs_memory_and_arch_without_a_name() -> None:
    [p] = problems_of(
        """\
        hosts:
          box:
            gpus: [{memory_gib: 12}]
        """
    )
    assert p.path == "hosts.box.gpus.0"
    assert "memory_gib and arch" in p.message


def test_bad_architecture_is_refused() -> None:
    [p] = problems_of(
        """\
        hosts:
          box:
            gpus: [{memory_gib: 12, arch: pascal}]
        """
    )
    assert p.path == "hosts.box.gpus.0.arch"


def test_names_must_be_plain() -> None:
    [p] = problems_of(
        """\
        hosts:
          "bad host": {}
        """
    )
    assert p.path.startswith("hosts.bad host")


# --- ${VAR} interpolation -------------------------------------------------------------------

SECRET_FLEET = """\
    hosts:
      m: {}
    gateway:
      host: m
      port: ${GW_PORT:-4000}
      admin_key: ${ADMIN:-}
      api_keys:
        - name: owner
          key: ${OWNER_KEY}
"""


def test_set_variable_is_substituted() -> None:
    fleet = parse_fleet(textwrap.dedent(SECRET_FLEET), env={"OWNER_KEY": "sk-0123456789"}).fleet
    assert fleet.gateway.api_keys[0].key == "sk-0123456789"


def test_default_applies_when_unset_and_not_when_set() -> None:
    fleet = parse_fleet(textwrap.dedent(SECRET_FLEET), env={"OWNER_KEY": "sk-0123456789"}).fleet
    assert fleet.gateway.port == 4000
    assert fleet.gateway.admin_key == ""
    fleet = parse_fleet(
        textwrap.dedent(SECRET_FLEET),
        env={"OWNER_KEY": "sk-0123456789", "GW_PORT": "4100", "ADMIN": "admin-secret"},
    ).fleet
    assert fleet.gateway.port == 4100
    assert fleet.gateway.admin_key == "admin-secret"


def test_unset_variable_is_an_error_naming_it() -> None:
    [p] = problems_of(SECRET_FLEET, env={})
    assert p.message == "environment variable OWNER_KEY is not set"
    assert p.path == "gateway.api_keys.0.key"
    assert p.line == 9
    assert "export OWNER_KEY=" in p.suggestion


def test_unset_variable_line_under_a_dotted_name() -> None:
    # route names may carry dots (qwen2.5-...): the line must still be found
    [p] = problems_of(
        """\
        hosts:
          m: {}
        gateway:
          host: m
          routes:
            qwen2.5-7b:
              deployments: [d]
              tpm: ${QWEN_TPM}
        """,
        env={},
    )
    assert p.path == "gateway.routes.qwen2.5-7b.tpm"
    assert p.line == 8


def test_variable_inside_a_longer_string() -> None:
    fleet = parse_fleet(
        textwrap.dedent(
            """\
            hosts:
              box:
                address: ${SUBNET}.7
                gpus: [RTX 3090]
            """
        ),
        env={"SUBNET": "10.0.0"},
    ).fleet
    assert fleet.hosts["box"].address == "10.0.0.7"


def test_non_strict_leaves_references_as_written() -> None:
    fleet = parse_fleet(textwrap.dedent(SECRET_FLEET), env={}, strict_env=False).fleet
    assert fleet.gateway.api_keys[0].key == "${OWNER_KEY}"
    # defaults still apply
    assert fleet.gateway.port == 4000


def test_non_strict_accepts_a_short_variable_name_for_a_key() -> None:
    # `fleetgate plan` reads fleets without their secrets: ${KEY} is shorter than a real key
    text = SECRET_FLEET.replace("OWNER_KEY", "K")
    fleet = parse_fleet(textwrap.dedent(text), env={}, strict_env=False).fleet
    assert fleet.gateway.api_keys[0].key == "${K}"
    # but a short literal key is still refused
    [p] = problems_of(text.replace("${K}", "short"), env={})
    assert p.path == "gateway.api_keys.0.key"


def test_reference_fleet_without_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETGATE_API_KEY", raising=False)
    with pytest.raises(FleetError) as info:
        load_fleet(EXAMPLE)
    [p] = info.value.problems
    assert "FLEETGATE_API_KEY" in p.message
    loaded = load_fleet(EXAMPLE, strict_env=False)
    assert loaded.fleet.gateway is not None
    # the unset reference is kept, as a warning that points at its line
    [w] = loaded.unset_env
    assert (w.level, w.path, w.line) == ("warning", "gateway.api_keys.0.key", p.line)
    assert w.message == p.message and p.level == "error"
    monkeypatch.setenv("FLEETGATE_API_KEY", "sk-owner-0123456789")
    assert load_fleet(EXAMPLE, strict_env=False).unset_env == ()


def test_secrets_are_not_echoed_in_errors() -> None:
    [p] = problems_of(
        """\
        hosts:
          m: {}
        gateway:
          host: m
          api_keys:
            - name: owner
              key: hunter2
        """
    )
    assert p.path == "gateway.api_keys.0.key"
    assert "hunter2" not in p.format()


def test_value_is_not_repeated_when_the_message_has_it() -> None:
    [p] = problems_of(
        """\
        hosts:
          box: {gpus: [RTX 3090]}
        deployments:
          d: {host: box, model: m, image: "vllm/vllm-openai"}
        """
    )
    assert p.message.count("'vllm/vllm-openai'") == 1


# -- URLs: one home for brackets and wildcard listen addresses ----------------------------------


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("gpu1.lan", "http://gpu1.lan:8000"),
        ("fd00::2", "http://[fd00::2]:8000"),
        ("[fd00::2]", "http://[fd00::2]:8000"),
        ("::1", "http://[::1]:8000"),
    ],
)
def test_http_url_brackets_ipv6_literals(address: str, url: str) -> None:
    assert http_url(address, 8000) == url


@pytest.mark.parametrize(
    ("listen", "host_address", "dialed"),
    [
        ("0.0.0.0", "gw.lan", "gw.lan"),  # every interface: the host's own address
        ("::", "fd00::9", "fd00::9"),
        ("10.0.0.5", "gw.lan", "10.0.0.5"),  # one interface: that one
        ("0.0.0.0", "0.0.0.0", "127.0.0.1"),  # nothing better known: loopback of the family
        ("::", "::", "::1"),
    ],
)
def test_client_address_maps_wildcards_to_something_reachable(
    listen: str, host_address: str, dialed: str
) -> None:
    assert client_address(listen, host_address) == dialed


IPV6_FLEET = """
hosts:
  gpu: {address: "fd00::2", gpus: [RTX 4090]}
  gw: {address: "fd00::9"}
deployments:
  llama: {host: gpu, port: 8000, model: m, max_num_seqs: 4}
gateway:
  host: gw
  listen: "::"
  port: 4000
  routes:
    chat: {deployments: [llama]}
"""


def test_deployment_and_gateway_urls_of_an_ipv6_fleet() -> None:
    fleet = parse_fleet(IPV6_FLEET).fleet
    assert deployment_url(fleet, "llama") == "http://[fd00::2]:8000"
    assert gateway_url(fleet) == "http://[fd00::9]:4000"


@pytest.mark.parametrize(
    ("value", "refs", "lone"),
    [
        ("${HF_TOKEN}", ["HF_TOKEN"], "HF_TOKEN"),
        ("redis://:${PW}@host/${DB}", ["PW", "DB"], None),
        ("plain", [], None),
        ("$HOME and ${not-a-name}", [], None),
    ],
)
def test_env_references_left_by_loading(value: str, refs: list[str], lone: str | None) -> None:
    assert env_refs(value) == refs
    assert has_env_refs(value) is bool(refs)
    assert lone_env_ref(value) == lone
