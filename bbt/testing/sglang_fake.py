"""A fake of SGLang's native HTTP server, for offline tests of BBT over SGLang.

It speaks the shapes of SGLang **0.5.23** as read from the wheel's source
(``sglang/srt/managers/io_struct.py``: ``GenerateReqInput`` and its
``normalize_batch_and_arguments``; ``sglang/api/v1/api_types.py``: the JSON contract gate
``/generate`` runs first; ``sglang/srt/managers/tokenizer_manager.py``: the radix-cache and
``token_ids_logprob`` checks and the ``meta_info`` log-prob lists;
``sglang/srt/entrypoints/openai/protocol.py``: ``/tokenize``).

Endpoints: ``GET /server_info`` (``version``), ``GET /model_info``, ``GET /v1/models``,
``POST /tokenize`` (``prompt``: a string or a list), ``POST /generate`` with
``input_embeds`` (one sequence ``[L, H]`` or a batch ``[N, L, H]`` of JSON numbers; a
batch is answered with a list), ``return_logprob`` and ``token_ids_logprob`` (answered in
``meta_info.output_token_ids_logprobs`` as ``[logprob, token_id, null]``). Errors are
``{"error": {"message": ...}}`` with status 400, as SGLang answers a ``ValueError``.
``disable_radix_cache=False`` reproduces a server started without
``--disable-radix-cache`` (SGLang's refusal of ``input_embeds``).

The model is the vLLM fake's (:mod:`bbt.testing.vllm_fake`): the mock LM read as a decoder,
a sequence of embeddings split into soft prompt (leading BOS row included) and text by
matching trailing rows against its table. tests/engines/test_sglang_contract.py checks that
this fake and SGLang's own request code accept and refuse the same bodies.
"""

from __future__ import annotations

import argparse

from bbt.testing._fake_server import serve_main
from bbt.testing._sglang_server import (
    FAKE_BASE_URL,
    FAKE_SGLANG_VERSION,
    RADIX_CACHE_ERROR,
    SGLangFake,
    serve_sglang_fake,
)
from bbt.testing._vllm_model import FAKE_MODEL_ID, FakeError

__all__ = [
    "FAKE_BASE_URL",
    "FAKE_MODEL_ID",
    "FAKE_SGLANG_VERSION",
    "RADIX_CACHE_ERROR",
    "FakeError",
    "SGLangFake",
    "serve_sglang_fake",
]


def _options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--radix-cache", action="store_true", help="as without --disable-radix-cache")


def _fake(args: argparse.Namespace) -> SGLangFake:
    return SGLangFake(
        keep_requests=0, api_key=args.api_key, disable_radix_cache=not args.radix_cache
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m bbt.testing.sglang_fake``: serve the fake on a port (docs and demos)."""
    return serve_main(argv, engine="SGLang", port=30000, add_options=_options, make=_fake)


if __name__ == "__main__":
    raise SystemExit(main())
