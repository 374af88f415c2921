"""Adapters over bbt.testing's vLLM fake, in-process (an httpx transport, no sockets)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
from bbt.vllm import VLLMService

ServiceFactory = Callable[..., VLLMService]


@pytest.fixture
def model_files(vllm_fake: VLLMFake, tmp_path: Path) -> tuple[Path, Path]:
    """The fake model's config.json and input-embedding table, as a user extracts them."""
    return vllm_fake.write_model_files(tmp_path / "model")


@pytest.fixture
def make_service(vllm_fake: VLLMFake, model_files: tuple[Path, Path]) -> ServiceFactory:
    """``make_service(fake=None, table=False, **kw)``: an adapter over a fake (default: the
    ``vllm_fake`` fixture), black-box unless ``table``; sleeps of retries are recorded."""
    made: list[VLLMService] = []

    def make(fake: VLLMFake | None = None, table: bool = False, **kw: Any) -> VLLMService:
        fake = fake or vllm_fake
        cfg, emb = model_files
        kw.setdefault("config", cfg)
        if table:
            kw.setdefault("embedding_table", emb)
        else:
            kw.setdefault("embedding_std", float(fake.table.std()))
        svc = VLLMService(FAKE_BASE_URL, transport=fake.transport(), env_file=None, **kw)
        svc.slept = []  # type: ignore[attr-defined]
        svc._sleep = svc.slept.append  # type: ignore[attr-defined]
        made.append(svc)
        return svc

    return make
