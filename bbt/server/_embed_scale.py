"""Input embeddings that a model scales inside its embedding layer (Gemma: sqrt(H)).

The Hugging Face backends feed ``inputs_embeds`` built from the rows of the embedding table
(the text's tokens, with the soft prompt spliced in). A model whose embedding *module*
multiplies the looked-up rows by a constant (Gemma's ``*ScaledWordEmbedding``, ``embed_scale``
= sqrt(hidden_size)) never applies that factor to ``inputs_embeds``, so rows taken from the
raw table would reach it about 25 times too small. :class:`ScaledRows` stands in for the
table: indexing it returns the rows exactly as the module's own forward does (row times the
scale, in the weight's dtype), so text tokens, ``embed`` (vocab-initialised p0) and the
embedding statistics that scale random prompts all live in the space the model computes in.
"""

from __future__ import annotations

from typing import Any


def embedding_scale(module: Any) -> Any | None:
    """The scale ``module`` (an input embedding layer) multiplies its rows by, as the tensor
    it uses, or None when it is a plain lookup."""
    scale = getattr(module, "embed_scale", None)
    if scale is None or not hasattr(scale, "to"):
        return None
    return scale


class ScaledRows:
    """A read-only view of an embedding table whose rows come out multiplied by ``scale``
    (in the table's dtype), the way the embedding module's forward returns them."""

    def __init__(self, weight: Any, scale: Any) -> None:
        self.weight = weight
        self.scale = scale.to(device=weight.device, dtype=weight.dtype)

    def __getitem__(self, index: Any) -> Any:
        return self.weight[index] * self.scale

    @property
    def device(self) -> Any:
        return self.weight.device

    @property
    def dtype(self) -> Any:
        return self.weight.dtype

    @property
    def shape(self) -> Any:
        return self.weight.shape


__all__ = ["ScaledRows", "embedding_scale"]
