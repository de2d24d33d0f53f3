"""Fake OpenAI server and fast client factories for the LLM tests (loopback only, never a proxy)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from krone_jobs.llm.client import Budget, LLMClient
from tests.llm.fake_server import FakeLLM

# A proxy from the environment would swallow loopback requests (stack.md, openai gotcha).
for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1,localhost"]))

FAST = {"timeout": 2.0, "backoff": 0.01, "max_backoff": 0.05}


@pytest.fixture()
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture()
def make_client(fake: FakeLLM) -> Callable[..., LLMClient]:
    """``make_client(**options)``: a client on the fake server with millisecond backoff."""

    def make(base_url: str | None = None, budget: Budget | None = None, **options: Any) -> LLMClient:
        return LLMClient(base_url or fake.base_url, "fake-model", api_key="test-key",
                         budget=budget or Budget(100), **{**FAST, **options})

    return make


@pytest.fixture()
def closed_port() -> str:
    """Base URL of a loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
