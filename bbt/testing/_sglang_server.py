"""The SGLang fake's endpoints and checks (documented in :mod:`bbt.testing.sglang_fake`,
which is where to import them from)."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np

from bbt.testing._fake_server import FakeServer, route, serve_fake
from bbt.testing._vllm_model import FakeError

FAKE_BASE_URL = "http://sglang-fake.test"
#: The SGLang release whose ``/generate`` the fake follows.
FAKE_SGLANG_VERSION = "0.5.23"
#: SGLang's answer to ``input_embeds`` on a server with its radix cache on
#: (``TokenizerManager._tokenize_one_request``).
RADIX_CACHE_ERROR = (
    "input_embeds is provided while disable_radix_cache is False. Please add "
    "`--disable-radix-cache` when you launch the server if you want to use input_embeds as "
    "inputs."
)
#: Keys of SGLang's ``SamplingParams`` JSON contract (unknown keys are refused).
SAMPLING_KEYS: dict[str, type | tuple[type, ...]] = {
    "max_new_tokens": int,
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": int,
    "min_p": (int, float),
    "frequency_penalty": (int, float),
    "presence_penalty": (int, float),
    "repetition_penalty": (int, float),
    "min_new_tokens": int,
    "n": int,
    "ignore_eos": bool,
    "skip_special_tokens": bool,
    "stop": (str, list),
    "stop_token_ids": list,
    "sampling_seed": int,
}


def _is(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that JSON's true/false is no number."""
    if isinstance(value, bool):
        return kinds is bool or (isinstance(kinds, tuple) and bool in kinds)
    return isinstance(value, kinds)


class SGLangFake(FakeServer):
    """The fake server's logic: ``handle(method, path, headers, body) -> (status, headers,
    JSON)``; the model is the vLLM fake's, the dispatch, ``httpx`` transport and Starlette
    app the shared :class:`~bbt.testing._fake_server.FakeServer`'s."""

    def __init__(
        self,
        *,
        disable_radix_cache: bool = True,
        version: str | None = FAKE_SGLANG_VERSION,
        **kw: Any,
    ) -> None:
        super().__init__(version=version, chat_template=None, **kw)
        #: As ``--disable-radix-cache``: without it SGLang refuses ``input_embeds``.
        self.disable_radix_cache = disable_radix_cache

    # ---------------------------------------------------------------- dispatch

    @route("GET", "/server_info")
    def _server_info(self, _: Any) -> Any:
        if self.version is None:
            raise FakeError(404, "Not Found")
        return {"version": self.version, "disable_radix_cache": self.disable_radix_cache}

    @route("GET", "/model_info")
    def _model_info(self, _: Any) -> Any:
        return {"model_path": self.model_id, "is_generation": True, "model_type": "bbt-fake"}

    @route("GET", "/v1/models")
    def _models(self, _: Any) -> Any:
        card = {
            "id": self.model_id,
            "object": "model",
            "owned_by": "sglang",
            "root": self.model_id,
            "max_model_len": self.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @route("POST", "/tokenize")
    def _tokenize(self, body: dict[str, Any]) -> Any:
        prompt = body.get("prompt")
        special = body.get("add_special_tokens", True)
        if isinstance(prompt, str):
            ids = self.tokenize_ids(prompt, bool(special))
            self._count(tokenize=1)
            return {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len}
        if not isinstance(prompt, list) or not all(isinstance(p, str) for p in prompt):
            raise FakeError(400, "Exactly one of 'prompt' or 'messages' must be provided.")
        rows = [self.tokenize_ids(p, bool(special)) for p in prompt]
        self._count(tokenize=1)
        return {
            "tokens": rows,
            "count": [len(r) for r in rows],
            "max_model_len": self.max_model_len,
        }

    # ---------------------------------------------------------------- /generate

    def check_generate(self, body: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
        """SGLang's checks of a ``/generate`` body, in its order (the JSON contract gate,
        ``GenerateReqInput.normalize_batch_and_arguments``, ``SamplingParams.verify``, the
        tokenizer manager's); the sequences of embeddings it holds."""
        self._check_contract(body)
        embeds = body.get("input_embeds")
        if body.get("text") is None and body.get("input_ids") is None and embeds is None:
            raise FakeError(400, "Either text, input_ids or input_embeds should be provided.")
        if body.get("text") is not None or body.get("input_ids") is not None:
            raise FakeError(400, "the fake scores input_embeds only")
        sequences = self._sequences(embeds)
        params = body.get("sampling_params") or {}
        self._verify_sampling(params)
        if not self.disable_radix_cache:
            raise FakeError(400, RADIX_CACHE_ERROR)
        for tid in body.get("token_ids_logprob") or []:
            if not 0 <= tid < len(self.vocab):
                raise FakeError(
                    400,
                    f"token_ids_logprob contains out-of-vocabulary token id {tid}; valid "
                    f"range is [0, {len(self.vocab)}).",
                )
        return sequences

    def _check_contract(self, body: dict[str, Any]) -> None:
        """The JSON contract's types for the fields bbt sends (others are not checked)."""
        for key, kinds in (("return_logprob", bool), ("stream", bool)):
            if body.get(key) is not None and not isinstance(body[key], kinds):
                raise FakeError(400, f"invalid type for {key}")
        ids = body.get("token_ids_logprob")
        if ids is not None and not (isinstance(ids, list) and all(_is(i, int) for i in ids)):
            raise FakeError(400, "invalid type for token_ids_logprob, expected integers")
        params = body.get("sampling_params")
        if params is None:
            return
        if not isinstance(params, dict):
            raise FakeError(400, "invalid type for sampling_params, expected a map")
        for key, value in params.items():
            if key not in SAMPLING_KEYS:
                raise FakeError(400, f"unknown field `{key}`")
            if value is not None and not _is(value, SAMPLING_KEYS[key]):
                raise FakeError(400, f"invalid type for sampling_params.{key}")

    def _sequences(self, embeds: Any) -> list[np.ndarray[Any, Any]]:
        if not isinstance(embeds, list) or not embeds or not isinstance(embeds[0], list):
            raise FakeError(400, "input_embeds must be a non-empty list of rows")
        if not embeds[0]:
            raise FakeError(400, "input_embeds holds an empty sequence")
        batch = embeds if isinstance(embeds[0][0], list) else [embeds]
        out = []
        for seq in batch:
            try:
                rows = np.asarray(seq, dtype=np.float32)
            except (TypeError, ValueError):
                raise FakeError(400, "input_embeds must hold lists of numbers") from None
            if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != self.hidden_size:
                raise FakeError(
                    400,
                    f"input_embeds rows must have {self.hidden_size} numbers (the hidden size)",
                )
            if rows.shape[0] + 1 > self.max_model_len:
                raise FakeError(
                    400,
                    f"The input ({rows.shape[0]} tokens) is longer than the model's context "
                    f"length ({self.max_model_len} tokens).",
                )
            out.append(rows)
        return out

    @staticmethod
    def _verify_sampling(params: dict[str, Any]) -> None:
        temperature = params.get("temperature", 1.0)
        if temperature is not None and (temperature < 0 or not math.isfinite(temperature)):
            raise FakeError(400, f"temperature must be non-negative, got {temperature}.")
        max_new = params.get("max_new_tokens", 128)
        if max_new is not None and max_new < 0:
            raise FakeError(400, f"max_new_tokens must be at least 0, got {max_new}.")

    @route("POST", "/generate")
    def _generate(self, body: dict[str, Any]) -> Any:
        sequences = self.check_generate(body)
        single = not isinstance(body["input_embeds"][0][0], list)
        want = bool(body.get("return_logprob"))
        ids = body.get("token_ids_logprob") or None
        split = [self.split_sequence(rows) for rows in sequences]
        scored = self.batch_logprobs(split)
        self._count(completions=1, sequences=len(sequences))
        results = []
        for rows, lp in zip(sequences, scored, strict=True):
            sampled = int(lp.argmax())
            meta: dict[str, Any] = {
                "id": uuid.uuid4().hex,
                "finish_reason": {"type": "length", "length": 1},
                "prompt_tokens": int(rows.shape[0]),
                "completion_tokens": 1,
                "cached_tokens": 0,
            }
            if want:
                meta["input_token_logprobs"] = []
                meta["output_token_logprobs"] = [[float(lp[sampled]), sampled, None]]
                if ids is not None:
                    meta["input_token_ids_logprobs"] = []
                    meta["output_token_ids_logprobs"] = [
                        [[float(lp[t]), int(t), None] for t in ids]
                    ]
            results.append(
                {"text": self.vocab[sampled], "output_ids": [sampled], "meta_info": meta}
            )
        return results[0] if single else results


#: Serve an :class:`SGLangFake` with uvicorn on a free loopback port (yields its base URL).
serve_sglang_fake = serve_fake
