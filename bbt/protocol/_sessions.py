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
#: The capability of a server that also opens deep sessions (protocol 1.5): one projection
#: per layer, for a model with deep prompts (BBTv2), z of L * d numbers a candidate.
DEEP_SESSIONS_CAPABILITY = "deep_sessions"
#: The protocol version that added deep sessions.
DEEP_SESSIONS_SINCE = "1.5"


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
    layers: list[ProjectionSpec] | None = Field(
        default=None,
        description=(
            "Protocol 1.5, deep sessions (capability 'deep_sessions'): the projections of "
            "layers 1 .. L-1 (``projection`` is layer 0's), so that a candidate is z of "
            "L * d numbers, layer-major, and its prompt [L, n, H]. Same n, H and d as "
            "``projection``; L is the model's num_layers."
        ),
    )
    layer_p0: Tensor | None = Field(
        default=None,
        description="Protocol 1.5: p0 of layers 1 .. L-1, shape [L-1, n, H]; none means 0.",
    )


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
    layers: list[ProjectionSpec] | None = Field(
        default=None,
        description="A deep session's projections of layers 1 .. L-1, as opened.",
        json_schema_extra={"since": DEEP_SESSIONS_SINCE},
    )


class SessionLogitsRequest(_Wire):
    """Score z ``[P, d]`` on B texts: the server projects p = A z + p0 and answers as
    ``/v1/logits`` would for those prompts."""

    z: Tensor = Field(description="Points of the subspace, shape [P, d].")
    texts: list[str] = Field(min_length=1, description="B input texts, each with one mask token.")
    candidate_ids: list[int] = Field(min_length=1)
    output_dtype: DType = "float32"
    varying: list[int] | None = Field(
        default=None,
        description=(
            "Protocol 1.5, deep sessions only: the layers (ascending) whose z differ between "
            "candidates. ``z`` then holds only their columns, [P, len(varying) * d], and "
            "``held`` the rest; absent, ``z`` is the whole [P, L * d]."
        ),
    )
    held: Tensor | None = Field(
        default=None,
        description=(
            "Protocol 1.5, with ``varying``: the z every candidate shares, shape [L * d] "
            "(float32); its entries in the varying layers are ignored."
        ),
    )


class SessionClosed(_Wire):
    id: str
    closed: Literal[True] = True
