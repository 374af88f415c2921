"""The vLLM fake's endpoints, dispatch and transports (documented in
:mod:`bbt.testing.vllm_fake`, which is where to import them from)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from bbt.testing._fake_server import FakeServer, route, serve_fake
from bbt.testing._vllm_model import _BOS, FakeError, is_ids, prompt_logprobs_field

FAKE_BASE_URL = "http://vllm-fake.test"
#: vLLM's placeholder for a prompt_embeds part inside the rendered chat prompt.
PROMPT_EMBEDS_PLACEHOLDER = "<prompt_embeds>"
MAX_LOGPROB_TOKEN_IDS = 128
#: Names the fake's template render sets itself (a request's kwargs cannot replace them).
_TEMPLATE_NAMES = frozenset({"messages", "add_generation_prompt", "bos_token", "eos_token"})
ENABLE_PROMPT_EMBEDS_ERROR = "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
NO_CHAT_TEMPLATE_ERROR = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must "
    "provide a chat template if the tokenizer does not define one."
)


class VLLMFake(FakeServer):
    """The fake server's logic: ``handle(method, path, headers, body) -> (status, headers,
    JSON)``, plus an ``httpx`` transport and a Starlette app over it (see
    :class:`~bbt.testing._fake_server.FakeServer`)."""

    # ---------------------------------------------------------------- dispatch

    def error_body(self, exc: FakeError) -> Any:
        return _error_body(exc)

    def needs_key(self, path: str) -> bool:
        # vLLM's auth middleware guards the OpenAI routes (/v1/...) only.
        return path.startswith("/v1")

    @route("GET", "/version")
    def _version(self, _: Any) -> Any:
        if self.version is None:
            raise FakeError(404, "Not Found")
        return {"version": self.version}

    @route("GET", "/v1/models")
    def _models(self, _: Any) -> Any:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_id,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "vllm",
                    "root": self.model_id,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [],
                }
            ],
        }

    @route("POST", "/tokenize")
    def _tokenize(self, body: dict[str, Any]) -> Any:
        self._check_model(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise FakeError(400, "prompt must be a string", "prompt")
        self._count(tokenize=1)
        ids = self.tokenize_ids(prompt, bool(body.get("add_special_tokens", True)))
        out: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": self.max_model_len,
            "tokens": ids,
        }
        out["token_strs"] = (
            [self.token_str(i) for i in ids] if body.get("return_token_strs") else None
        )
        return out

    # ---------------------------------------------------------------- sampling checks

    def _logprob_request(
        self, body: dict[str, Any], k_field: str, chat: bool
    ) -> tuple[int, list[int] | None]:
        """(top-k, explicit ids or None) after vLLM's checks of the log-prob fields."""
        ids = body.get("logprob_token_ids") if self.logprob_token_ids else None
        wants = body.get("logprobs")
        if chat:
            top = body.get("top_logprobs")
            if top is not None and (top == -1 or top > 0) and not wants and not ids:
                raise FakeError(
                    400, "when using `top_logprobs`, `logprobs` must be set to true.", k_field
                )
            k = int(top or 0) if wants else 0
            on = bool(wants)
        else:
            k = int(wants) if wants is not None else 0
            on = wants is not None
        if ids is not None:
            if not isinstance(ids, list) or not ids:
                raise FakeError(
                    400, "`logprob_token_ids` must not be an empty list.", "logprob_token_ids"
                )
            if not on:
                raise FakeError(
                    400,
                    "when using `logprob_token_ids`, `logprobs` must be set."
                    if not chat
                    else "when using `logprob_token_ids`, `logprobs` must be set to true.",
                    "logprob_token_ids",
                )
            if len(ids) > MAX_LOGPROB_TOKEN_IDS:
                raise FakeError(
                    400,
                    f"`logprob_token_ids` may hold at most {MAX_LOGPROB_TOKEN_IDS} ids; "
                    f"got {len(ids)}.",
                    "logprob_token_ids",
                )
            if not all(isinstance(i, int) and 0 <= i < len(self.vocab) for i in ids):
                raise FakeError(400, "token id out of vocabulary range", "logprob_token_ids")
        elif on and k > self.max_logprobs:
            raise FakeError(
                400,
                f"Requested sample logprobs of {k}, which is greater than max allowed: "
                f"{self.max_logprobs}",
                k_field,
            )
        if body.get("max_tokens", 16) != 1 and body.get("max_completion_tokens") not in (None, 1):
            pass  # the fake always generates exactly one token: enough for scoring
        return (k if on else -1), ids

    def _decode(self, data: Any, param: str) -> np.ndarray[Any, Any]:
        if not self.enable_prompt_embeds:
            raise FakeError(400, ENABLE_PROMPT_EMBEDS_ERROR, "prompt_embeds")
        if not isinstance(data, str) or not data:
            raise FakeError(
                400,
                "prompt_embeds content part requires a non-empty `data` field with "
                "base64-encoded tensor bytes.",
                param,
            )
        from bbt.vllm import decode_embeds

        try:
            rows = decode_embeds(data)
        except ValueError as exc:
            raise FakeError(400, str(exc), param) from None
        if rows.shape[1] != self.hidden_size:
            raise FakeError(
                400,
                f"prompt_embeds has hidden size {rows.shape[1]}, but the model's hidden size "
                f"is {self.hidden_size}",
                param,
            )
        return rows

    def _position(
        self, lp: np.ndarray[Any, Any], k: int, ids: list[int] | None, as_ids: bool
    ) -> tuple[int, list[tuple[str, float]]]:
        """The sampled token (argmax: temperature 0) and the listed (token, log-prob) pairs."""
        sampled = int(lp.argmax())
        name: Callable[[int], str] = (
            (lambda t: f"token_id:{t}") if as_ids else (lambda t: self.vocab[t])
        )
        if ids is not None:
            chosen = ([] if sampled in ids else [sampled]) + list(ids)
        elif k > 0:
            chosen = [int(t) for t in np.argsort(-lp, kind="stable")[:k]]
        else:
            chosen = []
        return sampled, [(name(t), float(lp[t])) for t in chosen]

    def _check_len(self, length: int, where: str) -> None:
        if length + 1 > self.max_model_len:
            raise FakeError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your request has {length + 1} tokens ({length} in the messages, 1 in the "
                "completion).",
                where,
            )

    # ---------------------------------------------------------------- completions

    @route("POST", "/v1/completions")
    def _completions(self, body: dict[str, Any]) -> Any:
        self._check_model(body)
        k, ids = self._logprob_request(body, "logprobs", chat=False)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        embeds = body.get("prompt_embeds")
        prompt = body.get("prompt")
        sequences: list[tuple[np.ndarray[Any, Any], list[int], int]] = []
        if embeds is not None and embeds != []:
            items = embeds if isinstance(embeds, list) else [embeds]
            for item in items:
                rows = self._decode(item, "prompt_embeds")
                soft, text_ids = self.split_sequence(rows)
                self._check_len(len(rows), "prompt_embeds")
                sequences.append((soft, text_ids, len(rows)))
        first_prompt = len(sequences)  # embeddings first, then prompts (with prompt_logprobs)
        if prompt is not None and prompt != "":
            texts = prompt if isinstance(prompt, list) and not is_ids(prompt) else [prompt]
            for t in texts:
                if isinstance(t, str):
                    tids = self.tokenize_ids(t, bool(body.get("add_special_tokens", True)))
                elif is_ids(t) and t and all(0 <= i < len(self.vocab) for i in t):
                    tids = list(t)
                else:
                    raise FakeError(400, "prompt must be texts or token ids in the vocabulary")
                self._check_len(len(tids), "prompt")
                sequences.append((np.zeros((0, self.hidden_size), np.float32), tids, len(tids)))
        if not sequences:
            raise FakeError(
                400, "Either prompt or prompt_embeds must be provided and non-empty.", "prompt"
            )
        pl = prompt_logprobs_field(body, self.max_logprobs)
        self._count(completions=1, sequences=len(sequences))
        choices = []
        total = 0
        scored = self.batch_logprobs([(soft, tids) for soft, tids, _ in sequences])
        for index, ((_, tids, length), lp) in enumerate(zip(sequences, scored, strict=True)):
            sampled, listed = self._position(lp, k, ids, as_ids)
            token = f"token_id:{sampled}" if as_ids else self.vocab[sampled]
            logprobs = None
            if k >= 0:
                logprobs = {
                    "text_offset": [0],
                    "token_logprobs": [float(lp[sampled])],
                    "tokens": [token],
                    "top_logprobs": [dict(listed)],
                }
            choices.append(
                {
                    "index": index,
                    "text": " " + self.vocab[sampled],
                    "logprobs": logprobs,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "prompt_logprobs": (
                        self.prompt_logprobs(tids, pl)
                        if pl is not None and index >= first_prompt
                        else None
                    ),
                }
            )
            total += length
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": choices,
            "usage": {
                "prompt_tokens": total,
                "total_tokens": total + len(sequences),
                "completion_tokens": len(sequences),
                "prompt_tokens_details": None,
            },
        }

    # ---------------------------------------------------------------- chat

    def _render(self, body: dict[str, Any]) -> tuple[str, list[np.ndarray[Any, Any]]]:
        """The chat prompt as vLLM renders it: prompt_embeds parts become the placeholder."""
        template = self.chat_template
        if body.get("chat_template") is not None:
            if not self.trust_request_chat_template:
                raise FakeError(
                    400,
                    "Chat template is passed with request, but --trust-request-chat-template "
                    "is not set. Refused request with untrusted chat template.",
                    "chat_template",
                )
            template = body["chat_template"]
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise FakeError(400, "chat_template_kwargs must be an object", "chat_template_kwargs")
        if template is None:
            raise FakeError(400, NO_CHAT_TEMPLATE_ERROR, "chat_template")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise FakeError(400, "messages must be a non-empty list", "messages")
        embeds: list[np.ndarray[Any, Any]] = []
        conversation = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise FakeError(400, "each message needs a role", "messages")
            content = m.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            parts = []
            for part in content or []:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    text = str(part.get("text", ""))
                    if self.enable_prompt_embeds and PROMPT_EMBEDS_PLACEHOLDER in text:
                        raise FakeError(
                            400,
                            "Text content may not contain the reserved placeholder "
                            f"{PROMPT_EMBEDS_PLACEHOLDER!r}. This placeholder is used "
                            "internally to mark `prompt_embeds` splice positions in the "
                            "tokenized prompt.",
                            "messages",
                        )
                    parts.append({"type": "text", "text": text})
                elif kind == "prompt_embeds":
                    embeds.append(self._decode(part.get("data"), "prompt_embeds"))
                    if not len(embeds[-1]):  # vLLM: its placeholder expands to no token
                        raise FakeError(
                            400,
                            "Expected 1 prompt_embeds placeholder spans in the tokenized "
                            "prompt, found 0.",
                            "messages",
                        )
                    parts.append({"type": "text", "text": PROMPT_EMBEDS_PLACEHOLDER})
                else:
                    raise FakeError(400, f"Unsupported chat content part type: {kind!r}.", "type")
            conversation.append({"role": m["role"], "content": parts})
        try:
            import jinja2.sandbox
        except ImportError:  # pragma: no cover - jinja2 comes with fastapi/starlette setups
            raise FakeError(500, "the fake needs jinja2 to render chat templates") from None
        env = jinja2.sandbox.ImmutableSandboxedEnvironment()
        rendered = env.from_string(template).render(
            messages=conversation,
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
            **{k: v for k, v in kwargs.items() if k not in _TEMPLATE_NAMES},
            bos_token=_BOS,
            eos_token="[SEP]",
        )
        return rendered, embeds

    @route("POST", "/v1/chat/completions")
    def _chat(self, body: dict[str, Any]) -> Any:
        self._check_model(body)
        k, ids = self._logprob_request(body, "top_logprobs", chat=True)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        rendered, embeds = self._render(body)
        # As vLLM: with prompt_embeds parts the rendered prompt is tokenized once, without
        # special tokens whatever the request says; each placeholder token is then replaced
        # by its tensor's rows. The model reads the row sequence as completions do.
        special = False if embeds else bool(body.get("add_special_tokens", False))
        token_ids = self.tokenize_ids(rendered, special)
        if token_ids.count(self.placeholder_id) != len(embeds):
            raise FakeError(
                400, "the chat template dropped or repeated a prompt_embeds part", "messages"
            )
        rows: list[np.ndarray[Any, Any]] = []
        queue = iter(embeds)
        for tid in token_ids:
            rows.append(next(queue) if tid == self.placeholder_id else self.table[[tid]])
        length = sum(len(r) for r in rows)
        self._check_len(length, "messages")
        seq = np.concatenate(rows, axis=0) if rows else np.zeros((0, self.hidden_size))
        soft, text_ids = self.split_sequence(seq)
        self._count(chat=1, sequences=1)
        lp = self.batch_logprobs([(soft, text_ids)])[0]
        sampled, listed = self._position(lp, k, ids, as_ids)
        token = f"token_id:{sampled}" if as_ids else self.vocab[sampled]
        logprobs = None
        if k >= 0:
            logprobs = {
                "content": [
                    {
                        "token": token,
                        "logprob": float(lp[sampled]),
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in listed
                        ],
                    }
                ]
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self.vocab[sampled],
                        "reasoning": None,
                    },
                    "logprobs": logprobs,
                    "finish_reason": "length",
                    "stop_reason": None,
                    "token_ids": None,
                }
            ],
            "usage": {"prompt_tokens": length, "total_tokens": length + 1, "completion_tokens": 1},
            "prompt_logprobs": None,
            "prompt_token_ids": None,
        }


def _error_body(exc: FakeError) -> dict[str, Any]:
    return {
        "error": {
            "message": exc.message,
            "type": exc.type_name,
            "param": exc.param,
            "code": exc.status,
        }
    }


#: Serve a :class:`VLLMFake` with uvicorn on a free loopback port (yields its base URL).
serve_vllm_fake = serve_fake
