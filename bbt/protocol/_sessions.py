"""Projection sessions (protocol 1.1): the server builds p = A z + p0, the client sends z.

Endpoints (new in 1.1; a server lists ``"sessions"`` in ``ModelInfo.capabilities``)::

    POST   /v1/sessions               SessionOpenRequest   -> SessionInfo
    POST   /v1/sessions/{id}/logits   SessionLogitsRequest -> LogitsResponse
    DELETE /v1/sessions/{id}                               -> SessionClosed

A session holds the random projection A (rebuilt by the server from
:class:`ProjectionSpec`, see :mod:`bbt.protocol.projection`) and the initial prompt p0; a
logits call carries z ``[P, d]`` (2 KB per candidate at d = 500 in float32) instead of
prompts ``[P, n, H]`` (205 KB at n = 50, H = 1024).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bbt.protocol._tensor import DType, Tensor
from bbt.protocol.projection import RECIPE_VERSION, Distribution

#: The capability a server lists in ``ModelInfo.capabilities`` when it offers sessions.
SESSIONS_CAPABILITY = "sessions"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectionSpec(_Wire):
    """Everything a server needs to rebuild A bit-exactly (docs/protocol.md)."""

    recipe: str = Field(
        default=RECIPE_VERSION,
        description=(
            "Generator version; 'bbt-projection/1' is the one specified in docs/protocol.md. "
            "A server answers 422 for a version it does not implement."
        ),
    )
    seed: int = Field(ge=0, lt=2**64, description="Seed of NumPy's PCG64 bit generator.")
    n_tokens: int = Field(ge=1, description="n: soft-prompt tokens.")
    hidden_size: int = Field(ge=1, description="H: must equal the model's hidden size.")
    dim: int = Field(ge=1, description="d: the dimension of z.")
    distribution: Distribution = "normal"
    alpha: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    sigma: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    embedding_std: float = Field(
        gt=0, allow_inf_nan=False, description="std_E; A's std is alpha*std_E/(sqrt(d)*sigma)."
    )


class InitialPromptSpec(_Wire):
    """p0, shape [n, H]: a tensor, or something the server resolves. Exactly one of
    ``tensor``, ``token_ids`` (p0 = their input embeddings, one id per prompt token) or
    ``text`` (its tokens' embeddings, without special tokens, repeated cyclically or cut
    to n) may be set; none means p0 = 0."""

    tensor: Tensor | None = Field(default=None, description="p0 itself, shape [n, H].")
    token_ids: list[int] | None = Field(default=None, description="n vocabulary ids.")
    text: str | None = Field(default=None, description="Words whose tokens make p0.")

    @model_validator(mode="after")
    def _at_most_one(self) -> InitialPromptSpec:
        given = [x for x in (self.tensor, self.token_ids, self.text) if x is not None]
        if len(given) > 1:
            raise ValueError("set at most one of tensor, token_ids and text")
        return self


class SessionOpenRequest(_Wire):
    model: str
    projection: ProjectionSpec
    p0: InitialPromptSpec = Field(default_factory=InitialPromptSpec)


class SessionInfo(_Wire):
    """An open session. ``id`` is a bearer secret scoped to the API key that opened it."""

    id: str = Field(description="Unguessable session id; name it in session calls.")
    model: str
    projection: ProjectionSpec
    fingerprint: str = Field(
        description=(
            "SHA-256 fingerprint of the A the server built (bbt.protocol.projection."
            "Projection.fingerprint): a client compares it with its own to know both "
            "sides project alike."
        )
    )
    nbytes: int = Field(ge=0, description="Server memory the session holds (A and p0).")
    idle_timeout_s: float = Field(
        gt=0, description="The session is dropped after this long without a call."
    )


class SessionLogitsRequest(_Wire):
    """Score z ``[P, d]`` on B texts: the server projects p = A z + p0 and answers as
    ``/v1/logits`` would for those prompts."""

    z: Tensor = Field(description="Points of the subspace, shape [P, d].")
    texts: list[str] = Field(min_length=1, description="B input texts, each with one mask token.")
    candidate_ids: list[int] = Field(min_length=1)
    output_dtype: DType = "float32"


class SessionClosed(_Wire):
    id: str
    closed: Literal[True] = True
