"""Deploy, rollback, releases and backups on the local transport, against a small stand-in server.

The stand-in speaks the three endpoints the health gate uses and, like vLLM, refuses to start
when ``--max-model-len`` exceeds what its (configured) KV space holds. The real-vLLM proof of the
same story is in test_deploy_vllm.py; this one is fast and covers the release bookkeeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleetgate.cli.app import app
from fleetgate.deploy import (
    GateTarget,
    HostDeployer,
    LocalTransport,
    diff_releases,
    host_ops,
    probe,
)
from fleetgate.fleetfile import load_fleet
from fleetgate.plan import planned_kv_tokens
from fleetgate.render import render_host, source_of

PLAN_DATA = Path(__file__).parent / "plan_data"

STAND_IN = r"""
import argparse, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--model"); p.add_argument("--served-model-name"); p.add_argument("--host")
p.add_argument("--port", type=int); p.add_argument("--max-model-len", type=int)
args, _ = p.parse_known_args()
limit = int(os.environ.get("STAND_IN_KV_TOKENS", "1000000"))
print("stand-in loading", args.served_model_name, args.max_model_len, flush=True)
time.sleep(0.5)
# real vLLM 0.8 start-up lines (tests/plan_data/logs/vllm-17122-l40s-llama31-8b.log), sized as
# the stand-in's KV space
print("INFO 04-24 16:33:00 [gpu_model_runner.py:1316] Model loading took 14.9889 GiB and "
      "3.652170 seconds")
print(f"INFO 04-24 16:33:13 [kv_cache_utils.py:634] GPU KV cache size: {limit:,} tokens")
print(f"INFO 04-24 16:33:13 [kv_cache_utils.py:637] Maximum concurrency for "
      f"{args.max_model_len:,} tokens per request: {limit / args.max_model_len:.2f}x", flush=True)
if args.max_model_len > limit:
    print(f"ValueError: To serve at least one request with the models's max seq len "
          f"({args.max_model_len}), the estimated maximum model length is {limit}.", flush=True)
    sys.exit(1)

class H(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        if self.path == "/health":
            return self._send(200, None)
        if self.path == "/v1/models":
            card = {"id": args.served_model_name, "max_model_len": args.max_model_len}
            return self._send(200, {"object": "list", "data": [card]})
        self._send(404, {"error": {"message": "not found"}})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = body.get("model") == args.served_model_name
        self._send(200 if ok else 404, {"choices": [{"text": "x"}]} if ok else {"error": {}})
    def log_message(self, *a):
        pass

ThreadingHTTPServer((args.host, args.port), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stand_in_python(directory: Path) -> Path:
    """An executable that takes vLLM's ``python -m vllm...`` command line and runs the stand-in."""
    (directory / "stand_in.py").write_text(STAND_IN)
    exe = directory / "stand-in-python"
    exe.write_text(f'#!/usr/bin/env bash\nshift 2\nexec python3 {directory / "stand_in.py"} "$@"\n')
    exe.chmod(0o755)
    return exe


def tiny_config(directory: Path) -> Path:
    """A model directory with only a config.json: what the planner reads (``deploy`` refuses a
    fleet ``validate`` rejects, and validate plans the memory of each deployment)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 4096,
        "torch_dtype": "bfloat16",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def write_fleet(
    path: Path,
    *,
    host: dict,
    python: Path,
    port: int,
    max_model_len: int,
    kv_tokens: int,
    model_path: Path | None = None,
) -> Path:
    fleet = {
        "version": 1,
        "name": "test",
        "hosts": {"box": {**host, "gpus": [{"memory_gib": 24, "arch": "ampere"}]}},
        "deployments": {
            "tiny": {
                "host": "box",
                "port": port,
                "model": "tiny",
                "model_path": str(model_path or tiny_config(path.parent / "tiny-model")),
                "served_model_name": "tiny",
                "max_model_len": max_model_len,
                "max_num_seqs": 2,
                "runtime": "process",
                "python": str(python),
                "env": {"STAND_IN_KV_TOKENS": str(kv_tokens)},
            }
        },
    }
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def served_len(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
        return json.load(response)["data"][0]["max_model_len"]


@pytest.fixture
def box(tmp_path: Path):
    """A local host with a workdir under tmp_path; stops whatever the tests started there."""
    workdir = tmp_path / "host"
    yield {"address": "127.0.0.1", "transport": "local", "workdir": str(workdir)}
    for script in sorted(workdir.glob("releases/*/*/start-vllm.sh")):
        subprocess.run(["bash", str(script), "stop"], capture_output=True, timeout=60)


def test_deploy_rollback_and_releases_on_the_local_host(tmp_path: Path, box: dict) -> None:
    python = stand_in_python(tmp_path)
    port = free_port()
    fleet = tmp_path / "fleet.yaml"
    runner = CliRunner()
    opts = ["--backups", str(tmp_path / "backups"), "--gate-timeout", "60"]

    def deploy(max_model_len: int, *extra: str):
        write_fleet(
            fleet, host=box, python=python, port=port, max_model_len=max_model_len, kv_tokens=2048
        )
        return runner.invoke(app, ["deploy", str(fleet), *opts, *extra])

    first = deploy(1024)
    assert first.exit_code == 0, first.output
    assert served_len(port) == 1024
    releases_dir = tmp_path / "host" / "releases"
    (v1,) = [p.name for p in releases_dir.iterdir()]
    assert (tmp_path / "host" / "current").resolve() == releases_dir / v1

    dry = deploy(4096, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "--max-model-len 4096" in dry.output and "--max-model-len 1024" in dry.output
    assert [p.name for p in releases_dir.iterdir()] == [v1]  # nothing installed

    bad = deploy(4096)
    assert bad.exit_code == 1, bad.output
    assert "rolled back" in bad.output
    assert "estimated maximum model length is 2048" in bad.output  # from the server's log
    assert "healthy again" in bad.output
    assert served_len(port) == 1024
    assert (tmp_path / "host" / "current").resolve() == releases_dir / v1
    (backup,) = (tmp_path / "backups" / "box").iterdir()
    assert json.loads((backup / "BACKUP.json").read_text())["release"] == v1

    good = deploy(2000)
    assert good.exit_code == 0, good.output
    assert served_len(port) == 2000
    assert len(list((tmp_path / "backups" / "box").iterdir())) == 2  # never overwritten

    listing = runner.invoke(app, ["releases", str(fleet), "box"])
    assert listing.exit_code == 0, listing.output
    assert listing.output.count("failed") == 1

    back = runner.invoke(app, ["rollback", str(fleet), "box", "--gate-timeout", "60"])
    assert back.exit_code == 0, back.output
    assert served_len(port) == 1024  # the previous GOOD release, not the failed one
    assert (tmp_path / "host" / "current").resolve() == releases_dir / v1

    v3 = max(p.name for p in releases_dir.iterdir())
    forward = runner.invoke(
        app, ["rollback", str(fleet), "box", "--to", v3, "--gate-timeout", "60"]
    )
    assert forward.exit_code == 0, forward.output
    assert served_len(port) == 2000

    # the service dies (or a deploy was killed after the switch): the same deploy recovers it
    subprocess.run(
        ["bash", str(tmp_path / "host" / "current" / "tiny" / "start-vllm.sh"), "stop"], check=True
    )
    assert not probe(GateTarget("tiny", "vllm", f"http://127.0.0.1:{port}", "tiny", 2000)).ok
    again = deploy(2000)
    assert again.exit_code == 0, again.output
    assert "unchanged" in again.output
    assert served_len(port) == 2000

    snap = runner.invoke(app, ["backup", str(fleet), "--backups", str(tmp_path / "backups")])
    assert snap.exit_code == 0, snap.output
    assert len(list((tmp_path / "backups" / "box").iterdir())) == 3


def test_a_first_deploy_that_fails_leaves_nothing_running(tmp_path: Path, box: dict) -> None:
    python = stand_in_python(tmp_path)
    port = free_port()
    fleet = write_fleet(
        tmp_path / "fleet.yaml",
        host=box,
        python=python,
        port=port,
        max_model_len=4096,
        kv_tokens=100,
    )
    result = CliRunner().invoke(
        app, ["deploy", str(fleet), "--gate-timeout", "60", "--backups", str(tmp_path / "b")]
    )
    assert result.exit_code == 1, result.output
    assert "no earlier release to roll back to" in result.output
    assert not probe(GateTarget("tiny", "vllm", f"http://127.0.0.1:{port}", "tiny", 4096)).ok


def test_health_command_reports_each_unit(tmp_path: Path, box: dict) -> None:
    python = stand_in_python(tmp_path)
    port = free_port()
    fleet = write_fleet(
        tmp_path / "fleet.yaml",
        host=box,
        python=python,
        port=port,
        max_model_len=512,
        kv_tokens=4096,
    )
    runner = CliRunner()
    down = runner.invoke(app, ["health", str(fleet)])
    assert down.exit_code == 1
    assert "not answering" in down.output
    assert (
        runner.invoke(app, ["deploy", str(fleet), "--backups", str(tmp_path / "b")]).exit_code == 0
    )
    up = runner.invoke(app, ["health", str(fleet)])
    assert up.exit_code == 0, up.output


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_dry_run_against_an_unreachable_host_still_shows_the_release(tmp_path: Path) -> None:
    """Nothing listens on the port: ssh fails, and the dry run says so and lists the files."""
    port = free_port()
    host = {"address": "127.0.0.1", "transport": "ssh", "ssh": {"user": "ops", "port": port}}
    fleet = write_fleet(
        tmp_path / "fleet.yaml",
        host=host,
        python=Path("/usr/bin/python3"),
        port=free_port(),
        max_model_len=1024,
        kv_tokens=2048,
    )
    result = CliRunner().invoke(app, ["deploy", str(fleet), "--dry-run"])
    assert result.exit_code == 1, result.output  # no diff could be made
    assert "box: dry run, no diff" in result.output
    assert "could not read the host's release for the diff: ssh ops@127.0.0.1" in result.output
    assert "would run tiny (vllm, process) at http://127.0.0.1:" in result.output
    assert "would install 4 files:" in result.output
    for path in ("tiny/start-vllm.sh", "tiny/vllm.service", "tiny/vllm-args.txt", "manifest.json"):
        assert f"    {path} (" in result.output, path


def test_diff_ignores_release_metadata() -> None:
    old = {"a.sh": b"x\n", "release.json": b"{}"}
    assert diff_releases(old, {"a.sh": b"x\n", "release.json": b"{1}"}) == ""
    assert "+y" in diff_releases(old, {"a.sh": b"y\n"})


def test_the_first_failed_gate_skips_the_rest_and_rolls_back_at_once(
    tmp_path: Path, box: dict
) -> None:
    python = stand_in_python(tmp_path)
    fleet = tmp_path / "fleet.yaml"
    ports = free_port(), free_port()
    steps: list[str] = []

    def deploy(tiny_len: int):
        write_fleet(
            fleet, host=box, python=python, port=ports[0], max_model_len=tiny_len, kv_tokens=2048
        )
        doc = yaml.safe_load(fleet.read_text())
        doc["deployments"]["other"] = {
            **doc["deployments"]["tiny"],
            "port": ports[1],
            "served_model_name": "other",
            "max_model_len": 512,
        }
        fleet.write_text(yaml.safe_dump(doc, sort_keys=False))
        deployer = HostDeployer(
            "box",
            host_ops(LocalTransport(), "linux", box["workdir"]),
            backups=tmp_path / "backups",
            gate_timeout_s=60,
            step=steps.append,
        )
        steps.clear()
        return deployer.deploy(render_host(source_of(load_fleet(fleet)), "box"), fleet_file="f")

    good = deploy(1024)
    assert good.ok, good.messages
    assert [s for s in steps if s.startswith("health gate")] == [
        "health gate: tiny",
        "health gate: other",
    ]

    bad = deploy(4096)  # tiny cannot start; other would be healthy but is never probed
    assert not bad.ok and bad.action == "rolled back", bad.messages
    assert [s for s in steps if s.startswith("health gate")] == [
        "health gate: tiny",  # the new release: tiny fails, the gating stops there
        "health gate: tiny",  # the old release again, after the rollback
        "health gate: other",
    ]
    assert "other: health gate skipped (tiny failed)" in bad.messages
    assert not any(m.startswith(f"other ({bad.release})") for m in bad.messages)
    assert "estimated maximum model length is 2048" in bad.log_tail
    assert "other's log" not in bad.log_tail
    assert served_len(ports[0]) == 1024 and served_len(ports[1]) == 512

    # stop: every unit of the release in service, which stays current
    ops = host_ops(LocalTransport(), "linux", box["workdir"])
    deployer = HostDeployer("box", ops, backups=tmp_path / "backups")
    stopped = deployer.stop()
    assert stopped.ok and stopped.release == good.release, stopped.messages
    for name, port in zip(("tiny", "other"), ports, strict=True):
        assert not probe(GateTarget(name, "vllm", f"http://127.0.0.1:{port}", name, None)).ok
    assert ops.state().current == good.release
    # a release whose manifest cannot be read is refused with a message that says so
    (Path(box["workdir"]) / "current" / "manifest.json").write_text('{"units": "?"}')
    refused = deployer.stop()
    assert not refused.ok
    assert "manifest.json cannot be read: fleet: Field required" in refused.messages[0]


def _deploy_killed_at(point: str, fleet: Path, backups: Path) -> None:
    """Run ``fleetgate deploy`` in a process, wait until it pauses at ``point``, SIGKILL it."""
    argv = [sys.executable, "-c", "from fleetgate.cli import main; main()", "deploy", str(fleet)]
    proc = subprocess.Popen(
        [*argv, "--backups", str(backups), "--gate-timeout", "60"],
        env={**os.environ, "FLEETGATE_TEST_PAUSE_AT": point},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if f"paused at {point}" in line:
                break
        else:
            pytest.fail(f"the deploy ended without reaching {point}: {''.join(seen)}")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["uploaded", "switched"])
def test_a_deploy_killed_midway_leaves_a_whole_release_and_the_next_one_recovers(
    tmp_path: Path, box: dict, point: str
) -> None:
    python = stand_in_python(tmp_path)
    port = free_port()
    fleet = tmp_path / "fleet.yaml"
    backups = tmp_path / "backups"
    runner = CliRunner()
    workdir = Path(box["workdir"])

    def write(max_model_len: int) -> None:
        write_fleet(
            fleet, host=box, python=python, port=port, max_model_len=max_model_len, kv_tokens=4096
        )

    write(1024)
    first = runner.invoke(app, ["deploy", str(fleet), "--backups", str(backups)])
    assert first.exit_code == 0, first.output
    (v1,) = [p.name for p in (workdir / "releases").iterdir()]

    write(2000)
    _deploy_killed_at(point, fleet, backups)

    v2 = max(p.name for p in (workdir / "releases").iterdir() if not p.name.startswith("."))
    assert v2 != v1  # the new release directory was created whole before the kill
    current = (workdir / "current").resolve()
    assert current.name == (v1 if point == "uploaded" else v2)
    manifest = json.loads((current / "manifest.json").read_text())
    assert json.loads((current / "release.json").read_text())["release"] == current.name
    assert [u["max_model_len"] for u in manifest["units"]] == [
        1024 if point == "uploaded" else 2000
    ]
    assert (current / manifest["units"][0]["script"]).is_file()
    listing = runner.invoke(app, ["releases", str(fleet), "box"])
    assert listing.exit_code == 0, listing.output
    assert f"current: {current.name}" in listing.output
    if point == "uploaded":
        assert served_len(port) == 1024  # the old units were never stopped

    again = runner.invoke(app, ["deploy", str(fleet), "--backups", str(backups)])
    assert again.exit_code == 0, again.output
    assert served_len(port) == 2000
    final = (workdir / "current").resolve()
    assert json.loads((final / "manifest.json").read_text())["units"][0]["max_model_len"] == 2000


def test_a_deploy_keeps_planned_and_reported_kv_tokens_and_warns_past_ten_percent(
    tmp_path: Path, box: dict
) -> None:
    """The stand-in prints vLLM's own start-up lines; the release keeps the plan beside them."""
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(PLAN_DATA / "configs" / "Qwen2.5-1.5B-Instruct.json", model / "config.json")
    python = stand_in_python(tmp_path)
    port = free_port()
    fleet = tmp_path / "fleet.yaml"
    runner = CliRunner()
    workdir = Path(box["workdir"])

    def write(kv_tokens: int) -> Path:
        return write_fleet(
            fleet,
            host=box,
            python=python,
            port=port,
            max_model_len=1024,
            kv_tokens=kv_tokens,
            model_path=model,
        )

    def deploy(kv_tokens: int):
        write(kv_tokens)
        result = runner.invoke(app, ["deploy", str(fleet), "--backups", str(tmp_path / "b")])
        assert result.exit_code == 0, result.output
        meta = json.loads((workdir / "current" / "release.json").read_text())
        return result, meta

    planned = planned_kv_tokens(load_fleet(write(1)).fleet)["tiny"]
    assert planned > 100_000  # a 1.5B model on 24 GiB: the plan is a real one

    close = planned * 21 // 20  # vLLM found 5% more than planned: recorded, no warning
    first, meta = deploy(close)
    v1 = meta["release"]
    assert meta["kv_cache"] == {"tiny": {"planned_tokens": planned, "reported_tokens": close}}
    assert f"planned {planned:,} KV tokens, vLLM reported {close:,} (-5%)" in first.output
    assert "warning" not in first.output

    far = planned // 2  # half of the plan: a warning with both numbers
    second, meta = deploy(far)
    assert meta["kv_cache"] == {"tiny": {"planned_tokens": planned, "reported_tokens": far}}
    assert meta["previous"] == v1
    warning = second.output[second.output.index("warning:") :]
    assert f"{planned:,}" in warning and f"{far:,}" in warning and "+100%" in warning

    listing = runner.invoke(app, ["releases", str(fleet), "box"])
    assert listing.exit_code == 0, listing.output
    warning = listing.output[listing.output.index("warning:") :]
    assert f"{planned:,}" in warning and f"{far:,}" in warning

    shown = runner.invoke(app, ["plan", str(fleet), "--drift", "--json"])
    assert shown.exit_code == 0, shown.output
    (entry,) = json.loads(shown.output)
    assert entry["in_service"]["release"] == meta["release"]
    assert entry["in_service"]["planned_tokens"] == planned == entry["kv_cache_tokens"]
    assert entry["in_service"]["reported_tokens"] == far
    assert f"{far:,}" in entry["in_service"]["warning"]
    table = runner.invoke(app, ["plan", str(fleet), "--drift"])
    assert table.exit_code == 0, table.output
    assert "warning: drift" in table.output and f"{far:,}" in table.output
    # without --drift the plan reads no host
    assert (
        "in_service" not in json.loads(runner.invoke(app, ["plan", str(fleet), "--json"]).output)[0]
    )
