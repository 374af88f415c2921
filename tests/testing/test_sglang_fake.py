"""bbt.testing's SGLang fake: SGLang 0.5.23's shapes, answers and refusals."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from bbt.sglang import generate_body, rows_json
from bbt.testing.sglang_fake import FAKE_BASE_URL, RADIX_CACHE_ERROR, SGLangFake


def _post(fake: SGLangFake, path: str, body: Any) -> tuple[int, Any]:
    status, _, payload = fake.handle("POST", path, {}, json.dumps(body).encode())
    return status, payload


def test_a_batch_is_answered_with_one_object_per_sequence() -> None:
    fake = SGLangFake()
    seqs = [rows_json(fake.table[[3, 4, 5]], "float32"), rows_json(fake.table[[3, 6]], "float32")]
    status, answer = _post(fake, "/generate", generate_body(seqs, [7, 8]))
    assert status == 200
    assert len(answer) == 2
    meta = answer[0]["meta_info"]
    assert meta["prompt_tokens"] == 3
    assert meta["completion_tokens"] == 1
    (entries,) = meta["output_token_ids_logprobs"]
    assert [e[1] for e in entries] == [7, 8]
    lp = fake.batch_logprobs([fake.split_sequence(np.asarray(seqs[0], np.float32))])[0]
    assert [e[0] for e in entries] == pytest.approx([lp[7], lp[8]])


def test_one_sequence_is_answered_with_one_object() -> None:
    fake = SGLangFake()
    body = {**generate_body([], [7]), "input_embeds": rows_json(fake.table[[3, 4]], "float32")}
    status, answer = _post(fake, "/generate", body)
    assert status == 200
    assert isinstance(answer, dict)
    assert "output_token_ids_logprobs" in answer["meta_info"]


def test_without_return_logprob_there_are_no_logprobs() -> None:
    fake = SGLangFake()
    body = {**generate_body([rows_json(fake.table[[3]], "float32")], [7]), "return_logprob": False}
    _, (answer,) = _post(fake, "/generate", body)
    assert "output_token_ids_logprobs" not in answer["meta_info"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"input_embeds": None}, "Either text, input_ids or input_embeds"),
        ({"sampling_params": {"max_tokens": 1}}, "unknown field `max_tokens`"),
        ({"sampling_params": {"temperature": -1}}, "temperature"),
        ({"sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"token_ids_logprob": [10**6]}, "out-of-vocabulary"),
        ({"token_ids_logprob": ["7"]}, "token_ids_logprob"),
        ({"return_logprob": "yes"}, "return_logprob"),
        ({"input_embeds": [[[0.0] * 3]]}, "hidden size"),
    ],
)
def test_bad_bodies_are_400_with_sglangs_error_shape(change: dict[str, Any], needle: str) -> None:
    fake = SGLangFake()
    body = {**generate_body([rows_json(fake.table[[3]], "float32")], [7]), **change}
    status, answer = _post(fake, "/generate", body)
    assert status == 400
    assert needle in answer["error"]["message"]


def test_radix_cache_on_refuses_input_embeds() -> None:
    fake = SGLangFake(disable_radix_cache=False)
    status, answer = _post(
        fake, "/generate", generate_body([rows_json(fake.table[[3]], "float32")], [7])
    )
    assert status == 400
    assert answer["error"]["message"] == RADIX_CACHE_ERROR


def test_tokenize_takes_a_string_or_a_list_and_keys_are_checked() -> None:
    fake = SGLangFake(api_key="sk-fake-1")
    with httpx.Client(base_url=FAKE_BASE_URL, transport=fake.transport()) as http:
        assert http.post("/tokenize", json={"prompt": "pepe"}).status_code == 401
        auth = {"Authorization": "Bearer sk-fake-1"}
        one = http.post(
            "/tokenize", json={"prompt": "pepe", "add_special_tokens": False}, headers=auth
        )
        many = http.post("/tokenize", json={"prompt": ["pepe", "vate sato"]}, headers=auth)
        info = http.get("/server_info", headers=auth).json()
    assert one.json()["tokens"] == fake.tokenize_ids("pepe", False)
    assert many.json()["tokens"] == [fake.tokenize_ids(t, True) for t in ("pepe", "vate sato")]
    assert info["version"] == "0.5.23"
