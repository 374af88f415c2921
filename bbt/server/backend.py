"""The backend contract, what a backend can do, and the one place a backend is chosen.

:class:`Backend` lives in :mod:`bbt.protocol.backend` so that the client (``LocalClient``)
can use it without importing the server package; ``from bbt.server.backend import
Backend`` keeps working.

Capabilities are protocols over what a backend declares in its :class:`ModelInfo` (what a
client can discover too): :class:`MaskedLM` or :class:`CausalLM` by ``info.kind``,
:class:`DeepPrompts` by the ``deep_prompts`` capability, :class:`Features` by ``features``
(protocol 1.3), :class:`Scores` by ``score`` (1.6). :func:`supports` checks one (not
``isinstance``: every backend has the same members, what differs is what it declares).

:func:`backend_for` is the registry: ``bbt serve``, the embedded server and each Ray replica
ask it for a backend, never choosing among classes themselves. A kind registered with
:func:`register_backend` plugs in without touching them. Factories import their heavy
dependencies (torch) only when called, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bbt.errors import ConfigurationError
from bbt.protocol import DEEP_PROMPTS, FEATURES_CAPABILITY, SCORE_CAPABILITY, ModelInfo, Usage
from bbt.protocol.backend import Backend, FloatArray, IntArray
from bbt.protocol.features import Pooling

ModelRef = str | Path | None


class Declares(Protocol):
    """What every capability below is read from: the model info the backend declares."""

    @property
    def info(self) -> ModelInfo: ...


class MaskedLM(Declares, Protocol):
    """Scores each text at its one mask token (``info.kind == "masked_lm"``)."""


class CausalLM(Declares, Protocol):
    """Scores each text at the next token after it (``info.kind == "causal_lm"``)."""


class DeepPrompts(Declares, Protocol):
    """Takes prompts [P, L, n, H], one slice per layer (BBTv2; ``deep_prompts`` listed)."""


class Features(Declares, Protocol):
    """Answers feature vectors under a prompt (protocol 1.3; ``features`` listed)."""

    def features(
        self, prompts: FloatArray, texts: list[str], pooling: Pooling
    ) -> tuple[FloatArray, Usage]: ...


class Scores(Protocol):
    """Answers each text's token log-probability (protocol 1.6; ``score`` listed)."""

    @property
    def info(self) -> ModelInfo: ...

    def score(self, texts: list[str]) -> tuple[list[float], list[int], Usage]: ...


def supports(backend: Backend, capability: type[Any]) -> bool:
    """Whether ``backend`` declares ``capability`` (one of the protocols above)."""
    info = backend.info
    if capability is MaskedLM:
        return info.kind == "masked_lm"
    if capability is CausalLM:
        return info.kind == "causal_lm"
    if capability is DeepPrompts:
        return DEEP_PROMPTS in info.capabilities
    if capability is Features:
        return FEATURES_CAPABILITY in info.capabilities
    if capability is Scores:
        return SCORE_CAPABILITY in info.capabilities
    raise ValueError(f"unknown backend capability {capability!r}")


@dataclass(frozen=True)
class BackendKind:
    """One kind of backend: how to tell a model is of this kind, and how to build one."""

    name: str
    #: Builds the backend: ``factory(model, **options)``.
    factory: Callable[..., Backend]
    #: Whether this kind serves ``model`` when no kind is named; None: only when named.
    detect: Callable[[ModelRef], bool] | None = None


def _mock(model: ModelRef, **options: Any) -> Backend:
    from bbt.server.mock import MockBackend

    return MockBackend(**options)


def _hf_masked(model: ModelRef, **options: Any) -> Backend:
    from bbt.server.hf import HFBackend

    return HFBackend(model, **options)


def _hf_causal(model: ModelRef, **options: Any) -> Backend:
    from bbt.server.hf_causal import HFCausalBackend

    # A causal LM scores with its own LM head: there is no head to choose. Callers that
    # took a --head from a user refuse a non-default one before loading (bbt serve does).
    options.pop("head", None)
    return HFCausalBackend(str(model), **options)


def _is_causal(model: ModelRef) -> bool:
    from bbt.server.hf_causal import detect_model_kind

    return detect_model_kind(model) == "causal_lm"


# Detection order matters: the first kind whose detect says yes serves the model.
_KINDS: dict[str, BackendKind] = {
    "mock": BackendKind("mock", _mock),
    "hf-causal": BackendKind("hf-causal", _hf_causal, _is_causal),
    "hf-masked": BackendKind("hf-masked", _hf_masked, lambda _: True),
}


def register_backend(
    name: str, factory: Callable[..., Backend], detect: Callable[[ModelRef], bool] | None = None
) -> None:
    """Add a kind of backend (or replace one): ``factory(model, **options)`` builds it.

    With ``detect``, the kind also serves models it recognises when no kind is named; it is
    asked before the built-in Hugging Face kinds.
    """
    kind = BackendKind(name, factory, detect)
    rest = {k: v for k, v in _KINDS.items() if k != name}
    _KINDS.clear()
    _KINDS.update({name: kind, **rest} if detect is not None else {**rest, name: kind})


def backend_kinds() -> list[str]:
    """The registered kinds, in detection order."""
    return list(_KINDS)


def backend_kind(model: ModelRef = None, kind: str | None = None) -> str:
    """The kind that serves ``model``: ``kind`` when named, else the first that detects it."""
    if kind is not None:
        if kind not in _KINDS:
            known = ", ".join(_KINDS)
            raise ConfigurationError(f"unknown backend kind {kind!r}; known: {known}")
        return kind
    return next(k.name for k in _KINDS.values() if k.detect is not None and k.detect(model))


def backend_for(model: ModelRef = None, *, kind: str | None = None, **options: Any) -> Backend:
    """Build the backend serving ``model`` (a directory, a hub name, or None for the
    embedded default): a Hugging Face masked or causal LM by the model's config, or the
    named ``kind`` (``"mock"``: :class:`~bbt.server.mock.MockBackend`). ``options`` go to
    the backend's constructor."""
    return _KINDS[backend_kind(model, kind)].factory(model, **options)


__all__ = [
    "Backend",
    "BackendKind",
    "CausalLM",
    "Declares",
    "DeepPrompts",
    "Features",
    "FloatArray",
    "IntArray",
    "MaskedLM",
    "Scores",
    "backend_for",
    "backend_kind",
    "backend_kinds",
    "register_backend",
    "supports",
]
