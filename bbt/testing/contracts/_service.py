"""The service contract: what it takes to be a :class:`bbt.client.Service`, checked by
behaviour, as a pytest class to subclass (and :func:`assert_is_service`, the same checks
in one call).

``isinstance(x, Service)`` against a runtime-checkable Protocol only checks that attributes
with the right *names* exist: an object whose ``logits`` takes other arguments or returns a
list passes it. These check every member's signature against the Protocol's and call each
one, checking what comes back. ::

    from bbt.testing.contracts import ServiceContract

    class TestMyService(ServiceContract):
        @pytest.fixture
        def service(self) -> Service:
            return MyService(...)
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from bbt.client import Service, UsageStats
from bbt.protocol import ModelInfo, TokenizeResponse
from bbt.testing.contracts.requests import texts as texts_for

METHODS = ("model_info", "tokenize", "embed", "logits")


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in ("self",)]


def check_signatures(obj: Any) -> None:
    """Each Service member takes the Protocol's parameters, in order, kinds and defaults;
    an implementation may add keyword-only extras after them."""
    for name in METHODS:
        want, got = _params(getattr(Service, name)), _params(getattr(type(obj), name))
        assert got[: len(want)] == want, (name, got, want)
        assert all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind, _ in got[len(want) :])


def check_discovery(obj: Any) -> ModelInfo:
    info = obj.model_info()
    assert isinstance(info, ModelInfo)
    return info


def check_tokenize(obj: Any, texts: list[str]) -> None:
    tok = obj.tokenize(texts)
    assert isinstance(tok, TokenizeResponse)
    assert len(tok.ids) == len(texts)
    assert all(isinstance(i, int) for ids in tok.ids for i in ids)


def check_embed(obj: Any, hidden_size: int) -> None:
    emb = obj.embed([1, 2])
    assert isinstance(emb, np.ndarray)
    assert emb.dtype == np.float32
    assert emb.shape == (2, hidden_size)


def check_logits(obj: Any, texts: list[str], hidden_size: int) -> None:
    """Logits [P, B, C] in float32, finite, with ``usage.calls`` counting the prompts."""
    before = obj.usage
    assert isinstance(before, UsageStats)
    calls = before.calls
    prompts = np.zeros((2, 1, hidden_size), dtype=np.float32)
    out = obj.logits(prompts, texts, [1, 2])
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (2, len(texts), 2)
    assert np.isfinite(out).all()
    assert obj.usage.calls == calls + 2  # one call per candidate prompt


def check_features(obj: Any, texts: list[str], hidden_size: int) -> None:
    """Features [P, B, F] in float32, finite, with ``usage.calls`` counting the prompts, when
    the service offers them (protocol 1.3); otherwise asking is one clear error."""
    from bbt.client.service import FeatureService
    from bbt.errors import InvalidRequestError

    if not isinstance(obj, FeatureService):
        return  # a Service need not have the features calls at all
    if not obj.supports_features():
        with pytest.raises(InvalidRequestError, match="features"):
            obj.features(texts)
        return
    calls = obj.usage.calls
    prompts = np.zeros((2, 1, hidden_size), dtype=np.float32)
    out = obj.features(texts, prompts, pooling="mask")
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape[:2] == (2, len(texts))
    assert np.isfinite(out).all()
    assert obj.usage.calls == calls + 2
    assert obj.features(texts).shape == (1, len(texts), out.shape[2])


def assert_is_service(obj: Any, texts: list[str]) -> None:
    """Fail unless ``obj`` has the Service members with the Protocol's signatures and they
    behave: discovery, tokenisation, embeddings [k, H] and logits [P, B, C], float32, with
    ``usage.calls`` counting the candidates. ``texts`` must hold the model's mask token
    (for a masked LM)."""
    check_signatures(obj)
    h = check_discovery(obj).hidden_size
    check_tokenize(obj, texts)
    check_embed(obj, h)
    check_logits(obj, texts, h)


class ServiceContract:
    """The contract of a client-side service. Subclass it and provide ``service``."""

    @pytest.fixture
    def service(self) -> Any:
        """The service under test (any scope)."""
        raise NotImplementedError("a ServiceContract subclass provides a `service` fixture")

    @pytest.fixture
    def texts(self, service: Any) -> list[str]:
        """Texts the service's model can score (override for a template of your own)."""
        return texts_for(service.model_info(), 3)

    def test_members_have_the_protocols_signatures(self, service: Any) -> None:
        check_signatures(service)

    def test_model_info_describes_the_model(self, service: Any) -> None:
        info = check_discovery(service)
        assert info.hidden_size >= 1
        assert info.kind in ("masked_lm", "causal_lm")

    def test_tokenize_answers_ids_per_text(self, service: Any, texts: list[str]) -> None:
        check_tokenize(service, texts)

    def test_embed_answers_rows_of_the_hidden_size(self, service: Any) -> None:
        check_embed(service, service.model_info().hidden_size)

    def test_logits_shape_dtype_and_usage(self, service: Any, texts: list[str]) -> None:
        check_logits(service, texts, service.model_info().hidden_size)

    def test_features_when_offered(self, service: Any, texts: list[str]) -> None:
        check_features(service, texts, service.model_info().hidden_size)


__all__ = ["ServiceContract", "assert_is_service"]
