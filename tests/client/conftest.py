"""Fixtures for client tests: a fake service, and clients wired to it that never sleep."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from bbt.client import AsyncClient, Client

from .fakes import API_KEY, BASE_URL, FakeService, Waits


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No BBT_* variables and a cwd without .env, so only explicit arguments count."""
    for name in list(os.environ):
        if name.startswith("BBT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def make_client(
    no_env: None, service: FakeService, waits: Waits
) -> Iterator[Callable[..., Client]]:
    """Build a :class:`Client` on ``service`` whose retries record their waits, not sleep."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("env_file", None)
        kwargs.setdefault("transport", httpx.MockTransport(service))
        client = Client(**kwargs)
        client._sleep = waits.append
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def make_async_client(
    no_env: None, service: FakeService, waits: Waits
) -> Callable[..., AsyncClient]:
    """Like ``make_client`` for :class:`AsyncClient` (the caller closes it)."""

    def make(**kwargs: Any) -> AsyncClient:
        kwargs.setdefault("base_url", BASE_URL)
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("env_file", None)
        kwargs.setdefault("transport", httpx.MockTransport(service))
        client = AsyncClient(**kwargs)

        async def record(seconds: float) -> None:
            waits.append(seconds)

        client._sleep = record
        return client

    return make
