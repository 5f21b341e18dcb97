"""Shared test options: --no-vllm and --no-ssh skip the tests that need those components."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-vllm", action="store_true", help="skip tests needing a real vLLM")
    parser.addoption("--no-ssh", action="store_true", help="skip tests needing OpenSSH")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for marker in ("vllm", "ssh"):
        if config.getoption(f"--no-{marker}"):
            skip = pytest.mark.skip(reason=f"--no-{marker} given")
            for item in items:
                if marker in item.keywords:
                    item.add_marker(skip)
