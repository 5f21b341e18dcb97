"""Any model by its Hugging Face id: the HF cache first, then the Hub (through HF_ENDPOINT).

The cache is laid out as huggingface_hub writes it (``models--org--name/refs/main``,
``snapshots/<commit>/`` linking into ``blobs/``); the Hub is a local aiohttp server speaking
the resolve protocol (HEAD with ``X-Repo-Commit``/``ETag``, ranged GET, ``X-Error-Code``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants  # noqa: F401  (its import-time settings, read before any test sets HF_HUB_OFFLINE)
import pytest
from aiohttp import web
from typer.testing import CliRunner

from fleetgate.cli import app
from fleetgate.models import UnknownModelError, load_model_info
from fleetgate.plan import PlanInput, plan_deployment

DATA = Path(__file__).parent / "plan_data"
QWEN_CONFIG = (DATA / "configs" / "Qwen2.5-1.5B-Instruct.json").read_bytes()
COMMIT = "8faed761d45a263340a0528343f099c05c9a4323"


def safetensors(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A real safetensors file: 8-byte header size, JSON header, then the tensor data."""
    itemsize = {"BF16": 2, "F32": 4, "U8": 1, "F8_E4M3": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = itemsize[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


WEIGHTS = safetensors(
    {"model.embed_tokens.weight": ("BF16", [1024, 64]), "lm_head.scale": ("F32", [256])}
)
WEIGHT_BYTES = 1024 * 64 * 2 + 256 * 4


def write_cache(
    root: Path, repo: str, files: dict[str, bytes], *, ref: str = "main", commit: str = COMMIT
) -> Path:
    """Lay ``files`` out in ``root`` as huggingface_hub's cache does; returns the snapshot."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


# --- the cache, offline ------------------------------------------------------------------------


def test_a_model_outside_the_catalog_plans_offline_from_the_cache(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_cache(
        hf_cache, "acme/qwen-finetune", {"config.json": QWEN_CONFIG, "model.safetensors": WEIGHTS}
    )
    info = load_model_info("acme/qwen-finetune")
    assert info.arch.num_layers == 28 and info.arch.num_kv_heads == 2
    assert info.arch.architecture == "Qwen2ForCausalLM"
    assert info.weight_bytes == WEIGHT_BYTES
    assert info.weight_dtypes == {"BF16": 1024 * 64 * 2, "F32": 1024}
    assert info.source == f"HF cache (snapshot {COMMIT[:12]})"
    plan = plan_deployment(PlanInput("d", info, 23.55, "RTX 4090", max_model_len=8192))
    assert plan.model_source.startswith("HF cache") and plan.weights_exact
    # 28 layers x 2 KV heads x 128 x 2 (K, V) x 2 bytes
    assert plan.kv_bytes_per_token == 28 * 2 * 128 * 2 * 2


def test_cache_without_downloaded_weights_sizes_them_from_the_shapes(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = write_cache(hf_cache, "acme/qwen-finetune", {"config.json": QWEN_CONFIG})
    (snapshot / "model.safetensors").symlink_to("../../blobs/not-downloaded")
    info = load_model_info("acme/qwen-finetune")
    assert info.weight_bytes is None and info.source.startswith("HF cache")


def test_the_cache_wins_over_the_catalog(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_cache(hf_cache, "Qwen/Qwen2.5-7B-Instruct", {"config.json": QWEN_CONFIG})
    assert load_model_info("Qwen/Qwen2.5-7B-Instruct").arch.num_layers == 28
    assert load_model_info("Qwen/Qwen2.5-7B-Instruct").source.startswith("HF cache")
    # not cached: the bundled catalog answers, offline
    assert load_model_info("Qwen/Qwen2.5-14B-Instruct").source == "bundled catalog"


def test_a_revision_reads_its_own_snapshot(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_cache(hf_cache, "acme/m", {"config.json": QWEN_CONFIG})
    other = json.loads(QWEN_CONFIG) | {"num_hidden_layers": 14}
    write_cache(
        hf_cache, "acme/m", {"config.json": json.dumps(other).encode()}, ref="v2", commit="b" * 40
    )
    assert load_model_info("acme/m").arch.num_layers == 28
    assert load_model_info("acme/m", revision="v2").arch.num_layers == 14


def test_offline_and_not_cached_says_what_to_do(hf_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError) as info:
        load_model_info("acme/never-downloaded")
    message = str(info.value)
    assert "\n" not in message
    assert "not in the HF cache" in message and "HF_HUB_OFFLINE" in message
    assert "--config PATH" in message and "hf download acme/never-downloaded" in message


def test_cli_plans_a_cached_model_offline(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_cache(
        hf_cache, "acme/qwen-finetune", {"config.json": QWEN_CONFIG, "model.safetensors": WEIGHTS}
    )
    result = CliRunner().invoke(
        app, ["plan", "--model", "acme/qwen-finetune", "--gpu", "RTX 3060 12GB", "--json"]
    )
    assert result.exit_code == 0, result.output
    [p] = json.loads(result.stdout)
    assert p["model_source"].startswith("HF cache") and p["weights_exact"] is True


def test_a_fleet_file_model_takes_the_same_path(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fleetgate.fleetfile import load_fleet
    from fleetgate.plan import plan_fleet

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_cache(hf_cache, "acme/qwen-finetune", {"config.json": QWEN_CONFIG})
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "hosts:\n  box:\n    gpus: [RTX 4090]\n"
        "deployments:\n  main:\n    host: box\n    model: acme/qwen-finetune\n"
        "    max_model_len: 8192\n"
    )
    [plan] = plan_fleet(load_fleet(fleet, strict_env=False).fleet)
    assert plan.model_source.startswith("HF cache") and plan.fits


# --- the Hub, through HF_ENDPOINT -------------------------------------------------------------


@dataclass
class FakeHub:
    """Repos by id: files, and a token that a gated repo asks for."""

    repos: dict[str, dict[str, bytes]]
    gated: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        filename = request.match_info["file"]
        self.requests.append((request.method, filename, request.headers.get("Range")))
        files = self.repos.get(repo)
        if files is None:
            return web.Response(status=404, headers={"X-Error-Code": "RepoNotFound"})
        want = self.gated.get(repo)
        if want and request.headers.get("Authorization") != f"Bearer {want}":
            return web.Response(status=401, headers={"X-Error-Code": "GatedRepo"})
        if filename not in files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        content = files[filename]
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": '"' + hashlib.sha256(content).hexdigest() + '"',
            "Content-Length": str(len(content)),
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            return web.Response(headers=headers)
        if rng := request.headers.get("Range"):
            start, _, end = rng.removeprefix("bytes=").partition("-")
            part = content[int(start) : int(end) + 1 if end else None]
            headers["Content-Length"] = str(len(part))
            headers["Content-Range"] = f"bytes {start}-{int(start) + len(part) - 1}/{len(content)}"
            return web.Response(status=206, body=part, headers=headers)
        return web.Response(body=content, headers=headers)


@pytest.fixture
def hub(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub(
        repos={
            "acme/qwen-finetune": {"config.json": QWEN_CONFIG, "model.safetensors": WEIGHTS},
            "acme/gated": {"config.json": QWEN_CONFIG, "model.safetensors": WEIGHTS},
        },
        gated={"acme/gated": "hf_secret_token"},
    )
    loop = asyncio.new_event_loop()
    server = web.Application()
    server.router.add_route("*", "/{org}/{name}/resolve/{rev}/{file}", fake.resolve)
    runner = web.AppRunner(server)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def test_online_config_and_safetensors_headers_without_weights(hub: FakeHub, hf_cache) -> None:
    info = load_model_info("acme/qwen-finetune")
    assert info.arch.num_layers == 28 and info.weight_bytes == WEIGHT_BYTES
    assert info.source == "Hugging Face Hub (revision main)"
    # config.json went into the HF cache, as vLLM would put it
    assert (hf_cache / "models--acme--qwen-finetune" / "refs" / "main").read_text() == COMMIT
    # the weights were read by range requests on their header only
    gets = [(f, r) for m, f, r in hub.requests if m == "GET" and f == "model.safetensors"]
    assert gets and all(r is not None and r.startswith("bytes=0-") for _, r in gets)


def test_online_no_such_repo_is_one_line(hub: FakeHub) -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model_info("acme/does-not-exist")
    message = str(info.value)
    assert "no model 'acme/does-not-exist' on the Hub" in message and "\n" not in message
    assert "--config PATH" in message


def test_online_gated_without_token_says_set_hf_token(hub: FakeHub, monkeypatch) -> None:
    with pytest.raises(UnknownModelError) as info:
        load_model_info("acme/gated")
    assert "gated" in str(info.value) and "set HF_TOKEN" in str(info.value)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    assert load_model_info("acme/gated").weight_bytes == WEIGHT_BYTES


def test_unreachable_hub_and_not_cached(hf_cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(UnknownModelError) as info:
        load_model_info("acme/qwen-finetune")
    message = str(info.value)
    assert "cannot be reached" in message and "--config PATH" in message and "\n" not in message
