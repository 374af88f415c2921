"""Pytest fixtures for offline tests of code that talks to a bbt service.

Registered through the ``pytest11`` entry point ``bbt``, so they are available in any
project that installs bbt. All of them serve the deterministic :class:`MockBackend`
(H=64, seed 0; its sentiment task: :func:`bbt.server.mock.sample_mock_dataset`).

``mock_client`` is a real :class:`bbt.Client` whose transport is
:class:`~bbt.testing.CoreTransport`: each request runs the server's framework-free core
synchronously in the test's thread (no sockets, no event loop, no FastAPI needed), with
the same validation, envelopes and headers as the HTTP app. For an ``AsyncClient`` pass
``transport=bbt.testing.AsyncCoreTransport(backend)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

# pytest loads this module into every run of every project that installs bbt, used or not, so
# it imports nothing heavy at load: the server (even its framework-free core), FastAPI, uvicorn
# and the fake vLLM are imported inside the fixtures that need them.
if TYPE_CHECKING:
    import respx
    from fastapi import FastAPI

    from bbt.client import Client
    from bbt.server.faults import FaultConfig
    from bbt.server.mock import MockBackend
    from bbt.server.settings import ServerSettings
    from bbt.testing._vllm_server import VLLMFake

LiveFactory = Callable[..., str]


@pytest.fixture
def mock_backend() -> MockBackend:
    """The mock masked LM (numpy, deterministic)."""
    from bbt.server.mock import MockBackend

    return MockBackend()


@pytest.fixture
def mock_app(mock_backend: MockBackend) -> FastAPI:
    """The FastAPI app over ``mock_backend`` (no API keys); needs ``bbt[server]``."""
    from bbt.server.app import create_app
    from bbt.server.settings import ServerSettings

    return create_app(mock_backend, ServerSettings(api_keys=[]))


@pytest.fixture
def mock_client(mock_backend: MockBackend) -> Iterator[Client]:
    """A :class:`bbt.Client` wired in-process to ``mock_backend`` (reads no env or .env)."""
    from bbt.client import Client
    from bbt.testing._transport import MOCK_BASE_URL, CoreTransport

    client = Client(MOCK_BASE_URL, transport=CoreTransport(mock_backend), env_file=None)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mock_respx(mock_backend: MockBackend) -> Iterator[respx.MockRouter]:
    """An active respx router serving the protocol at ``bbt.testing.MOCK_BASE_URL``."""
    from bbt.testing._transport import mock_respx_router

    with mock_respx_router(mock_backend) as router:
        yield router


@pytest.fixture
def live_mock_server_factory() -> Iterator[LiveFactory]:
    """Start mock servers on loopback ports: ``factory(faults=..., settings=..., backend=...)``
    returns the base URL. Every server started is stopped at teardown."""
    from bbt.server.mock import MockBackend
    from bbt.testing._live import LiveServer, live_server

    servers: list[LiveServer] = []

    def start(
        *,
        faults: FaultConfig | None = None,
        settings: ServerSettings | None = None,
        backend: Any = None,
    ) -> str:
        server = live_server(
            backend if backend is not None else MockBackend(), settings=settings, faults=faults
        )
        servers.append(server)
        return server.start().base_url

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def live_mock_server(live_mock_server_factory: LiveFactory) -> str:
    """Base URL of a fault-free mock server (uvicorn) on a free loopback port."""
    return live_mock_server_factory()


@pytest.fixture
def vllm_fake() -> VLLMFake:
    """A :class:`~bbt.testing.vllm_fake.VLLMFake` with vLLM 0.26's API over the causal mock
    (H=64, seed 0)."""
    # From where it is defined: bbt.testing.vllm_fake re-exports these fixtures for old
    # conftests, so importing it here would make the two modules import each other.
    from bbt.testing._vllm_server import VLLMFake

    return VLLMFake()


@pytest.fixture
def live_vllm_fake(vllm_fake: VLLMFake) -> Iterator[str]:
    """Base URL of ``vllm_fake`` served by uvicorn on a free loopback port (``bbt[server]``)."""
    from bbt.testing._vllm_server import serve_vllm_fake

    with serve_vllm_fake(vllm_fake) as url:
        yield url
