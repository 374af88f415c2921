"""The one routing table of the server: every endpoint, its method, body and how it runs.

:class:`~bbt.server._core.ServiceCore` routes every request by it (the ASGI app and the
in-process transports alike), and :mod:`bbt.server._openapi` describes the same table in
the OpenAPI document, so what is served and what is documented cannot drift apart. Pure
data: nothing here imports a web framework.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from bbt.protocol import (
    API_PREFIX,
    EmbeddingsRequest,
    EmbeddingsResponse,
    FeaturesRequest,
    FeaturesResponse,
    Health,
    LogitsRequest,
    LogitsResponse,
    ModelList,
    PromptCreateRequest,
    PromptDeleted,
    PromptList,
    PromptLogitsRequest,
    ScoreRequest,
    ScoreResponse,
    SessionClosed,
    SessionInfo,
    SessionOpenRequest,
    StoredPrompt,
    TokenizeRequest,
    TokenizeResponse,
)
from bbt.protocol.shared import PromptTensor

#: Path of the prompt registry's collection; a prompt is ``{PROMPTS_PATH}/{id}``.
PROMPTS_PATH = f"{API_PREFIX}/prompts"
#: Longest session id accepted in a path (ids are ``token_urlsafe``, far shorter).
MAX_SESSION_ID_CHARS = 128

#: How a route's work runs in an async server: on the event loop (cheap, no I/O), in a
#: worker thread (storage), or in the bounded queue in front of the backend (compute).
Mode = Literal["inline", "thread", "queue"]


@dataclass(frozen=True)
class Route:
    """One endpoint: what it accepts, what it answers and how it is documented."""

    method: str
    path: str  # an OpenAPI path template: "{name}" matches one path segment
    endpoint: str  # the ServiceCore handler, and the operation's name in the document
    response: type[BaseModel]
    body: type[BaseModel] | None = None
    mode: Mode = "inline"
    tag: str = "v1"
    doc: str = ""
    #: Only served when the prompt registry is on (otherwise a 404 naming the capability).
    registry: bool = False
    #: Query parameters, name -> description (all optional strings).
    query: dict[str, str] = field(default_factory=dict)
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        object.__setattr__(self, "pattern", re.compile(regex))


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{API_PREFIX}/models",
        "list_models",
        ModelList,
        doc="Describe the served model: sizes, mask token, embedding statistics, limits.",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/tokenize",
        "tokenize",
        TokenizeResponse,
        TokenizeRequest,
        "queue",
        doc="Split texts into the model's token ids and token strings.",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/embeddings",
        "embeddings",
        EmbeddingsResponse,
        EmbeddingsRequest,
        "queue",
        doc="Look up input embeddings of token ids.",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/logits",
        "logits",
        LogitsResponse,
        LogitsRequest,
        "queue",
        doc="Score P soft prompts on B texts: mask-position logits [P, B, C] of candidates.",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/features",
        "features",
        FeaturesResponse,
        FeaturesRequest,
        "queue",
        doc="Feature vectors [P, B, F] of B texts under P soft prompts or none (1.3).",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/score",
        "score",
        ScoreResponse,
        ScoreRequest,
        "queue",
        doc="Each text's summed token log-probability under a causal LM (1.6).",
    ),
    # Projection sessions (protocol 1.1): the server builds p = A z + p0 from a recipe.
    Route(
        "POST",
        f"{API_PREFIX}/sessions",
        "open_session",
        SessionInfo,
        SessionOpenRequest,
        "queue",
        "sessions",
        "Open a projection session: the server rebuilds A from the recipe, once (1.1).",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/sessions/{{session_id}}/logits",
        "session_logits",
        LogitsResponse,
        None,  # JSON or a binary frame, parsed by the handler
        "queue",
        "sessions",
        "Score z [P, d] through a session: the logits /v1/logits gives for A z + p0 (1.1).\n\n"
        "The body is JSON or a binary frame (no base64).",
    ),
    Route(
        "POST",
        f"{API_PREFIX}/sessions/{{session_id}}/features",
        "session_features",
        FeaturesResponse,
        None,  # JSON or a binary frame, parsed by the handler
        "queue",
        "sessions",
        "Feature vectors for z [P, d] through a session: /v1/features for A z + p0 (1.3).\n\n"
        "The body is JSON or a binary frame (no base64).",
    ),
    Route(
        "DELETE",
        f"{API_PREFIX}/sessions/{{session_id}}",
        "close_session",
        SessionClosed,
        tag="sessions",
        doc="Close a session and free its memory (1.1).",
    ),
    Route(
        "POST",
        PROMPTS_PATH,
        "store_prompt",
        StoredPrompt,
        PromptCreateRequest,
        "thread",  # "queue" when the prompt is built from a projection (see the handler)
        "registry",
        "Store a tuned prompt for this API key; answers its id (the same id for the same\n"
        "prompt stored again).",
        registry=True,
    ),
    Route(
        "GET",
        PROMPTS_PATH,
        "list_prompts",
        PromptList,
        mode="thread",
        tag="registry",
        doc="The prompts this API key stored, oldest first (metadata only), a page at a time.",
        registry=True,
        query={
            "limit": "Prompts on this page (1.2).",
            "cursor": "next_cursor of the previous page (1.2).",
        },
    ),
    Route(
        "GET",
        PROMPTS_PATH + "/{prompt_id}",
        "get_prompt",
        StoredPrompt,
        mode="thread",
        tag="registry",
        doc="A stored prompt's metadata (never its tensor); 404 for another key's prompt.",
        registry=True,
    ),
    Route(
        "DELETE",
        PROMPTS_PATH + "/{prompt_id}",
        "delete_prompt",
        PromptDeleted,
        mode="thread",
        tag="registry",
        doc="Delete a stored prompt for good; 404 for another key's prompt.",
        registry=True,
    ),
    Route(
        "GET",
        PROMPTS_PATH + "/{prompt_id}/tensor",
        "prompt_tensor",
        PromptTensor,
        mode="thread",
        tag="registry",
        doc="A stored prompt's values, the caller's own or a shared one, to start from (1.4).",
        registry=True,
    ),
    Route(
        "POST",
        PROMPTS_PATH + "/{prompt_id}/logits",
        "prompt_logits",
        LogitsResponse,
        PromptLogitsRequest,
        "queue",
        "registry",
        "Score B texts under a stored prompt: logits [1, B, C], as POST /v1/logits.",
        registry=True,
    ),
    Route(
        "GET",
        "/healthz",
        "healthz",
        Health,
        tag="ops",
        doc="Liveness: the server is up and which models it serves.",
    ),
)


def match(path: str) -> tuple[list[Route], dict[str, str]]:
    """The routes whose path template matches ``path`` (any method), and its path params."""
    found: list[Route] = []
    params: dict[str, str] = {}
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m is not None:
            found.append(route)
            params = m.groupdict()
    return found, params


def allowed_methods(routes: list[Route]) -> list[str]:
    """The Allow header of a 405: every method the path takes."""
    return sorted({r.method for r in routes})


def slash_redirect(path: str) -> str | None:
    """The path to redirect to when ``path`` only misses a route by a trailing slash.

    Starlette answered ``/v1/models/`` with a 307 to ``/v1/models``; the app keeps doing so.
    """
    if path != "/" and path.endswith("/") and not match(path)[0] and match(path[:-1])[0]:
        return path[:-1]
    return None
