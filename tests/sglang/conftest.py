"""The SGLang adapter over bbt.testing's SGLang fake, in-process (an httpx transport)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bbt.sglang import SGLangService
from bbt.testing.sglang_fake import FAKE_BASE_URL, SGLangFake

ServiceFactory = Callable[..., SGLangService]


@pytest.fixture
def fake() -> SGLangFake:
    return SGLangFake()


@pytest.fixture
def model_files(fake: SGLangFake, tmp_path: Path) -> tuple[Path, Path]:
    return fake.write_model_files(tmp_path / "model")


@pytest.fixture
def make_service(fake: SGLangFake, model_files: tuple[Path, Path]) -> Iterator[ServiceFactory]:
    """``make_service(fake=None, **kw)``: an adapter over a fake; retry sleeps recorded."""
    made: list[SGLangService] = []

    def make(other: SGLangFake | None = None, **kw: Any) -> SGLangService:
        cfg, emb = model_files
        kw.setdefault("config", cfg)
        kw.setdefault("embedding_table", emb)
        svc = SGLangService(
            FAKE_BASE_URL, transport=(other or fake).transport(), env_file=None, **kw
        )
        svc.slept = []  # type: ignore[attr-defined]
        svc._sleep = svc.slept.append  # type: ignore[attr-defined]
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()
