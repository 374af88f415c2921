"""vLLM's own request handling, run in-process as an ``httpx`` transport (no GPU, no model).

Every request bbt sends goes through the code a vLLM server runs on it, imported from the
installed wheel: the pydantic request models (``ChatCompletionRequest``,
``CompletionRequest``, ``TokenizeCompletionRequest``), ``to_sampling_params`` and
``SamplingParams.verify``, ``safe_load_prompt_embeds`` for tensors, and ``HfRenderer``
(``render_messages``: the chat-message parser, bbt's chat template, the ``<prompt_embeds>``
placeholder, tokenization) for chat messages. Only the model is ours: the next-token
log-probs of the row sequence the engine would feed its first layer (token rows from a
random table times the architecture's embedding scale, ``prompt_embeds`` rows as sent).
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import torch
import vllm
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.tokenize.protocol import TokenizeCompletionRequest
from vllm.renderers.embed_utils import safe_load_prompt_embeds
from vllm.renderers.hf import HfRenderer

from bbt.vllm import chat_template

MODEL = "tiny"
MAX_MODEL_LEN = 512
MAX_LOGPROBS = 20


class _ModelConfig(types.SimpleNamespace):
    """The attributes of vLLM's ModelConfig its request path reads (a server's defaults)."""

    def get_hidden_size(self) -> int:
        return int(self.hidden_size)

    def get_vocab_size(self) -> int:
        return int(self.vocab_size)


def model_config(hidden_size: int, vocab_size: int) -> _ModelConfig:
    return _ModelConfig(
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        enable_prompt_embeds=True,
        multimodal_config=None,
        dtype=torch.float32,
        hf_config=types.SimpleNamespace(),
        hf_text_config=types.SimpleNamespace(),
        is_multimodal_model=False,
        supports_multimodal_inputs=False,
        is_diffusion=False,
        allowed_local_media_path="",
        allowed_media_domains=None,
        trust_remote_code=False,
        model=MODEL,
        tokenizer=MODEL,
        revision=None,
        tokenizer_revision=None,
        code_revision=None,
        max_logprobs=MAX_LOGPROBS,
        max_model_len=MAX_MODEL_LEN,
        renderer_num_workers=1,
        logits_processors=None,
        runner_type="generate",
        io_processor_plugin=None,
        skip_tokenizer_init=False,
    )


class EngineRejectedError(Exception):
    """What vLLM answers 400 to (a validation error of its request path)."""


@dataclass
class Scored:
    """One sequence the engine scored: its token ids (placeholder ids where rows were given),
    which positions are token ids, and the rows fed to the model."""

    path: str
    token_ids: list[int] | None
    is_token: list[bool] | None
    rows: np.ndarray[Any, Any]


@dataclass
class VLLMEngine:
    tokenizer: Any
    hidden_size: int = 64
    embedding_scale: float = 1.0
    #: The model's dtype: its table's rows are representable in it (bfloat16: 8 bits).
    dtype: str = "float32"
    seed: int = 0
    bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    scored: list[Scored] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The model's vocabulary is padded past the tokenizer's (+ vLLM's <prompt_embeds>).
        vocab = max(len(self.tokenizer) + 1, 1024)
        self.config = model_config(self.hidden_size, vocab)
        vllm_config = types.SimpleNamespace(
            model_config=self.config,
            parallel_config=types.SimpleNamespace(_api_process_rank=0, data_parallel_rank=0),
            observability_config=None,
            cache_config=None,
            scheduler_config=None,
        )
        self.renderer = HfRenderer(vllm_config, self.tokenizer)  # type: ignore[arg-type]
        self.tok = self.renderer.tokenizer  # vLLM's copy, with the placeholder registered
        rng = np.random.default_rng(self.seed)
        table = torch.from_numpy(rng.standard_normal((vocab, self.hidden_size)) * 0.02)
        self.raw_table = table.to(getattr(torch, self.dtype)).to(torch.float32).numpy()
        self.template = chat_template()

    # ------------------------------------------------------------ the model
    def _logprobs(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        r = rows.astype(np.float64)
        weights = 0.7 ** np.arange(len(r))[::-1]
        h = (weights[:, None] * r).sum(axis=0) * 50.0
        logits = self.raw_table.astype(np.float64) @ h
        logits -= logits.max()
        return logits - np.log(np.exp(logits).sum())  # type: ignore[no-any-return]

    def _token_rows(self, ids: list[int]) -> np.ndarray[Any, Any]:
        return self.raw_table[np.asarray(ids, dtype=np.int64)] * np.float32(self.embedding_scale)

    # ------------------------------------------------------------ endpoints
    def _verify(self, req: Any) -> Any:
        params = req.to_sampling_params(1, {})
        params.verify(self.config, None, None, None)
        return params

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        req = TokenizeCompletionRequest.model_validate(body)
        ids = self.tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        strs = self.tok.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return {
            "count": len(ids),
            "max_model_len": MAX_MODEL_LEN,
            "tokens": ids,
            "token_strs": strs,
        }

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        req = ChatCompletionRequest.model_validate(body)
        params = self._verify(req)
        _, prompt = self.renderer.render_messages(
            req.messages, req.build_chat_params(self.template, "openai")
        )
        ids = list(prompt["prompt_token_ids"])
        if "prompt_embeds" in prompt:
            is_token = [bool(x) for x in prompt["prompt_is_token_ids"]]
            given = prompt["prompt_embeds"].to(torch.float32).numpy()
            rows = np.where(np.asarray(is_token)[:, None], self._token_rows(ids), given)
        else:
            is_token, rows = [True] * len(ids), self._token_rows(ids)
        self.scored.append(Scored("chat", ids, is_token, rows))
        entries = self._entries(rows, params.logprob_token_ids)
        top = [{"token": t, "logprob": v, "bytes": None} for t, v in entries.items()]
        content = [{"token": "token_id:0", "logprob": 0.0, "bytes": None, "top_logprobs": top}]
        return {
            "choices": [{"index": 0, "logprobs": {"content": content}}],
            "usage": {"prompt_tokens": len(ids)},
        }

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        req = CompletionRequest.model_validate(body)
        params = self._verify(req)
        if req.prompt is not None:
            return self._prompt_scores(req.prompt, params.prompt_logprobs)
        items = req.prompt_embeds if isinstance(req.prompt_embeds, list) else [req.prompt_embeds]
        choices = []
        total = 0
        for k, item in enumerate(items):
            rows = safe_load_prompt_embeds(self.config, item).to(torch.float32).numpy()  # type: ignore[arg-type]
            self.scored.append(Scored("completions", None, None, rows))
            entries = self._entries(rows, params.logprob_token_ids)
            choices.append({"index": k, "logprobs": {"top_logprobs": [entries]}})
            total += len(rows)
        return {"choices": choices, "usage": {"prompt_tokens": total}}

    def _prompt_scores(self, prompt: Any, k: int | None) -> dict[str, Any]:
        """Token-id prompts (bbt's score requests): vLLM's ``prompt_logprobs`` of each, as
        parsed into SamplingParams (``k`` must be set), from the engine's model."""
        assert k is not None, "SamplingParams lost prompt_logprobs"
        seqs = prompt if prompt and isinstance(prompt[0], list) else [prompt]
        choices = []
        for n, ids in enumerate(seqs):
            self.scored.append(Scored("score", list(ids), [True] * len(ids), self._token_rows(ids)))
            entries: list[dict[str, Any] | None] = [None]
            for t in range(1, len(ids)):
                lp = self._logprobs(self._token_rows(ids[:t]))
                entries.append({str(ids[t]): {"logprob": float(lp[ids[t]]), "rank": 1}})
            choices.append({"index": n, "prompt_logprobs": entries})
        return {"choices": choices, "usage": {"prompt_tokens": sum(map(len, seqs))}}

    def _entries(self, rows: np.ndarray[Any, Any], ids: list[int] | None) -> dict[str, float]:
        lp = self._logprobs(rows)
        return {f"token_id:{t}": float(lp[t]) for t in (ids or [])}

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        if method == "GET" and path == "/version":
            return {"version": vllm.__version__}
        if method == "GET" and path == "/v1/models":
            return {"data": [{"id": MODEL, "max_model_len": MAX_MODEL_LEN}]}
        assert body is not None
        self.bodies.append((path, body))
        route = {
            "/tokenize": self.tokenize,
            "/v1/chat/completions": self.chat,
            "/v1/completions": self.completions,
        }[path]
        try:
            return route(body)
        except Exception as exc:  # vLLM's validation errors: pydantic, VLLMValidationError...
            if isinstance(exc, (KeyError, AssertionError)):
                raise
            raise EngineRejectedError(f"{type(exc).__name__}: {exc}") from exc

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.read()) if request.method == "POST" else None
            try:
                return httpx.Response(200, json=self.handle(request.method, request.url.path, body))
            except EngineRejectedError as exc:
                error = {"message": str(exc)[:2000], "type": "BadRequestError", "param": None}
                return httpx.Response(400, json={"error": {**error, "code": 400}})

        return httpx.MockTransport(handler)
