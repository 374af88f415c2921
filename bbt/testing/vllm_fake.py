"""A faithful fake of vLLM's OpenAI-compatible server, for offline tests of BBT over vLLM.

It speaks the request and response shapes of vLLM **0.26** as read from the stored snapshot
of vllm-project/vllm (``vllm/entrypoints/openai/completion/protocol.py``,
``chat_completion/protocol.py``, ``engine/protocol.py`` (errors, model cards), the
tokenize models, ``chat_utils`` (content parts, the ``<prompt_embeds>`` placeholder) and
``safe_load_prompt_embeds``), plus two PRs as their descriptions state them:

* #40720: a chat content part ``{"type": "prompt_embeds", "data": BASE64}`` that the chat
  template sees as a text part holding the placeholder ``<prompt_embeds>``, expanded to the
  tensor's rows after tokenisation;
* #43463: ``logprob_token_ids`` (needs ``logprobs``; at most 128 ids, as the issue this fake
  was written for states: the limit is not in the code read) returns the sampled token plus
  exactly those ids at each generated position.

Endpoints: ``GET /version``, ``GET /v1/models``, ``POST /tokenize``, ``POST /v1/completions``
(``prompt`` as texts or token ids, with ``prompt_logprobs`` from the model when asked, or
``prompt_embeds``, one base64 tensor or a list), ``POST /v1/chat/completions``;
errors as ``{"error": {"message", "type", "param", "code"}}``, 401 as vLLM's auth middleware
answers it. Prompt tensors are decoded as vLLM does: strict base64,
``torch.load(weights_only=True)``, float32/bfloat16/float16, a leading batch of 1 squeezed.
Switches reproduce servers bbt must cope with: ``enable_prompt_embeds=False`` (vLLM's "You
must set `--enable-prompt-embeds`" answer), ``logprob_token_ids=False`` (an older server:
the field is ignored, natural top-k only), ``version=...`` (an old or unknown version),
``chat_template=None`` (no template), ``faults`` (statuses to answer first, with
``Retry-After``).

The model behind it is :class:`bbt.server.mock.MockBackend`'s numpy LM read as a decoder:
the next-token log-probs after ``[BOS] soft-prompt text`` are the log-softmax over the whole
vocabulary of the mock's logits for (soft prompt, text), so BBT converges on it as on the
masked mock. Tokens are the mock's words; ``[CLS]`` plays BOS (added with
``add_special_tokens``). In a Completions request the sequence arrives as embeddings only:
the fake reads a leading BOS row, then takes the longest run of trailing rows equal (within
float16 rounding) to rows of its table as the text, and the rows between as the soft prompt.
That is exact for sequences bbt builds, unless a soft prompt's last row is itself a
vocabulary embedding (e.g. an untouched ``--init vocab`` prompt).

Use :class:`VLLMFake` directly (``fake.transport()`` for an ``httpx`` client in the same
process, ``fake.app()`` for uvicorn), or the pytest fixtures ``vllm_fake`` and
``live_vllm_fake`` of ``bbt.testing.plugin``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bbt.testing._fake_server import serve_main
from bbt.testing._vllm_model import FAKE_MODEL_ID, FAKE_VLLM_VERSION, FakeCounters, FakeError
from bbt.testing._vllm_server import (
    ENABLE_PROMPT_EMBEDS_ERROR,
    FAKE_BASE_URL,
    MAX_LOGPROB_TOKEN_IDS,
    NO_CHAT_TEMPLATE_ERROR,
    PROMPT_EMBEDS_PLACEHOLDER,
    VLLMFake,
    serve_vllm_fake,
)

if TYPE_CHECKING:
    from bbt.testing.plugin import live_vllm_fake, vllm_fake


def __getattr__(name: str) -> Any:
    # The fixtures are defined (importing this module lazily) in the plugin, which pytest loads
    # into every run; conftest files that import them from here still find them, and serving
    # the fake (`python -m bbt.testing.vllm_fake`) needs no pytest.
    if name in ("vllm_fake", "live_vllm_fake"):
        from bbt.testing import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENABLE_PROMPT_EMBEDS_ERROR",
    "FAKE_BASE_URL",
    "FAKE_MODEL_ID",
    "FAKE_VLLM_VERSION",
    "MAX_LOGPROB_TOKEN_IDS",
    "NO_CHAT_TEMPLATE_ERROR",
    "PROMPT_EMBEDS_PLACEHOLDER",
    "FakeCounters",
    "FakeError",
    "VLLMFake",
    "live_vllm_fake",
    "serve_vllm_fake",
    "vllm_fake",
]


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--version", default=FAKE_VLLM_VERSION)
    ap.add_argument(
        "--no-prompt-embeds", action="store_true", help="as without --enable-prompt-embeds"
    )
    ap.add_argument("--no-logprob-token-ids", action="store_true", help="as vLLM before PR #43463")


def _fake(args: argparse.Namespace) -> VLLMFake:
    return VLLMFake(
        keep_requests=0,  # a long-running server keeps no request bodies
        api_key=args.api_key,
        version=args.version,
        enable_prompt_embeds=not args.no_prompt_embeds,
        logprob_token_ids=not args.no_logprob_token_ids,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bbt.testing.vllm_fake``: serve the fake on a port (for docs and demos)."""
    return serve_main(argv, engine="vLLM", port=8001, add_options=_options, make=_fake)


if __name__ == "__main__":
    raise SystemExit(main())
