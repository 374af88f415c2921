"""What it takes to be a :class:`bbt.client.Service`, checked by behaviour.

``isinstance(x, Service)`` against a runtime-checkable Protocol only checks that attributes
with the right *names* exist: an object whose ``logits`` takes other arguments or returns a
list passes it. This checks every member's signature against the Protocol's and calls each
one, checking what comes back.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from bbt.client import Service, UsageStats
from bbt.protocol import ModelInfo, TokenizeResponse

METHODS = ("model_info", "tokenize", "embed", "logits")


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in ("self",)]


def assert_is_service(obj: Any, texts: list[str]) -> None:
    """Fail unless ``obj`` has the Service members with the Protocol's signatures and they
    behave: discovery, tokenisation, embeddings [k, H] and logits [P, B, C], float32, with
    ``usage.calls`` counting the candidates. ``texts`` must hold the model's mask token."""
    for name in METHODS:
        want, got = _params(getattr(Service, name)), _params(getattr(type(obj), name))
        # Same parameters in the same order and kinds with the same defaults; an
        # implementation may add keyword-only extras after them.
        assert got[: len(want)] == want, (name, got, want)
        assert all(kind == inspect.Parameter.KEYWORD_ONLY for _, kind, _ in got[len(want) :])

    info = obj.model_info()
    assert isinstance(info, ModelInfo)
    h = info.hidden_size

    tok = obj.tokenize(texts)
    assert isinstance(tok, TokenizeResponse)
    assert len(tok.ids) == len(texts)
    assert all(isinstance(i, int) for ids in tok.ids for i in ids)

    emb = obj.embed([1, 2])
    assert isinstance(emb, np.ndarray)
    assert emb.dtype == np.float32
    assert emb.shape == (2, h)

    before = obj.usage
    assert isinstance(before, UsageStats)
    calls = before.calls
    prompts = np.zeros((2, 1, h), dtype=np.float32)
    out = obj.logits(prompts, texts, [1, 2])
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (2, len(texts), 2)
    assert np.isfinite(out).all()
    assert obj.usage.calls == calls + 2  # one call per candidate prompt
