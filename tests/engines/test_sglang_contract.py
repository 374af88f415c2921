"""bbt's SGLang adapter against SGLang's own request path (tests/engines/_sglang_engine.py).

Every ``/generate`` body bbt sends is parsed and normalised by SGLang's ``GenerateReqInput``,
its contract gate, token-id and sampling checks; the adapter reads answers whose log-prob
entries SGLang's own code built; and a set of good and bad bodies is accepted and refused
alike by SGLang's code and by bbt's fake (bbt.testing.sglang_fake)."""

from __future__ import annotations

import ast
import json
import os
from typing import Any

import numpy as np
import pytest

from bbt.sglang import SGLangService, generate_body, rows_json
from bbt.testing.sglang_fake import RADIX_CACHE_ERROR, SGLangFake
from tests.engines import _sglang_source as src
from tests.engines._sglang_engine import TM, SGLangEngine

TEXTS = ["great fun", "the plot was thin and dull", "bad"]


@pytest.fixture(scope="module")
def engine() -> SGLangEngine:
    return SGLangEngine()


def _service(engine: SGLangEngine | SGLangFake, **kw: Any) -> SGLangService:
    transport = engine.transport()
    model = engine if isinstance(engine, SGLangFake) else engine.model
    return SGLangService(
        "http://sglang.test",
        transport=transport,
        env_file=None,
        embedding_table=model.table,
        config=model.config(),
        sequences_per_request=2,
        **kw,
    )


def _prompts(p: int = 2, n: int = 3, h: int = 64) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(3).standard_normal((p, n, h)) * 0.05).astype(np.float32)


def test_the_pinned_version_is_the_one_read() -> None:
    want = os.environ.get("BBT_SGLANG_VERSION")
    if want:
        assert src.version() == want


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_generate_body_bbt_sends_is_taken_by_sglang(engine: SGLangEngine, dtype: str) -> None:
    engine.seen.clear()
    with _service(engine, dtype=dtype) as svc:
        ids = svc.tokenize(["great bad"]).ids[0]
        out = svc.logits(_prompts(), TEXTS, ids)
    bodies = [s["body"] for s in engine.seen if s["path"] == "/generate"]
    assert len(bodies) == 4  # 2 prompts x 3 texts, 2 texts per request
    for body in bodies:
        assert engine.check(body).error is None
        obj = engine.parse(body)
        assert not obj.is_single
        assert obj.batch_size == len(body["input_embeds"])
        assert obj.token_ids_logprob == [ids] * obj.batch_size
        assert obj.return_logprob == [True] * obj.batch_size
    assert out.shape == (2, 3, len(ids))
    assert np.isfinite(out).all()


def test_the_adapter_reads_what_sglang_builds_as_the_fake_answers(engine: SGLangEngine) -> None:
    """Same model, same prompts: the adapter's logits over SGLang's request path and
    answer entries equal those over bbt's fake (so the fake's answers are SGLang's)."""
    fake = SGLangFake()
    with _service(engine) as a, _service(fake) as b:
        ids = a.tokenize(["great bad"]).ids[0]
        np.testing.assert_allclose(
            a.logits(_prompts(), TEXTS, ids), b.logits(_prompts(), TEXTS, ids), rtol=0, atol=1e-5
        )


def _good_and_bad(fake: SGLangFake) -> dict[str, tuple[dict[str, Any], bool]]:
    """name -> (body, whether SGLang 0.5.23 takes it)."""
    rows = rows_json(fake.table[[3, 4, 5]], "float32")
    base = generate_body([rows], [3, 4])
    single = {**base, "input_embeds": rows}
    return {
        "bbt's batch body": (base, True),
        "one sequence, not a batch": (single, True),
        "temperature as an integer": (
            {**base, "sampling_params": {"max_new_tokens": 1, "temperature": 0}},
            True,
        ),
        "no input": ({k: v for k, v in base.items() if k != "input_embeds"}, False),
        "negative temperature": (
            {**base, "sampling_params": {"max_new_tokens": 1, "temperature": -1.0}},
            False,
        ),
        "negative max_new_tokens": ({**base, "sampling_params": {"max_new_tokens": -1}}, False),
        "vLLM's max_tokens": ({**base, "sampling_params": {"max_tokens": 1}}, False),
        "id outside the vocabulary": ({**base, "token_ids_logprob": [3, 10**6]}, False),
        "negative id": ({**base, "token_ids_logprob": [-1]}, False),
    }


def test_sglang_and_the_fake_take_and_refuse_the_same_bodies(engine: SGLangEngine) -> None:
    fake = SGLangFake()
    gated = engine.gate is not None
    for name, (body, taken) in _good_and_bad(fake).items():
        verdict = engine.check(body)
        status, _, _ = fake.handle("POST", "/generate", {}, json.dumps(body).encode())
        if not gated and name == "vLLM's max_tokens":
            # Without the contract gate SGLang refuses it too, as a TypeError (500).
            assert verdict.error is not None, name
        if name in ("id outside the vocabulary", "negative id") and engine.validate_ids is None:
            continue  # releases before the check take it (and fail in the model)
        assert (verdict.error is None) == taken, (name, verdict)
        assert (status == 200) == taken, (name, status)


def test_the_fake_refuses_input_embeds_with_sglangs_radix_cache_text() -> None:
    """The fake's text for a server without --disable-radix-cache is SGLang's own."""
    tree = ast.parse((src.ROOT / TM).read_text())
    texts = [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]
    joined = " ".join(t.strip() for t in texts)
    assert "input_embeds is provided while disable_radix_cache is False." in joined
    assert "Please add `--disable-radix-cache` when you launch the server" in joined
    assert RADIX_CACHE_ERROR.startswith("input_embeds is provided while disable_radix_cache")
    engine = SGLangEngine(disable_radix_cache=False)
    fake = SGLangFake(disable_radix_cache=False)
    body = generate_body([rows_json(fake.table[[3, 4]], "float32")], [3])
    assert engine.check(body).status == 400
    assert fake.handle("POST", "/generate", {}, json.dumps(body).encode())[0] == 400


def test_tokenize_bodies_use_only_fields_sglang_declares(engine: SGLangEngine) -> None:
    """SGLang's TokenizeRequest lives in its OpenAI protocol module, which imports the
    runtime: its declared fields are read from the source (ast) instead."""
    path = src.ROOT / "srt/entrypoints/openai/protocol.py"
    tree = ast.parse(path.read_text())
    cls = next(
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "TokenizeRequest"
    )
    declared = {
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    engine.seen.clear()
    with _service(engine) as svc:
        svc.tokenize(["a", "b c"], add_special_tokens=True)
    bodies = [s["body"] for s in engine.seen if s["path"] == "/tokenize"]
    assert bodies
    assert all(set(b) <= declared for b in bodies), (bodies, declared)
    assert "Union[str, List[str]]" in ast.get_source_segment(
        path.read_text(), cls
    )  # a list of prompts
