"""Rendered artifacts: goldens for the reference fleet, determinism, no secrets, and each file
checked by its own language's tool (bash -n, shellcheck, YAML, systemd-analyze verify, and
tree-sitter's PowerShell grammar, since pwsh cannot be installed here).

Regenerate the goldens after an intended change with FLEETGATE_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from tests.support.powershell import parse_errors
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.fleetfile import load_fleet, parse_fleet
from fleetgate.gateway.config import GatewayConfig
from fleetgate.render import (
    MANIFEST,
    GatewayUnit,
    Manifest,
    ManifestError,
    RenderError,
    VllmUnit,
    host_manifest,
    render_host,
    render_litellm,
    render_monitoring,
    source_of,
    vllm_command,
)
from fleetgate.render.quoting import bash

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "homelab"
FLEET = "examples/homelab/fleet.yaml"


def _render_all(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(ROOT)
    source = source_of(load_fleet(FLEET, strict_env=False))
    files = {f"{h}/{p}": t for h in source.fleet.hosts for p, t in render_host(source, h).items()}
    files["litellm.config.yaml"] = render_litellm(source)
    files.update(render_monitoring(source))
    return files


def test_reference_fleet_matches_goldens(monkeypatch: pytest.MonkeyPatch) -> None:
    files = _render_all(monkeypatch)
    if os.environ.get("FLEETGATE_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for path, text in files.items():
            (GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / path).write_text(text, newline="\n")
        pytest.skip(f"FLEETGATE_UPDATE_GOLDEN: wrote {len(files)} goldens to {GOLDEN}")
    on_disk = {
        p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()
    }
    assert sorted(on_disk) == sorted(files)
    for path, text in files.items():
        assert text == on_disk[path], f"{path} differs from its golden"


def test_output_is_deterministic_and_never_holds_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_API_KEY", "sk-very-secret-key-123")
    monkeypatch.setenv("FLEETGATE_ADMIN_KEY", "admin-very-secret-456")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_789")
    first = _render_all(monkeypatch)
    assert first == _render_all(monkeypatch)
    text = "\n".join(first.values())
    for secret in ("sk-very-secret-key-123", "admin-very-secret-456", "hf_secret_token_789"):
        assert secret not in text
    assert "${FLEETGATE_API_KEY}" in first["motoko/gateway/fleet.yaml"]
    assert "os.environ/FLEETGATE_API_KEY" in first["litellm.config.yaml"]


def test_every_file_names_its_fleet_file_and_settings_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    for path, text in _render_all(monkeypatch).items():
        assert "examples/homelab" not in text, f"{path} names the path the fleet was given by"
        if path.endswith("manifest.json"):
            assert '"settings_sha256"' in text
            assert json.loads(text)["fleet_file"] == "fleet.yaml"
        else:
            assert "Rendered by fleetgate from fleet.yaml (" in text, path
            assert "settings sha256:" in text, path


def test_relative_and_absolute_paths_render_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A deploy from another directory must not see every file as changed."""
    runner = CliRunner()
    outputs = []
    for cwd, fleet in (
        (ROOT, FLEET),
        (ROOT / "examples", "homelab/fleet.yaml"),
        (tmp_path, str(ROOT / FLEET)),
    ):
        monkeypatch.chdir(cwd)
        out = tmp_path / f"out{len(outputs)}"
        result = runner.invoke(app, ["render", fleet, "--out", str(out)])
        assert result.exit_code == 0, result.output
        files = [p for p in out.rglob("*") if p.is_file()]
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in files})
    assert len(outputs[0]) >= 10
    assert outputs[0] == outputs[1] == outputs[2]
    assert {"monitoring/prometheus.yml", "monitoring/grafana-dashboard.json"} <= set(outputs[0])


def test_a_changed_setting_changes_only_its_deployments_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _render_all(monkeypatch)
    text = (ROOT / FLEET).read_text().replace("max_model_len: 8192", "max_model_len: 6144")
    source = source_of(parse_fleet(text, file=FLEET, strict_env=False))
    after = render_host(source, "armitage")
    assert after["armitage/start-vllm.sh"] != before["armitage/armitage/start-vllm.sh"]
    assert "--max-model-len 6144" in after["armitage/start-vllm.sh"]
    assert (
        render_host(source, "wintermute")["wintermute/start-vllm.sh"]
        == (before["wintermute/wintermute/start-vllm.sh"])
    )


def test_the_manifest_reads_back_as_the_model_that_wrote_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    source = source_of(load_fleet(FLEET, strict_env=False))
    for host in source.fleet.hosts:
        text = render_host(source, host)[MANIFEST]
        manifest = Manifest.parse(text)
        assert manifest == host_manifest(source, host)
        assert manifest.text() == text
    wintermute = host_manifest(source, "wintermute")
    (unit,) = wintermute.units
    assert isinstance(unit, VllmUnit)
    assert (unit.script, unit.max_model_len) == ("wintermute/Start-VLLM.ps1", 16384)
    (gateway,) = host_manifest(source, "motoko").units
    assert isinstance(gateway, GatewayUnit)
    assert gateway.script == "gateway/start-gateway.sh"
    assert Manifest.of_release({"tiny/start-vllm.sh": b""}) is None


def test_an_unreadable_manifest_says_so() -> None:
    with pytest.raises(
        ManifestError, match=r"manifest.json cannot be read: workdir: Field required.*units"
    ):
        Manifest.parse('{"fleet": "f", "fleet_file": "f", "host": "h", "os": "linux"}')
    with pytest.raises(
        ManifestError, match=r"manifest.json cannot be read: the file: Invalid JSON"
    ):
        Manifest.parse(b"{not json")


def test_literal_secret_is_refused() -> None:
    text = (ROOT / FLEET).read_text().replace("${FLEETGATE_API_KEY}", "sk-literal-key-0000")
    with pytest.raises(RenderError, match=r"gateway.api_keys.owner.key"):
        source_of(parse_fleet(text, file=FLEET, strict_env=False))


def test_bash_scripts_parse_and_pass_shellcheck(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scripts = {p: t for p, t in _render_all(monkeypatch).items() if p.endswith(".sh")}
    scripts["process/start-vllm.sh"] = _process_files()["start-vllm.sh"]
    assert len(scripts) >= 4
    for path, text in scripts.items():
        file = tmp_path / path.replace("/", "_")
        file.write_text(text)
        checked = subprocess.run(["bash", "-n", str(file)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{path}: {checked.stderr}"
        if shutil.which("shellcheck"):
            lint = subprocess.run(
                ["shellcheck", "-s", "bash", str(file)], capture_output=True, text=True
            )
            assert lint.returncode == 0, f"{path}:\n{lint.stdout}"


# A Windows Docker deployment whose values hold everything PowerShell would read as syntax.
AWKWARD_WINDOWS_FLEET = r"""
version: 1
name: awkward
hosts:
  win:
    address: win.lan
    os: windows
    transport: ssh
    ssh: {user: ops}
    workdir: "C:/it's $(here)/`fg @(1)"
    gpus: [RTX 3060 12GB]
deployments:
  odd:
    host: win
    port: 8001
    model: hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4
    model_path: "D:/models/my 'model' $x @(1) `n"
    hf_cache: "~/hf cache/it's"
    max_model_len: 4096
    env: {A: "it's ${HF_TOKEN} `$(x)", B: '"; Remove-Item -Recurse C:/ #', C: "${HOME}"}
    extra_args: ["--chat-template", "{{ x }} 'q' \"dq\" `$(boom) @(1) ; exit", "--seed", "${SEED}"]
"""


def test_powershell_scripts_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rendered .ps1 (the reference fleet before and after, and awkward values) parses
    without an ERROR or MISSING node."""
    scripts = {p: t for p, t in _render_all(monkeypatch).items() if p.endswith(".ps1")}
    before = source_of(load_fleet("examples/homelab/fleet.before.yaml", strict_env=False))
    for host in before.fleet.hosts:
        for path, text in render_host(before, host).items():
            if path.endswith(".ps1"):
                scripts[f"before/{host}/{path}"] = text
    awkward = source_of(
        parse_fleet(AWKWARD_WINDOWS_FLEET, file="awkward.yaml", env={}, strict_env=False)
    )
    scripts["awkward/odd/Start-VLLM.ps1"] = render_host(awkward, "win")["odd/Start-VLLM.ps1"]
    assert len(scripts) >= 5
    for path, text in scripts.items():
        assert parse_errors(text) == [], f"{path} does not parse as PowerShell"
    assert "'C:/it''s $(here)/`fg @(1)'" in scripts["awkward/odd/Start-VLLM.ps1"]


def test_yaml_files_parse_back_to_the_fleets_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    files = _render_all(monkeypatch)
    compose = yaml.safe_load(files["wintermute/wintermute/compose.yaml"])
    service = compose["services"]["vllm-wintermute"]
    assert service["image"] == "vllm/vllm-openai:v0.32.0"
    assert service["ipc"] == "host"
    command = service["command"]
    assert command[command.index("--max-model-len") + 1] == "16384"
    assert command[command.index("--kv-cache-dtype") + 1] == "fp8"
    assert "--quantization" not in command  # AWQ is detected by vLLM (Marlin kernel)

    gateway = yaml.safe_load(files["motoko/gateway/fleet.yaml"])
    assert gateway == yaml.safe_load((ROOT / FLEET).read_text())

    litellm = yaml.safe_load(files["litellm.config.yaml"])
    entries = {m["model_name"]: m for m in litellm["model_list"]}
    # the burst profile differs only in its queue: an alias, sharing the route's entry and slots
    assert set(entries) == {"llama31-8b-wintermute", "qwen2.5-7b-armitage"}
    assert entries["llama31-8b-wintermute"]["litellm_params"]["max_parallel_requests"] == 2
    qwen = entries["qwen2.5-7b-armitage"]
    assert qwen["litellm_params"]["rpm"] == 40
    assert qwen["litellm_params"]["tpm"] == 80000
    assert qwen["litellm_params"]["max_parallel_requests"] == 1
    assert qwen["model_info"]["max_input_tokens"] == 7000
    assert qwen["model_info"]["max_output_tokens"] == 768
    assert litellm["router_settings"]["enable_pre_call_checks"] is True
    assert litellm["router_settings"]["num_retries"] == 2
    assert litellm["router_settings"]["model_group_alias"] == {
        "llama31-8b-wintermute-burst": "llama31-8b-wintermute",
        "llama": "llama31-8b-wintermute",
        "qwen": "qwen2.5-7b-armitage",
    }


def _litellm_with(replacements: dict[str, str]) -> tuple[str, dict]:
    text = (ROOT / FLEET).read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    rendered = render_litellm(source_of(parse_fleet(text, file=FLEET, strict_env=False)))
    return rendered, yaml.safe_load(rendered)


def _parallel_per_backend(config: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in config["model_list"]:
        params = entry["litellm_params"]
        out[params["api_base"]] = out.get(params["api_base"], 0) + params["max_parallel_requests"]
    return out


BURST = "          queue_wait_s: 180\n"


def test_litellm_profile_with_its_own_limits_splits_the_backends_slots() -> None:
    """LiteLLM caps each entry alone: route + profile entries must not exceed the slots."""
    _, config = _litellm_with(
        {
            BURST: BURST + "          rpm: 10\n",
            "    qwen: qwen2.5-7b-armitage": "    b: llama31-8b-wintermute-burst",
        }
    )
    entries = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert entries["llama31-8b-wintermute"]["max_parallel_requests"] == 1
    assert entries["llama31-8b-wintermute-burst"]["max_parallel_requests"] == 1
    assert entries["llama31-8b-wintermute-burst"]["rpm"] == 10
    assert entries["llama31-8b-wintermute"]["rpm"] == 60
    assert _parallel_per_backend(config) == {
        "http://wintermute.lan:8000/v1": 2,
        "http://armitage.lan:8000/v1": 1,
    }
    # a fleet alias of the profile points straight at the profile's own entries
    assert config["router_settings"]["model_group_alias"]["b"] == "llama31-8b-wintermute-burst"


def test_litellm_profile_without_a_slot_to_spare_becomes_an_alias() -> None:
    text, config = _litellm_with(
        {BURST: BURST + "          rpm: 10\n", "      concurrency: 2\n": "      concurrency: 1\n"}
    )
    names = {m["model_name"] for m in config["model_list"]}
    assert "llama31-8b-wintermute-burst" not in names
    assert _parallel_per_backend(config)["http://wintermute.lan:8000/v1"] == 1
    alias = config["router_settings"]["model_group_alias"]
    assert alias["llama31-8b-wintermute-burst"] == "llama31-8b-wintermute"
    assert "llama31-8b-wintermute-burst: alias of llama31-8b-wintermute" in text
    assert "NOT exported" in text


def _process_fleet() -> str:
    return """
version: 1
name: cpu
hosts:
  box: {address: 127.0.0.1, transport: local, workdir: /srv/fleetgate}
deployments:
  tiny:
    host: box
    port: 8123
    model: tiny
    model_path: /srv/models/tiny model
    max_model_len: 2048
    max_num_seqs: 2
    runtime: process
    python: /usr/bin/python3
    env: {VLLM_CPU_KVCACHE_SPACE: "1", HF_TOKEN: "${HF_TOKEN}"}
    extra_args: ["--chat-template", "{% raw %}100% ${HOME}"]
"""


def _process_files() -> dict[str, str]:
    source = source_of(parse_fleet(_process_fleet(), file="cpu.yaml", env={}, strict_env=False))
    return {p.split("/", 1)[1]: t for p, t in render_host(source, "box").items() if "/" in p}


def test_systemd_units_verify(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's executable to exist: point fleetgate_bin at this one
    fleetgate_bin = Path(sys.executable).parent / "fleetgate"
    if not fleetgate_bin.exists():
        pytest.skip("no fleetgate executable beside this python")
    text = (ROOT / FLEET).read_text()
    motoko = "    os: linux\n    transport: ssh\n    ssh: {user: ops}\n"
    assert motoko in text
    text = text.replace(motoko, motoko + f"    fleetgate_bin: {fleetgate_bin}\n")
    source = source_of(parse_fleet(text, file=FLEET, strict_env=False))
    gateway = render_host(source, "motoko")["gateway/fleetgate-gateway.service"]
    assert f"ExecStart={fleetgate_bin} serve /home/ops/fleetgate/" in gateway
    assert (
        f'"${{FLEETGATE_BIN:-{fleetgate_bin}}}"'
        in render_host(source, "motoko")["gateway/start-gateway.sh"]
    )
    units = {
        "fleetgate-tiny.service": _process_files()["vllm.service"],
        "fleetgate-gateway.service": gateway,
    }
    for name, text in units.items():
        file = tmp_path / name
        # User= must exist here for verify to accept the unit
        file.write_text(text.replace("User=ops\n", "User=root\n"))
        result = subprocess.run([analyze, "verify", str(file)], capture_output=True, text=True)
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if name in line or "Command" in line or "Failed" in line
        ]
        assert result.returncode == 0 and not problems, f"{name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("host", "workdir", "assumed"),
    [
        ("{ssh: {user: ops}}", "/home/ops/fleetgate", "/home/ops as the home of ssh user ops"),
        ("{ssh: {user: root}}", "/root/fleetgate", "/root as the home of ssh user root"),
        ("{address: box.lan}", "/root/fleetgate", "/root as the home of root (no ssh user"),
        ("{ssh: {user: ops}, workdir: ~/fg}", "/home/ops/fg", "/home/ops as the home of ssh user"),
        ("{ssh: {user: ops}, workdir: fg}", "/home/ops/fg", "/home/ops as the home of ssh user"),
        ("{ssh: {user: ops}, workdir: /srv/fg}", "/srv/fg", None),
    ],
)  # fmt: skip
def test_system_units_get_absolute_paths(host: str, workdir: str, assumed: str | None) -> None:
    """A system unit's %h is root's home even with User=: paths are resolved when rendering."""
    text = _process_fleet().replace(
        "box: {address: 127.0.0.1, transport: local, workdir: /srv/fleetgate}", f"box: {host}"
    )
    text += "gateway: {host: box, port: 4000}\n"
    files = render_host(source_of(parse_fleet(text, file="cpu.yaml", strict_env=False)), "box")
    vllm, gateway = files["tiny/vllm.service"], files["gateway/fleetgate-gateway.service"]
    for unit in (vllm, gateway):
        assert "%h" not in unit and "~" not in unit
        assert f"EnvironmentFile=-{workdir}/env\n" in unit
        if assumed is None:
            assert f"under the host's workdir {workdir} (from the fleet file)" in unit
        else:
            assert f"# Paths assume {assumed}" in unit
            assert "# an absolute `workdir:` for this host in the fleet file overrides it" in unit
    assert (
        f"ExecStart=/usr/local/bin/fleetgate serve {workdir}/current/gateway/fleet.yaml " in gateway
    )
    assert "set `fleetgate_bin:` for this host" in gateway


def test_process_script_runs_exactly_the_vllm_command(tmp_path: Path) -> None:
    """The bash quoting round-trips: the script's `run` execs the argv vllm_command gave."""
    source = source_of(parse_fleet(_process_fleet(), file="cpu.yaml", env={}, strict_env=False))
    script = render_host(source, "box")["tiny/start-vllm.sh"]
    echo = tmp_path / "argv.py"
    echo.write_text(
        "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['HF_TOKEN']]))"
    )
    script = script.replace(
        "exec /usr/bin/python3 \\\n    -m vllm.entrypoints.openai.api_server",
        f"exec python3 {echo}",
    )
    (tmp_path / "s.sh").write_text(script)
    env = {**os.environ, "HF_TOKEN": "from-the-env", "HOME": str(tmp_path)}
    out = subprocess.run(
        ["bash", str(tmp_path / "s.sh"), "run"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr

    argv, token = json.loads(out.stdout)
    expected = [
        a.replace("${HOME}", str(tmp_path))
        for a in vllm_command(source.fleet, "tiny").api_server_args()
    ]
    assert argv == expected
    assert "--chat-template" in argv and argv[-1] == "{% raw %}100% " + str(tmp_path)
    assert "/srv/models/tiny model" in argv
    assert token == "from-the-env"


@pytest.mark.parametrize(
    "word",
    ["plain", "with space", "it's", 'dq"x', "$dollar", "back\\slash", "", "a${HOME}b", "%p"],
)
def test_bash_word_round_trips(word: str, tmp_path: Path) -> None:
    expected = word.replace("${HOME}", str(tmp_path))
    out = subprocess.run(
        ["bash", "-c", f"printf %s {bash.word(word)}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert out.stdout == expected


def test_vllm_flags_follow_the_spec() -> None:
    source = source_of(parse_fleet(_process_fleet(), file="cpu.yaml", env={}, strict_env=False))
    command = vllm_command(source.fleet, "tiny")
    flags = list(command.flags)
    assert flags[flags.index("--host") + 1] == "127.0.0.1"
    assert flags[flags.index("--port") + 1] == "8123"
    assert flags[flags.index("--max-model-len") + 1] == "2048"
    assert "--kv-cache-dtype" not in flags  # auto is vLLM's default
    assert command.model == "/srv/models/tiny model"


IPV6_FLEET = """
hosts:
  gpu: {address: "fd00::2", gpus: [RTX 4090]}
deployments:
  llama: {host: gpu, port: 8000, model: m, max_num_seqs: 4}
gateway:
  host: gpu
  listen: "::"
  port: 4000
  routes:
    chat: {deployments: [llama]}
"""


def test_ipv6_hosts_get_bracketed_urls_in_every_layer() -> None:
    """Regression: the manifest (read by the deploy health gate) and the LiteLLM export wrote
    ``http://fd00::2:8000``, which is not a URL; the gateway already bracketed it."""
    source = source_of(parse_fleet(IPV6_FLEET, file="fleet.yaml", strict_env=False))
    units = {u.name: u.url for u in host_manifest(source, "gpu").units}
    assert units == {"llama": "http://[fd00::2]:8000", "gateway": "http://[fd00::2]:4000"}
    litellm = yaml.safe_load(render_litellm(source))
    assert [m["litellm_params"]["api_base"] for m in litellm["model_list"]] == [
        "http://[fd00::2]:8000/v1"
    ]
    gateway = GatewayConfig.from_fleet(source.fleet)
    assert gateway.deployments["llama"].url == "http://[fd00::2]:8000"
    for url in (*units.values(), gateway.deployments["llama"].url):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) in (("fd00::2", 8000), ("fd00::2", 4000))


def test_litellm_export_says_per_route_what_litellm_does_differently() -> None:
    source = source_of(load_fleet(FLEET, strict_env=False))
    head = [line for line in render_litellm(source).splitlines() if line.startswith("#")]
    text = "\n".join(head)
    assert "# qwen2.5-7b-armitage: max_output_tokens 768 is NOT enforced" in text
    assert "# qwen2.5-7b-armitage: max_input_tokens 7000 is checked with LiteLLM's own" in text
    assert (
        "# llama31-8b-wintermute-burst: a request finding every slot busy gets an immediate 429"
        in text
    )
    assert not any(line.startswith("# qwen: ") for line in head)  # aliases: see their route
