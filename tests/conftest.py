"""Shared test options: --no-vllm and --no-ssh skip the tests that need those components."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.tiny_model import cached_tiny_model, vllm_python
from tests.support.vllm_server import VllmServer

# The session's real vLLM: small enough to start fast, shaped like the sim's default config.
VLLM_SERVED_NAME = "tiny"
VLLM_MAX_MODEL_LEN = 2048
VLLM_MAX_NUM_SEQS = 4


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-vllm", action="store_true", help="skip tests needing a real vLLM")
    parser.addoption("--no-ssh", action="store_true", help="skip tests needing OpenSSH")


@pytest.fixture(autouse=True)
def _no_running_up_of_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A `fleetgate up` the developer runs meanwhile must not change what the tests aim at:
    every test gets its own (empty) per-user state directory, as do the processes it starts."""
    state = tmp_path / "xdg-runtime"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(state))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker in ("vllm", "ssh"):
        if config.getoption(f"--no-{marker}"):
            skip = pytest.mark.skip(reason=f"--no-{marker} given")
            for item in items:
                if marker in item.keywords:
                    item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The default tiny model, built once and cached in ~/.cache/fleetgate across runs."""
    if vllm_python() is None:
        pytest.skip("FLEETGATE_VLLM_PYTHON is not set (bash .ci/run sets it up)")
    return cached_tiny_model()


@pytest.fixture(scope="session")
def vllm_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """ONE real vLLM CPU server for the whole session (served as ``tiny``, 2048 ctx, 4 seqs)."""
    server = VllmServer(
        model_dir=tiny_model_dir,
        served_name=VLLM_SERVED_NAME,
        max_model_len=VLLM_MAX_MODEL_LEN,
        max_num_seqs=VLLM_MAX_NUM_SEQS,
        log_path=tmp_path_factory.mktemp("vllm") / "vllm.log",
    )
    with server:
        yield server
