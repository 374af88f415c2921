"""SGLang's own request handling, run in-process as an ``httpx`` transport (no GPU, no model).

Every ``/generate`` body bbt sends goes through what an SGLang server runs on it before the
scheduler, as the installed wheel ships it (see tests/engines/_sglang_source.py for how it
runs without SGLang's runtime): the JSON contract gate (``generate_contract_error``, where
the release has one), ``GenerateReqInput(**body)`` and ``normalize_batch_and_arguments``,
per request ``TokenizerManager._validate_token_ids_logprob`` (where the release has it),
``SamplingParams(**sampling_params)``, ``normalize`` and ``verify``; the answer's log-prob
entries are built by ``TokenizerManager.detokenize_logprob_tokens``. Only the model is ours:
the vLLM fake's next-token log-probs of the row sequence as sent.
"""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, field
from typing import Any

import httpx

from bbt.testing.vllm_fake import VLLMFake
from tests.engines import _sglang_source as src

TM = "srt/managers/tokenizer_manager.py"


@dataclass
class Verdict:
    """What SGLang's request code said of a body: ``None`` = taken."""

    error: str | None
    status: int = 200


@dataclass
class SGLangEngine:
    """SGLang's request path over the fake's model; ``check(body)`` or ``transport()``."""

    model: VLLMFake = field(default_factory=VLLMFake)
    disable_radix_cache: bool = True
    seen: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate = src.contract_gate()
        self.sampling = src.load("srt/sampling/sampling_params.py")
        self.io = src.load("srt/managers/io_struct.py")
        try:
            self.validate_ids: Any = src.function(
                TM, "TokenizerManager._validate_token_ids_logprob"
            )
        except LookupError:  # older releases check nothing here
            self.validate_ids = None
        self.detokenize = src.function(TM, "TokenizerManager.detokenize_logprob_tokens")
        self._manager = types.SimpleNamespace(
            model_config=types.SimpleNamespace(vocab_size=len(self.model.vocab)), tokenizer=None
        )

    # ------------------------------------------------------------------ the request path

    def parse(self, body: dict[str, Any]) -> Any:
        """The normalised ``GenerateReqInput`` of ``body``; raises what SGLang raises."""
        if self.gate is not None:
            error = self.gate(body)
            if error is not None:
                raise ValueError(f"contract: {error}")
        names = {f.name for f in dataclasses.fields(self.io.GenerateReqInput)}
        obj = self.io.GenerateReqInput(**{k: v for k, v in body.items() if k in names})
        obj.normalize_batch_and_arguments()
        items = [obj] if obj.is_single else [obj[i] for i in range(obj.batch_size)]
        for item in items:
            if self.validate_ids is not None:
                self.validate_ids(self._manager, item)
            if item.input_embeds is not None and not self.disable_radix_cache:
                raise ValueError("input_embeds is provided while disable_radix_cache is False.")
            params = self.sampling.SamplingParams(**dict(item.sampling_params))
            params.normalize(None)
            params.verify(len(self.model.vocab))
        return obj

    def check(self, body: dict[str, Any]) -> Verdict:
        try:
            self.parse(body)
        except ValueError as exc:  # SGLang answers 400
            return Verdict(str(exc), 400)
        except Exception as exc:  # anything else is SGLang's 500
            return Verdict(f"{type(exc).__name__}: {exc}", 500)
        return Verdict(None)

    # ------------------------------------------------------------------ answers

    def _generate(self, body: dict[str, Any]) -> Any:
        obj = self.parse(body)
        batch = obj.input_embeds if not obj.is_single else [obj.input_embeds]
        ids = body.get("token_ids_logprob")
        out = []
        for rows in batch:
            import numpy as np

            arr = np.asarray(rows, dtype=np.float32)
            soft, text_ids = self.model.split_sequence(arr)
            lp = self.model.batch_logprobs([(soft, text_ids)])[0]
            sampled = int(lp.argmax())
            meta: dict[str, Any] = {"prompt_tokens": len(rows), "completion_tokens": 1}
            if body.get("return_logprob"):
                meta["output_token_logprobs"] = self.detokenize(
                    self._manager, [float(lp[sampled])], [sampled], False
                )
                if ids:
                    meta["output_token_ids_logprobs"] = [
                        self.detokenize(self._manager, [float(lp[t]) for t in ids], ids, False)
                    ]
            out.append({"text": "", "output_ids": [sampled], "meta_info": meta})
        return out[0] if obj.is_single else out

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        if body is not None:
            self.seen.append({"path": path, "body": body})
        if path == "/v1/models":
            card = {"id": "tiny", "object": "model", "max_model_len": self.model.max_model_len}
            return httpx.Response(200, json={"object": "list", "data": [card]})
        if path == "/server_info":
            return httpx.Response(200, json={"version": src.version()})
        if path == "/tokenize":
            prompts = body["prompt"]
            special = body.get("add_special_tokens", True)
            rows = [self.model.tokenize_ids(p, special) for p in prompts]
            return httpx.Response(200, json={"tokens": rows, "count": [len(r) for r in rows]})
        if path == "/generate":
            try:
                answer = self._generate(body)
            except ValueError as exc:
                return httpx.Response(400, json={"error": {"message": str(exc)}})
            return httpx.Response(200, content=json.dumps(answer).encode())
        return httpx.Response(404, json={"detail": "Not Found"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)
