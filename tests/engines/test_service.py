"""bbt.engines.service: the adapter skeleton, on a toy engine over httpx.MockTransport (no
fake server, so what is checked is the base's own work, not an adapter's)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest

from bbt.client import ClientSettings
from bbt.client.failures import error_for_status
from bbt.engines import EngineService
from bbt.engines.service import Job, Plan
from bbt.errors import APIStatusError, ConfigurationError, InvalidRequestError
from bbt.protocol import ModelInfo, TokenizeResponse

H, V = 4, 12
TABLE = np.arange(V * H, dtype=np.float32).reshape(V, H) / 10


class Toy(EngineService):
    """An engine whose /score answers each sequence's length as every candidate's log-prob."""

    engine = "Toy"
    url_prefix = "toy+"
    url_options: ClassVar[Mapping[str, str]] = {
        "embeddings": "embedding_table",
        "per_request": "sequences_per_request",
    }
    url_ints = frozenset({"sequences_per_request"})
    wire_dtypes = ("float32", "float16")
    strip_v1 = True

    def _status_error(self, response: httpx.Response, secret: Any) -> APIStatusError:
        return error_for_status(response, response.text)

    def _model_info_of(self, card: dict[str, Any]) -> ModelInfo:
        from bbt.engines.codec import model_info

        return model_info(card, self._facts, self._per_request, 8)

    def _read_version(self) -> None:
        self._version_at("/missing", "/version")

    def tokenize(self, texts: Any, add_special_tokens: bool = False) -> TokenizeResponse:
        info, texts = self._texts_for(texts)
        ids = [([0] if add_special_tokens else []) + [1 + len(t) % 5] for t in texts]
        return TokenizeResponse(model=info.id, ids=ids, tokens=[[str(i) for i in r] for r in ids])

    def _plan(self, prompts: Any, texts: Any, candidate_ids: Any) -> Plan:
        info = self.model_info()
        arr = np.asarray(prompts, dtype=np.float32)
        jobs, sequence = self._table_jobs(info, arr, list(texts))

        def body(job: Job) -> dict[str, Any]:
            i, b0, b1 = job
            return {"lengths": [len(sequence(i, j)) for j in range(b0, b1)]}

        return "/score", jobs, body

    def _read_rows(self, answer: Any, count: int, ids: list[int]) -> Any:
        return [(k, [float(n)] * len(ids)) for k, n in enumerate(answer["lengths"])], 7

    def _explain(self, exc: APIStatusError) -> Exception:
        return ConfigurationError("explained") if "explain me" in exc.message else exc


class Server:
    """The toy engine's server: records requests; ``fail`` answers POSTs with that status."""

    def __init__(self, fail: int | None = None, message: str = "boom") -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.fail, self.message = fail, message

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.seen.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/version":
            return httpx.Response(200, json={"version": "1.2.3"})
        if path == "/v1/models":
            cards = [{"id": "a", "max_model_len": 64}, {"id": "b"}]
            return httpx.Response(200, json={"data": cards})
        if path == "/score" and self.fail is None:
            return httpx.Response(200, json=json.loads(body))
        if path == "/score":
            return httpx.Response(self.fail, text=self.message)
        return httpx.Response(404, json={"detail": "Not Found"})


def toy(server: Server | None = None, url: str = "toy+http://h:1/v1/", **kw: Any) -> Toy:
    kw.setdefault("embedding_table", TABLE)
    kw.setdefault("max_retries", 0)
    transport = httpx.MockTransport(server or Server())
    return Toy(url, transport=transport, env_file=None, **kw)


def test_the_url_loses_its_prefix_and_v1() -> None:
    svc = toy()
    assert svc.base_url == "http://h:1"
    assert repr(svc) == "Toy(base_url='http://h:1', api_key=None)"


def test_from_settings_takes_the_url_options() -> None:
    settings = ClientSettings(env_file=None, base_url="toy+http://h:1?per_request=3")
    svc = Toy.from_settings(
        settings, embedding_table=TABLE, transport=httpx.MockTransport(Server())
    )
    assert (svc.base_url, svc._per_request) == ("http://h:1", 3)
    with pytest.raises(ConfigurationError, match="unknown option 'mode' in the Toy URL"):
        Toy.parse_url("toy+http://h:1?mode=chat")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dtype": "bfloat16"}, "dtype must be one of float32, float16; got 'bfloat16'"),
        ({"max_concurrency": 0}, "max_concurrency and sequences_per_request must be >= 1"),
        ({"sequences_per_request": 0}, "max_concurrency and sequences_per_request must be >= 1"),
        ({"embedding_table": np.zeros(3, np.float32)}, "embedding_table must be 2-D"),
    ],
)
def test_bad_options_are_settings_errors(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        toy(**kw)


def test_a_misspelt_option_is_a_type_error_as_without_options() -> None:
    with pytest.raises(
        TypeError, match="Toy\\(\\) got an unexpected keyword argument 'embeddings'"
    ):
        toy(embeddings=TABLE)


def test_an_engine_can_require_the_table() -> None:
    class NeedsTable(Toy):
        def _need_table(self) -> None:
            raise ConfigurationError("no table")

    with pytest.raises(ConfigurationError, match="no table"):
        NeedsTable("http://h:1", env_file=None, hidden_size=H, embedding_std=0.1, vocab_size=V)


def test_discovery_finds_the_wanted_model_and_the_version() -> None:
    server = Server()
    svc = toy(server, model="b")
    info = svc.model_info()
    assert (info.id, info.hidden_size, info.vocab_size) == ("b", H, V)
    assert svc.server_version == "1.2.3"  # /missing answered 404: the next path was asked
    assert [p for _, p, _ in server.seen] == ["/missing", "/version", "/v1/models"]
    assert svc.model_info() is info  # asked once
    with pytest.raises(ConfigurationError, match="model 'c' is not served here"):
        toy(model="c").model_info()


def test_logits_fans_out_and_counts_usage() -> None:
    server = Server()
    svc = toy(server, sequences_per_request=2)
    prompts = np.zeros((2, 3, H), np.float32)
    out = svc.logits(prompts, ["a", "bb", "ccc"], [1, 2])
    # BOS + 3 prompt rows + 1 text token per sequence
    assert out.shape == (2, 3, 2)
    assert (out == 5.0).all()
    posts = [json.loads(b) for m, p, b in server.seen if p == "/score"]
    assert [len(b["lengths"]) for b in posts] == [2, 1, 2, 1]
    usage = svc.usage
    assert (usage.calls, usage.sequences, usage.tokens) == (2, 6, 4 * 7)


def test_logits_errors_go_through_the_engine_hint() -> None:
    svc = toy(Server(fail=400, message="please explain me"))
    with pytest.raises(ConfigurationError, match="explained"):
        svc.logits(np.zeros((1, 1, H), np.float32), ["a"], [1])
    with pytest.raises(APIStatusError):
        toy(Server(fail=400)).logits(np.zeros((1, 1, H), np.float32), ["a"], [1])


def test_embed_reads_the_table_and_refuses_without_one() -> None:
    svc = toy()
    np.testing.assert_array_equal(svc.embed([2, 0]), TABLE[[2, 0]])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        svc.embed([V])
    bare = toy(embedding_table=None, hidden_size=H, embedding_std=0.1, vocab_size=V)
    with pytest.raises(ConfigurationError, match=r"Toy does not serve .*toy\+http:// URL"):
        bare.embed([1])


def test_retries_are_logged_with_the_engine_name_and_no_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "sk-toy-secret-123"
    svc = toy(Server(fail=503, message=f"overloaded {key}"), api_key=key, max_retries=1)
    svc._sleep = lambda _s: None
    with caplog.at_level(logging.WARNING), pytest.raises(APIStatusError):
        svc.logits(np.zeros((1, 1, H), np.float32), ["a"], [1])
    assert "Toy request failed" in caplog.text
    assert key not in caplog.text
