"""``fleetgate up``: a local copy of the fleet, and the command's whole life as a process."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fleetgate.cli.up import announce
from fleetgate.fleetfile import load_fleet, parse_fleet
from fleetgate.local import free_port, local_fleet, localize
from fleetgate.local.backends import vllm_problems

HOMELAB = Path(__file__).parent.parent / "examples" / "homelab" / "fleet.yaml"
VLLM_PYTHON = os.environ.get(
    "FLEETGATE_VLLM_PYTHON", str(Path.home() / ".cache/fleetgate/vllm-0.32.0/bin/python")
)


def test_localize_rewrites_a_copy_and_leaves_the_fleet_alone() -> None:
    fleet = load_fleet(HOMELAB, strict_env=False, env={}).fleet
    before = fleet.model_dump()
    local = localize(fleet, gateway_port=0)
    assert fleet.model_dump() == before
    assert {h.address for h in local.fleet.hosts.values()} == {"127.0.0.1"}
    assert set(local.ports) == {"wintermute", "armitage"}
    assert {d.port for d in local.fleet.deployments.values()} == set(local.ports.values())
    assert local.fleet.gateway is not None and local.fleet.gateway.listen == "127.0.0.1"
    assert local.gateway_port != 0 and local.fleet.gateway.port == local.gateway_port
    # ${FLEETGATE_API_KEY} was unset: a session key, generated, long and random
    assert set(local.generated_keys) == {"owner"}
    assert local.api_key == local.generated_keys["owner"] and len(local.api_key) > 20
    assert localize(fleet, gateway_port=0).api_key != local.api_key
    # limits are untouched
    assert local.fleet.gateway.routes == fleet.gateway.routes  # type: ignore[union-attr]


def test_localize_keeps_a_key_that_is_set() -> None:
    env = {"FLEETGATE_API_KEY": "a-key-from-the-environment"}
    fleet = load_fleet(HOMELAB, strict_env=False, env=env).fleet
    local = localize(fleet)
    assert local.generated_keys == {}
    assert local.api_key == "a-key-from-the-environment"
    assert local.gateway_port == 4000  # the fleet file's


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_up_serves_the_fleet_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLEETGATE_API_KEY"}
    env["COLUMNS"] = "200"
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    code = "import sys; from fleetgate.cli import main; sys.argv[0] = 'fleetgate'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "up", str(HOMELAB), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        out = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            out.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(out)
        assert f"http://127.0.0.1:{port}" in text, text
        assert "llama31-8b-wintermute-burst" in text and "14000" in text
        key = re.search(r"export FLEETGATE_API_KEY=(\S+)", text)
        assert key, text
        status, body = _get(f"http://127.0.0.1:{port}/v1/models", key.group(1))
        assert status == 200
        ids = {m["id"] for m in body["data"]}
        assert {"llama31-8b-wintermute", "qwen2.5-7b-armitage", "llama", "qwen"} <= ids
        assert _get(f"http://127.0.0.1:{port}/v1/models")[0] == 401
        backend_ports = [int(p) for p in re.findall(r"\(sim :(\d+)\)", text)]
        assert len(set(backend_ports)) == 2
        assert _get(f"http://127.0.0.1:{backend_ports[0]}/v1/models")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
    for p in [port, *backend_ports]:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p}/health", timeout=2)
        except urllib.error.URLError as exc:
            assert isinstance(exc.reason, ConnectionRefusedError)
        else:
            raise AssertionError(f"port {p} still answers after SIGTERM")


def _limit_rows(out: str) -> dict[str, list[str]]:
    """The limits table's rows, by model name (the table is borderless: cells split on space)."""
    after = out[out.index("limits") :]
    rows = [line.split() for line in after.splitlines()]
    return {r[0]: r[1:] for r in rows if len(r) == 8 and r[0] != "model"}


async def test_announce_shows_every_limit_and_cuts_no_name_when_piped(capsys) -> None:
    fleet = load_fleet(HOMELAB, strict_env=False, env={"FLEETGATE_ADMIN_KEY": "adm-1"}).fleet
    async with local_fleet(fleet, gateway_port=0, speed=10) as running:
        announce(running)
    out = capsys.readouterr().out
    assert "…" not in out
    assert f"live page: {running.gateway_url}/ui" in out  # an admin key is set
    rows = _limit_rows(out)
    assert set(rows) == {
        "llama31-8b-wintermute",
        "llama31-8b-wintermute-burst",
        "qwen2.5-7b-armitage",
        "llama",
        "qwen",
    }
    assert rows["qwen2.5-7b-armitage"] == ["8192", "7000", "768", "80k", "40", "1", "8/30s"]
    assert "tpm" in out and "rpm" in out


async def test_announce_fits_80_columns_without_breaking_a_name(monkeypatch, capsys) -> None:
    """On an 80-column terminal every name and number is whole, on one line."""
    from rich.console import Console

    from fleetgate.cli import up as up_module

    narrow = Console(width=80, force_terminal=True, color_system=None)
    monkeypatch.setattr(up_module, "console", narrow)
    fleet = load_fleet(HOMELAB, strict_env=False, env={}).fleet
    async with local_fleet(fleet, gateway_port=0, speed=10) as running:
        announce(running)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    names = {"llama31-8b-wintermute-burst", "qwen2.5-7b-armitage", "llama31-8b-wintermute"}
    for name in names:
        assert re.search(rf"^ ?{re.escape(name)} +(route|profile) +\w+ \(sim :\d+\)", out, re.M)
    assert _limit_rows(out)["llama31-8b-wintermute-burst"][-1] == "64/180s"


PARTIAL_DEFAULTS = """
hosts:
  box: {gpus: [RTX 4090]}
deployments:
  qwen:
    host: box
    model: Qwen/Qwen2.5-7B-Instruct-AWQ
    served_model_name: qwen
    max_model_len: 4096
    max_num_seqs: 2
gateway:
  host: box
  defaults: {rpm: 100}
  routes:
    chat: {deployments: [qwen]}
"""


async def test_announce_with_partial_gateway_defaults(capsys) -> None:
    """Regression: ``gateway.defaults: {rpm: 100}`` left queue_depth None and the routes table
    crashed formatting it; the built-in queue now fills what the defaults leave out."""
    fleet = parse_fleet(PARTIAL_DEFAULTS).fleet
    async with local_fleet(fleet, gateway_port=0, speed=10) as running:
        announce(running)
    out = capsys.readouterr().out
    assert _limit_rows(out)["chat"] == ["4096", "–", "–", "–", "100", "2", "16/30s"]


def _up(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from fleetgate.cli import main; sys.argv[0] = 'fleetgate'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_up_says_a_port_in_use_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _up(str(HOMELAB), "--port", str(port))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: port {port} is already in use on this machine; give --port N for another "
        "(--port 0: any free port)"
    ], result.stderr


def test_up_says_why_a_simulated_backend_refuses_to_start(tmp_path: Path) -> None:
    """The simulator refuses a max_model_len its KV cache cannot hold, as vLLM does: one error
    line and exit 1, not a traceback."""
    text = PARTIAL_DEFAULTS.replace("max_model_len: 4096", "max_model_len: 32768").replace(
        "RTX 4090", "RTX 4060"
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    result = _up(str(path), "--port", "0")
    assert result.returncode == 1, result.stderr
    assert "deployment qwen: max_model_len (32768) does not fit in the KV cache" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_refuses_a_port_out_of_range() -> None:
    for port in ("99999", "-5"):
        result = _up(str(HOMELAB), "--port", port)
        assert result.returncode == 2, result.stderr
        assert "Invalid value for '--port'" in result.stderr
        assert "pydantic" not in result.stderr and "validation error" not in result.stderr


def _process_fleet(tmp_path: Path, model_path: Path | None) -> Path:
    path = tmp_path / "fleet.yaml"
    where = f", model_path: {model_path}" if model_path else ""
    path.write_text(
        "version: 1\n"
        "hosts: {box: {address: 127.0.0.1, transport: local, gpus: [RTX 3090]}}\n"
        "deployments:\n"
        "  a: {host: box, port: 8001, model: Qwen/Qwen2.5-0.5B-Instruct, max_model_len: 2048,"
        f" runtime: process{where}}}\n"
        "gateway: {host: box, port: 4000, routes: {a: {deployments: [a]}}}\n"
    )
    return path


def test_up_vllm_says_which_python_lacks_vllm_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = load_fleet(_process_fleet(tmp_path, tmp_path), strict_env=False).fleet
    monkeypatch.setenv("FLEETGATE_VLLM_PYTHON", str(tmp_path / "no-python"))
    (problem,) = vllm_problems(fleet)
    assert "cannot import vllm" in problem and "FLEETGATE_VLLM_PYTHON" in problem
    monkeypatch.delenv("FLEETGATE_VLLM_PYTHON")
    if importlib.util.find_spec("vllm") is None:
        (problem,) = vllm_problems(fleet)
        assert sys.executable in problem and "python:" in problem


def test_up_vllm_checks_model_path_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETGATE_VLLM_PYTHON", sys.executable)
    missing = load_fleet(_process_fleet(tmp_path, tmp_path / "gone"), strict_env=False).fleet
    none = load_fleet(_process_fleet(tmp_path, None), strict_env=False).fleet
    assert any("model_path" in p and "does not exist" in p for p in vllm_problems(missing))
    assert any("needs model_path" in p for p in vllm_problems(none))
    result = _up(str(tmp_path / "fleet.yaml"), "--backend", "vllm", "--port", "0")
    assert result.returncode == 1
    assert "needs model_path" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not Path(VLLM_PYTHON).exists(), reason="no vLLM venv on this machine")
def test_a_python_with_vllm_passes_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETGATE_VLLM_PYTHON", VLLM_PYTHON)
    fleet = load_fleet(_process_fleet(tmp_path, tmp_path), strict_env=False).fleet
    assert vllm_problems(fleet) == []


# -- a running `up` is found by the commands given the same fleet file ------------------------


def _start_up(
    tmp_path: Path, *args: str, **extra_env: str
) -> tuple[subprocess.Popen[str], str, dict[str, str]]:
    """``fleetgate up HOMELAB`` in a process, its state in ``tmp_path``; returns its output up
    to the last line of what it prints at start."""
    env = {k: v for k, v in os.environ.items() if k != "FLEETGATE_API_KEY"}
    env.update(COLUMNS="200", XDG_RUNTIME_DIR=str(tmp_path), **extra_env)
    code = "import sys; from fleetgate.cli import main; sys.argv[0] = 'fleetgate'; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "up", str(HOMELAB), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    out = []
    for line in proc.stdout:  # type: ignore[union-attr]
        out.append(line)
        if "Ctrl-C" in line:
            break
    return proc, "".join(out), env


def test_up_prints_next_steps_that_work_as_pasted(tmp_path: Path) -> None:
    """The curl and the openai snippet `up` prints run as they are, in a shell."""
    pytest.importorskip("openai")
    proc, out, env = _start_up(tmp_path, "--port", "0", "--speed", "20")
    try:
        url = re.search(r"gateway: (http://127.0.0.1:\d+)", out)
        assert url, out
        curl = next(line for line in out.splitlines() if line.startswith("curl "))
        assert url.group(1) in curl and "Bearer fg-" in curl
        answer = subprocess.run(
            ["bash", "-c", curl], capture_output=True, text=True, env=env, check=True, timeout=60
        ).stdout
        assert json.loads(answer)["choices"][0]["message"]["content"]
        snippet = out[out.index("python3 - <<'EOF'") : out.index("\nEOF\n") + 5]
        env_py = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
        printed = subprocess.run(
            ["bash", "-c", snippet.replace("python3", sys.executable, 1)],
            capture_output=True,
            text=True,
            env=env_py,
            timeout=60,
        )
        assert printed.returncode == 0 and printed.stdout.strip(), printed.stderr
        assert f"fleetgate check {HOMELAB}" in out
        assert "getting-started.md" in out and "gateway.md" in out
        assert out.rstrip().endswith("Ctrl-C stops everything.")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_commands_given_the_fleet_file_use_the_running_up(tmp_path: Path, monkeypatch) -> None:
    """smoke, burst, health, top and check given the fleet file of a running `up` aim at it
    (and say so), check starts no fleet of its own, a second `up` of the file is refused, and the
    private state file is gone once `up` stops on Ctrl-C."""
    from typer.testing import CliRunner

    from fleetgate.cli import app
    from fleetgate.local import find_running, state_dir

    admin = "sk-admin-of-this-up-0123"
    proc, out, env = _start_up(tmp_path, "--port", "0", "--speed", "20", FLEETGATE_ADMIN_KEY=admin)
    runner = CliRunner()
    try:
        url = re.search(r"gateway: (http://127.0.0.1:\d+)", out).group(1)  # type: ignore[union-attr]
        env_in = {
            "XDG_RUNTIME_DIR": str(tmp_path),
            "FLEETGATE_API_KEY": None,
            "FLEETGATE_ADMIN_KEY": None,
            "COLUMNS": "200",
        }
        record_dir = tmp_path / "fleetgate"
        [record_file] = list(record_dir.iterdir())
        assert record_file.stat().st_mode & 0o777 == 0o600
        assert record_dir.stat().st_mode & 0o777 == 0o700
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        assert state_dir() == record_dir
        record = find_running(HOMELAB)
        # any spelling of the path finds it
        assert record is not None and find_running(Path(os.path.relpath(HOMELAB))) == record
        assert record.url == url and record.pid == proc.pid and record.admin_key == admin
        assert record.api_key and record.api_key in out

        smoke = runner.invoke(app, ["smoke", str(HOMELAB), "--json"], env=env_in)
        assert smoke.exit_code == 0, smoke.output
        assert json.loads(smoke.stdout)["url"] == url
        assert f"fleetgate up is running {HOMELAB} here at {url}" in " ".join(smoke.stderr.split())
        burst = runner.invoke(
            app, ["burst", str(HOMELAB), "--requests", "4", "--max-errors", "0"], env=env_in
        )
        assert burst.exit_code == 0, burst.output
        assert url in burst.stdout
        health = runner.invoke(app, ["health", str(HOMELAB)], env=env_in)
        assert health.exit_code == 0, health.output
        assert url in health.stdout and "127.0.0.1" in health.stdout
        assert "lan" not in health.stdout
        top = runner.invoke(app, ["top", str(HOMELAB), "--once"], env=env_in)
        assert top.exit_code == 0, top.output
        assert "wintermute" in top.stdout and "lan" not in top.stdout
        check = runner.invoke(app, ["check", str(HOMELAB), "--no-rollback", "--json"], env=env_in)
        assert check.exit_code == 0, check.output
        assert json.loads(check.stdout)["url"] == url  # the running fleet, not a second one

        again = _up(str(HOMELAB), "--port", "0", env=env)
        assert again.returncode == 1
        assert f"fleetgate up is already running {HOMELAB} at {url}" in again.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert list((tmp_path / "fleetgate").iterdir()) == []


def test_a_stale_record_is_ignored_and_removed(tmp_path: Path, monkeypatch) -> None:
    """`up` killed with SIGKILL leaves its file: a dead pid means no fleet runs."""
    from fleetgate.local import find_running
    from fleetgate.local.record import record_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = record_path(HOMELAB)
    path.parent.mkdir(mode=0o700)
    path.write_text(
        json.dumps(
            {
                "fleet_file": str(HOMELAB.resolve()),
                "pid": dead.pid,
                "url": "http://127.0.0.1:9",
                "api_key": "fg-x",
                "gateway_port": 9,
                "ports": {"wintermute": 10},
            }
        )
    )
    assert find_running(HOMELAB) is None
    assert not path.exists()
    # a live pid (ours) with the same record is found; a record for another file is not
    record = {
        "fleet_file": str(HOMELAB.resolve()),
        "pid": os.getpid(),
        "url": "http://127.0.0.1:9",
        "api_key": None,
        "gateway_port": 9,
        "ports": {},
    }
    path.write_text(json.dumps(record))
    found = find_running(HOMELAB)
    assert found is not None and found.url == "http://127.0.0.1:9"
    path.write_text(json.dumps({**record, "fleet_file": "/elsewhere/fleet.yaml"}))
    assert find_running(HOMELAB) is None
    path.write_text("not json")
    assert find_running(HOMELAB) is None


async def test_next_steps_refer_to_a_key_from_the_environment_never_print_it() -> None:
    from fleetgate.cli.up import next_steps

    secret = "sk-from-the-environment-0123"
    fleet = load_fleet(HOMELAB, env={"FLEETGATE_API_KEY": secret}).fleet
    async with local_fleet(fleet, gateway_port=0, speed=10) as running:
        text = next_steps(running, HOMELAB)
    assert secret not in text
    assert 'Authorization: Bearer $FLEETGATE_API_KEY"' in text
    assert 'api_key=os.environ["FLEETGATE_API_KEY"]' in text
    assert f"{running.gateway_url}/v1" in text
