"""The shipped service contract (bbt.testing.contracts.ServiceContract) passes for every
service bbt ships: LocalClient, the HTTP Client over the mock and over the Hugging Face
server (a tiny random-weight causal LM), and the vLLM adapter over the fake vLLM.

The backend contract's own runs are in tests/server/test_contract.py.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbt.client import Client, LocalClient
from bbt.server import MockBackend, ServerSettings
from bbt.testing import MOCK_BASE_URL, CoreTransport
from bbt.testing.contracts import ServiceContract, assert_is_service
from bbt.testing.contracts.requests import texts


class TestLocalClient(ServiceContract):
    @pytest.fixture
    def service(self) -> LocalClient:
        return LocalClient(MockBackend(hidden_size=16))


class TestClientOverTheMock(ServiceContract):
    @pytest.fixture
    def service(self) -> Iterator[Client]:
        transport = CoreTransport(MockBackend(hidden_size=16), ServerSettings(api_keys=[]))
        with Client(MOCK_BASE_URL, transport=transport, env_file=None) as client:
            yield client


@pytest.mark.skipif(
    not all(importlib.util.find_spec(n) for n in ("torch", "transformers", "tokenizers")),
    reason="needs bbt[serve]",
)
class TestClientOverTheHFServer(ServiceContract):
    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        from bbt.testing.tiny_models import build_tiny_causal_lm

        return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "gpt2", "gpt2")

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, model_dir: Path) -> Iterator[str]:
        from bbt.server.backend import backend_for
        from bbt.testing import live_server

        # The real HTTP server (uvicorn on loopback), as `bbt serve` runs it.
        backend = backend_for(model_dir, num_threads=2)
        with live_server(backend) as server:
            yield server.base_url
        backend.close()

    @pytest.fixture
    def service(self, server: str) -> Iterator[Client]:
        with Client(server, env_file=None) as client:
            yield client


class TestVLLMAdapterOverTheFake(ServiceContract):
    @pytest.fixture
    def service(self, tmp_path: Path) -> Iterator[Any]:
        from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
        from bbt.vllm import VLLMService

        fake = VLLMFake()
        cfg, table = fake.write_model_files(tmp_path / "model")
        # With the input-embedding table: a Service answers embed() (black-box mode cannot).
        svc = VLLMService(
            FAKE_BASE_URL,
            transport=fake.transport(),
            env_file=None,
            config=cfg,
            embedding_table=table,
        )
        yield svc
        svc.close()


def test_the_one_call_check_fails_a_look_alike() -> None:
    class LookAlike(LocalClient):
        def logits(self, prompts: Any, texts: Any, candidate_ids: Any) -> Any:
            return [[0.0]]  # wrong type and shape

    backend = MockBackend(hidden_size=16)
    assert_is_service(LocalClient(backend), texts(backend.info, 2))
    with pytest.raises(AssertionError):
        assert_is_service(LookAlike(backend), texts(backend.info, 2))


class TestSGLangAdapterOverTheFake(ServiceContract):
    @pytest.fixture
    def service(self, tmp_path: Path) -> Iterator[Any]:
        from bbt.sglang import SGLangService
        from bbt.testing.sglang_fake import FAKE_BASE_URL, SGLangFake

        fake = SGLangFake()
        cfg, table = fake.write_model_files(tmp_path / "model")
        svc = SGLangService(
            FAKE_BASE_URL,
            transport=fake.transport(),
            env_file=None,
            config=cfg,
            embedding_table=table,
        )
        yield svc
        svc.close()
