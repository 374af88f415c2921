"""The contract between the protocol layer and a model: what the mock and real servers implement.

A backend does no HTTP and no validation of limits: the app factory validates every request
with ``bbt.protocol.check_*`` before calling it, so a backend may assume shapes, ids and
texts are within :attr:`Backend.info`'s limits. It must still reject inputs it alone can
judge (e.g. a text whose mask token is truncated away) by raising ProtocolViolation.

This module imports neither FastAPI nor torch, so the tuner can use a backend in-process,
and it lives in :mod:`bbt.protocol` (not :mod:`bbt.server`) so that the client's
``LocalClient`` depends on the contract only: ``import bbt`` loads no server code.
:mod:`bbt.server.backend` re-exports it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from bbt.protocol import ModelInfo, Usage
from bbt.protocol.features import Pooling, no_features
from bbt.protocol.score import no_score

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


class Backend(ABC):
    """A language model that scores soft prompts: a masked LM at its mask token, or a causal LM
    at the token after each text (``info.kind``)."""

    @property
    @abstractmethod
    def info(self) -> ModelInfo:
        """Model discovery data, including the request limits the app enforces."""

    @abstractmethod
    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        """Token ids and token strings for each text."""

    @abstractmethod
    def embed(self, token_ids: IntArray) -> FloatArray:
        """Input embeddings of ``token_ids``: shape [N, H], float32."""

    @abstractmethod
    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        """Logits at each text's mask position for every prompt: shape [P, B, C], float32.

        ``prompts`` has shape [P, n, H] (n may be 0). Row ``[i, j]`` must depend only on
        prompt i and text j: results may not change with how a client splits its work.
        """

    def features(
        self, prompts: FloatArray, texts: list[str], pooling: Pooling
    ) -> tuple[FloatArray, Usage]:
        """Feature vectors [P, B, F], float32, of each text under each prompt (protocol 1.3).

        ``prompts`` has shape [P, n, H] (n may be 0: the texts alone), prepended as in
        :meth:`logits`. ``pooling`` is ``"mean"`` (the last hidden state averaged over the
        sequence's tokens, padding and prompt positions left out) or ``"mask"`` (at the
        scored position). Optional: a backend that offers it also lists ``"features"`` in
        its :attr:`info`'s capabilities; this default refuses.
        """
        raise no_features(self.info.id)

    def score(self, texts: list[str]) -> tuple[list[float], list[int], Usage]:
        """Each text's summed token log-probability and the tokens it covers (protocol 1.6,
        :mod:`bbt.protocol.score`). Optional: a causal LM backend that offers it also lists
        ``"score"`` in its :attr:`info`'s capabilities; this default refuses.
        """
        raise no_score(self.info.id)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, model memory)."""
