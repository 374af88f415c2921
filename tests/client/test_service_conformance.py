"""The behavioural Service check fails where ``isinstance`` against the Protocol passes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient, Service, UsageStats
from bbt.protocol import ModelInfo, TokenizeResponse

from .fakes import INFO, FakeBackend, texts
from .service_conformance import assert_is_service


class LookAlike:
    """Every member name of Service, none of its behaviour."""

    usage = UsageStats()

    def model_info(self) -> ModelInfo:
        return INFO

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        return TokenizeResponse(
            model=INFO.id, ids=[[1] for _ in texts], tokens=[["a"] for _ in texts]
        )

    def embed(self, token_ids: Sequence[int]) -> Any:
        return np.zeros((len(token_ids), INFO.hidden_size), dtype=np.float32)

    def logits(self, prompts: Any, texts: Sequence[str], candidate_ids: Sequence[int]) -> Any:
        return [[0.0]]  # wrong type and shape, and no usage counted


class WrongSignature(LocalClient):
    def logits(self, prompts: Any, candidate_ids: Sequence[int], texts: Sequence[str]) -> Any:  # type: ignore[override]
        return super().logits(prompts, texts, candidate_ids)


def test_isinstance_passes_look_alikes_the_behavioural_check_does_not() -> None:
    assert isinstance(LookAlike(), Service)  # names only: the reason for the check below
    with pytest.raises(AssertionError):
        assert_is_service(LookAlike(), texts(3))
    wrong = WrongSignature(FakeBackend())
    assert isinstance(wrong, Service)
    with pytest.raises(AssertionError):
        assert_is_service(wrong, texts(3))
    assert_is_service(LocalClient(FakeBackend()), texts(3))
