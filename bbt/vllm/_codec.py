"""The vLLM adapter's codec: request bodies, answers, capabilities. No I/O.

:class:`~bbt.vllm.VLLMService` sends what this builds through the client core
(:class:`bbt.client.transport.SyncHTTPCore`: headers, retries, usage, fan-out) and reads
the answers with it, so everything vLLM-specific about the wire is here and nothing about
sending is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from bbt.engines import codec as engine_codec
from bbt.engines.codec import json_body as json_body
from bbt.errors import (
    APIStatusError,
    BadRequestError,
    ConfigurationError,
    InvalidRequestError,
    ProtocolError,
)
from bbt.protocol import SCORE_CAPABILITY, ModelInfo
from bbt.vllm._layout import BOS_TEMPLATE_KWARG
from bbt.vllm._model import FloatArray, ModelFacts
from bbt.vllm._wire import parse_version

logger = logging.getLogger("bbt.vllm")

#: Oldest vLLM bbt talks to: earlier releases have known prompt-embeds vulnerabilities
#: (crafted tensors crashing or corrupting the engine), and bbt sends tensors on every call.
MIN_VLLM_VERSION = (0, 26, 0)
#: vLLM's limit on ``logprob_token_ids`` (PR #43463): at most this many ids per request.
MAX_LOGPROB_TOKEN_IDS = 128

#: bbt's verbatim chat template for base models (black-box mode; docs/vllm.md).
CHAT_TEMPLATE_PATH = Path(__file__).with_name("templates") / "bbt_base.jinja"

Mode = Literal["auto", "chat", "completions"]
Entries = Any  # one position's log-probs as vLLM answers them (see bbt.vllm._wire)


def version_text(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


def check_version(text: str) -> None:
    """Refuse a vLLM older than :data:`MIN_VLLM_VERSION` (``/version``'s answer)."""
    parsed = parse_version(text)
    if parsed is None:
        logger.info("vLLM version %r not understood: not checked", text)
        return
    if parsed < MIN_VLLM_VERSION:
        raise ConfigurationError(
            f"the server runs vLLM {text}, older than {version_text(MIN_VLLM_VERSION)}: "
            "those releases have known prompt-embeds vulnerabilities (a crafted tensor can "
            "crash or corrupt the engine), and bbt sends tensors on every call; upgrade vLLM"
        )


# --------------------------------------------------------------------------- capabilities


def model_info(
    card: dict[str, Any], facts: ModelFacts, mode: Literal["chat", "completions"], per: int
) -> ModelInfo:
    """What bbt's :class:`ModelInfo` says of a served model (one ``/v1/models`` card).

    The limits are what one vLLM request carries: one (prompt, text) pair in black-box
    mode, one prompt on up to ``per`` texts in embedding-table mode. The adapter splits jobs
    itself; these make plans (``bbt tune --dry-run``) count requests right.
    """
    per = 1 if mode == "chat" else per
    # prompt_logprobs (bbt.vllm._score)
    return engine_codec.model_info(card, facts, per, MAX_LOGPROB_TOKEN_IDS, [SCORE_CAPABILITY])


def _too_many(count: int) -> str:
    return (
        f"{count} candidate ids; vLLM returns log-probs for at most "
        f"{MAX_LOGPROB_TOKEN_IDS} (logprob_token_ids)"
    )


def check_job(
    info: ModelInfo, arr: FloatArray, texts: list[str], ids: list[int], mode: str
) -> None:
    """Refuse, before any request, a logits job vLLM cannot score."""
    engine_codec.check_job(info, arr, texts, ids, _too_many)
    if arr.shape[1] == 0 and mode == "chat":
        raise InvalidRequestError(
            "black-box mode sends the soft prompt as a prompt_embeds part, which cannot be "
            "empty: use n >= 1",
            field="prompts",
        )


def explain(exc: APIStatusError, root: str, facts: ModelFacts, source: str) -> Exception:
    """Turn vLLM's answers to a misconfigured server into settings errors that say what to
    change; anything else unchanged. ``source``: where the hidden size came from."""
    text = exc.message
    if "enable-prompt-embeds" in text or "enable_prompt_embeds" in text:
        return ConfigurationError(
            f"the vLLM server at {root} does not accept prompt embeddings: start it "
            "with --enable-prompt-embeds (see docs/vllm.md)"
        )
    if "chat template" in text.lower():
        return ConfigurationError(
            f"the vLLM server at {root} has no usable chat template for black-box "
            f"mode ({text}); start it with --chat-template {CHAT_TEMPLATE_PATH} "
            "--chat-template-content-format openai (see docs/vllm.md)"
        )
    if isinstance(exc, BadRequestError) and "hidden" in text.lower():
        return ConfigurationError(
            f"the vLLM server rejected the prompt tensor's shape ({text}): hidden size "
            f"{facts.hidden_size} (from {source}) is not the served "
            "model's; give the served model's config.json"
        )
    return exc


# --------------------------------------------------------------------------- bodies


def tokenize_body(model: str, text: str, add_special_tokens: bool) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": text,
        "add_special_tokens": add_special_tokens,
        "return_token_strs": True,
    }


def read_tokenize(answer: Any) -> tuple[list[int], list[str]]:
    ids = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ProtocolError("/tokenize answered without a list of token ids")
    strs = answer.get("token_strs")
    if not isinstance(strs, list) or len(strs) != len(ids):
        strs = [str(i) for i in ids]
    return ids, [str(s) for s in strs]


def sampling(ids: list[int]) -> dict[str, Any]:
    """One token, greedy, with the log-probs of exactly ``ids`` at the scored position."""
    return {
        "max_tokens": 1,
        "temperature": 0,
        "logprob_token_ids": ids,
        # Token ids as keys: no token string to map back (and none that is ambiguous).
        "return_tokens_as_token_ids": True,
    }


def chat_body(
    model: str, embeds: str, text: str, ids: list[int], top_k: int, bos: bool = False
) -> dict[str, Any]:
    """Black-box mode: one user message, the soft prompt's ``prompt_embeds`` part then the
    text (with its lead already, see :mod:`bbt.vllm._layout`), scored at the position after
    it. ``bos``: bbt's template writes the tokenizer's BOS first."""
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "prompt_embeds", "data": embeds},
                    {"type": "text", "text": text},
                ],
            }
        ],
        "add_generation_prompt": False,
        # vLLM ignores this with prompt_embeds parts (it tokenizes the rendered prompt
        # without special tokens); false says so, and the template writes BOS itself.
        "add_special_tokens": False,
        "chat_template_kwargs": {BOS_TEMPLATE_KWARG: bos},
        "logprobs": True,
        "top_logprobs": top_k,
        **sampling(ids),
    }


def read_chat(answer: Any) -> tuple[Entries, int]:
    """The scored position's log-probs and the prompt tokens of a chat completion."""
    try:
        content = answer["choices"][0]["logprobs"]["content"]
        entries = content[0]["top_logprobs"]
        prompt_tokens = int(answer.get("usage", {}).get("prompt_tokens", 0))
    except (KeyError, IndexError, TypeError, ValueError):
        raise ProtocolError("chat completion answer without logprobs.content") from None
    return entries, prompt_tokens


def completions_body(model: str, embeds: list[str], ids: list[int], top_k: int) -> dict[str, Any]:
    """Embedding-table mode: whole sequences as a list of ``prompt_embeds``."""
    return {"model": model, "prompt_embeds": embeds, "logprobs": top_k, **sampling(ids)}


def read_completions(answer: Any, count: int) -> tuple[list[tuple[int, Entries]], int]:
    """Each choice's (index, scored position's log-probs), and the prompt tokens."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != count:
        raise ProtocolError(
            f"completions answered {len(choices) if isinstance(choices, list) else 0} "
            f"choices for {count} prompts"
        )
    rows: list[tuple[int, Entries]] = []
    for choice in choices:
        try:
            k = int(choice["index"])
            entries = choice["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError, ValueError):
            raise ProtocolError("completion choice without logprobs.top_logprobs") from None
        if not 0 <= k < count:
            raise ProtocolError(f"completion choice index {k} out of range")
        rows.append((k, entries))
    return rows, int(answer.get("usage", {}).get("prompt_tokens", 0))
