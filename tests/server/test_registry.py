"""The prompt registry's endpoints: store, describe, score by id, delete; tenants; bounds;
damaged or foreign rows answer 4xx. Each test runs on the FastAPI app and on the in-process
core (``bbt.testing.CoreTransport``), which must answer alike."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bbt.protocol import PROTOCOL_VERSION, LogitsResponse, StoredPrompt, Tensor, is_prompt_id
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.server.registry import PromptRegistry, RegistryLimits
from bbt.testing import CoreTransport

from .helpers import assert_envelope, logits_body, prompts, texts

KEY_A = "sk-tenant-a-0c1d2e3f"
KEY_B = "sk-tenant-b-9f8e7d6c"
H = 64

Factory = Callable[..., Any]


def _app_client(backend: MockBackend, settings: ServerSettings, registry: Any) -> Any:
    return TestClient(create_app(backend, settings, registry=registry))


def _core_client(backend: MockBackend, settings: ServerSettings, registry: Any) -> Any:
    from bbt.server._core import ServiceCore

    core = ServiceCore(backend, settings, registry)
    return httpx.Client(base_url="http://core.test", transport=CoreTransport(core))


@pytest.fixture(params=[_app_client, _core_client], ids=["app", "core"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """``make(keys=(), limits=None, registry=..., **settings)``: a client on a server with a
    registry (``settings`` go to :class:`ServerSettings`)."""
    made: list[Any] = []
    stores: list[PromptRegistry] = []

    def factory(
        keys: tuple[str, ...] = (),
        limits: RegistryLimits | None = None,
        registry: PromptRegistry | str | None = "new",
        backend: MockBackend | None = None,
        **settings_kw: Any,
    ) -> Any:
        if registry == "new":
            registry = PromptRegistry(tmp_path / f"reg{len(stores)}.sqlite3", limits)
            stores.append(registry)
        settings = ServerSettings(api_keys=[SecretStr(k) for k in keys], **settings_kw)
        client = request.param(backend or MockBackend(hidden_size=H, seed=0), settings, registry)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()
    for store in stores:
        store.close()


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _store(client: Any, prompt: np.ndarray[Any, Any], key: str | None = None, **extra: Any) -> Any:
    body = {"model": "bbt-mock", "prompt": Tensor.from_numpy(prompt).model_dump(), **extra}
    return client.post("/v1/prompts", json=body, headers=_auth(key))


def _by_id_body(b: int = 3) -> dict[str, Any]:
    info = MockBackend(hidden_size=H, seed=0).info
    return {"model": info.id, "texts": texts(info, b), "candidate_ids": [5, 6]}


def test_store_describe_score_delete(make: Factory) -> None:
    client = make()
    prompt = prompts(1, 4, H, seed=3)[0]
    r = _store(client, prompt, label="sst2 seed 1", recipe={"note": "test"})
    assert r.status_code == 200, r.text
    stored = StoredPrompt.model_validate_json(r.content)
    assert is_prompt_id(stored.id)
    assert stored.shape == [4, H]
    assert stored.nbytes == 4 * H * 4
    assert stored.label == "sst2 seed 1"
    assert stored.recipe == {"note": "test"}

    got = client.get(f"/v1/prompts/{stored.id}")
    assert got.status_code == 200
    assert StoredPrompt.model_validate_json(got.content) == stored
    assert "data" not in got.text  # metadata only: the tensor never travels back

    by_id = client.post(f"/v1/prompts/{stored.id}/logits", json=_by_id_body())
    assert by_id.status_code == 200, by_id.text
    body = logits_body(MockBackend(hidden_size=H).info, prompt[None], b=3, candidate_ids=[5, 6])
    sent = client.post("/v1/logits", json=body)
    a = LogitsResponse.model_validate_json(by_id.content)
    b = LogitsResponse.model_validate_json(sent.content)
    assert a.logits.shape == [1, 3, 2]
    # Bitwise the same answer as sending the prompt itself (float32 on the wire both ways).
    assert np.array_equal(a.logits.to_numpy(), b.logits.to_numpy())
    assert a.usage == b.usage

    gone = client.delete(f"/v1/prompts/{stored.id}")
    assert gone.status_code == 200
    assert gone.json() == {
        "id": stored.id,
        "object": "prompt",
        "deleted": True,
    }
    assert_envelope(client.get(f"/v1/prompts/{stored.id}"), 404)
    assert_envelope(client.post(f"/v1/prompts/{stored.id}/logits", json=_by_id_body()), 404)
    assert_envelope(client.delete(f"/v1/prompts/{stored.id}"), 404)


def test_storing_the_same_prompt_again_gives_the_same_id(make: Factory) -> None:
    client = make()
    prompt = prompts(1, 2, H, seed=1)[0]
    first = _store(client, prompt).json()["id"]
    assert _store(client, prompt).json()["id"] == first
    assert _store(client, prompt + 1e-3).json()["id"] != first


def test_another_key_can_neither_read_use_nor_delete_a_prompt(make: Factory) -> None:
    client = make(keys=(KEY_A, KEY_B))
    prompt_id = _store(client, prompts(1, 2, H)[0], KEY_A).json()["id"]
    unknown = "bp_" + "x" * 32
    for pid in (prompt_id, unknown):
        answers = [
            client.get(f"/v1/prompts/{pid}", headers=_auth(KEY_B)),
            client.post(f"/v1/prompts/{pid}/logits", json=_by_id_body(), headers=_auth(KEY_B)),
            client.delete(f"/v1/prompts/{pid}", headers=_auth(KEY_B)),
        ]
        for answer in answers:
            env = assert_envelope(answer, 404)
            assert env.error.type.value == "not_found"
            # Another key's prompt reads exactly like one that never existed.
            assert env.error.message == f"no stored prompt {pid} for this API key"
    # Key B's attempts changed nothing for key A.
    assert client.get(f"/v1/prompts/{prompt_id}", headers=_auth(KEY_A)).status_code == 200
    ok = client.post(f"/v1/prompts/{prompt_id}/logits", json=_by_id_body(), headers=_auth(KEY_A))
    assert ok.status_code == 200
    # Key B storing the same bytes gets an id of its own.
    other = _store(client, prompts(1, 2, H)[0], KEY_B).json()["id"]
    assert other != prompt_id


def test_no_key_is_a_401_not_a_lookup(make: Factory) -> None:
    client = make(keys=(KEY_A,))
    assert_envelope(_store(client, prompts(1, 2, H)[0]), 401)


def test_the_file_holds_no_api_key(make: Factory, tmp_path: Path) -> None:
    client = make(keys=(KEY_A,))
    assert _store(client, prompts(1, 2, H)[0], KEY_A).status_code == 200
    client.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("reg0.sqlite3*"))
    assert raw  # the database (and its WAL) is there to search
    assert KEY_A.encode() not in raw
    import hashlib

    assert hashlib.sha256(KEY_A.encode()).hexdigest().encode() not in raw


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: {**t, "shape": [2, H + 1]}, "prompt.shape"),
        (lambda t: {**t, "shape": [1, 2, H]}, "prompt.shape"),
        (lambda t: {**t, "shape": [0, H], "data": ""}, "prompt.shape"),
        (lambda t: {**t, "data": t["data"][:-4]}, "prompt.data"),
        (lambda t: {**t, "data": "!" * len(t["data"])}, "prompt.data"),
    ],
    ids=["wrong-width", "deep-without-capability", "empty", "short-data", "not-base64"],
)
def test_malformed_prompts_are_refused_with_422(make: Factory, mutate: Any, field: str) -> None:
    client = make()
    tensor = Tensor.from_numpy(prompts(1, 2, H)[0]).model_dump()
    r = client.post("/v1/prompts", json={"model": "bbt-mock", "prompt": mutate(tensor)})
    env = assert_envelope(r, 422)
    assert env.error.field == field


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e6])
def test_non_finite_or_huge_values_are_refused(make: Factory, bad: float) -> None:
    client = make()
    prompt = prompts(1, 2, H)[0]
    prompt[1, 3] = bad
    env = assert_envelope(_store(client, prompt), 422)
    assert env.error.field == "prompt.data"


def test_wrong_model_and_bad_texts_are_422(make: Factory) -> None:
    client = make()
    assert_envelope(
        client.post(
            "/v1/prompts",
            json={"model": "other", "prompt": Tensor.from_numpy(prompts(1, 2, H)[0]).model_dump()},
        ),
        404,
    )
    pid = _store(client, prompts(1, 2, H)[0]).json()["id"]
    body = {**_by_id_body(), "texts": ["no mask here"]}
    env = assert_envelope(client.post(f"/v1/prompts/{pid}/logits", json=body), 422)
    assert env.error.field == "texts.0"


def test_a_damaged_stored_prompt_is_a_422_not_a_500(make: Factory, tmp_path: Path) -> None:
    store = PromptRegistry(tmp_path / "damaged.sqlite3")
    client = make(registry=store)
    pid = _store(client, prompts(1, 2, H)[0]).json()["id"]
    db = sqlite3.connect(tmp_path / "damaged.sqlite3")
    with db:
        db.execute("UPDATE prompts SET payload = zeroblob(8) WHERE id = ?", (pid,))
    db.close()
    env = assert_envelope(client.post(f"/v1/prompts/{pid}/logits", json=_by_id_body()), 422)
    assert env.error.field == "prompt_id"
    assert "damaged" in env.error.message
    # Storing the prompt again replaces the damaged copy with a working one.
    again = _store(client, prompts(1, 2, H)[0]).json()["id"]
    assert again != pid
    assert client.post(f"/v1/prompts/{again}/logits", json=_by_id_body()).status_code == 200
    store.close()


def test_a_prompt_stored_for_another_model_is_a_422(make: Factory, tmp_path: Path) -> None:
    store = PromptRegistry(tmp_path / "shared.sqlite3")
    first = make(registry=store)
    pid = _store(first, prompts(1, 2, H)[0]).json()["id"]
    # The same file behind a server that now serves a different model under another id.
    second = make(registry=store, backend=MockBackend(hidden_size=H, model_id="other-model"))
    body = {**_by_id_body(), "model": "other-model"}
    env = assert_envelope(second.post(f"/v1/prompts/{pid}/logits", json=body), 422)
    assert env.error.field == "prompt_id"
    assert "bbt-mock" in env.error.message
    store.close()


def test_bounds_per_key_are_403_with_a_way_out(make: Factory) -> None:
    client = make(keys=(KEY_A, KEY_B), limits=RegistryLimits(max_prompts=2))
    ids = [_store(client, prompts(1, 2, H, seed=s)[0], KEY_A).json()["id"] for s in range(2)]
    env = assert_envelope(_store(client, prompts(1, 2, H, seed=9)[0], KEY_A), 403)
    assert "delete some" in env.error.message
    assert env.error.type.value == "permission"
    # The bound is per key: key B still has room; the same prompt again needs none.
    assert _store(client, prompts(1, 2, H, seed=9)[0], KEY_B).status_code == 200
    assert _store(client, prompts(1, 2, H, seed=0)[0], KEY_A).json()["id"] == ids[0]
    client.delete(f"/v1/prompts/{ids[0]}", headers=_auth(KEY_A))
    assert _store(client, prompts(1, 2, H, seed=9)[0], KEY_A).status_code == 200


def test_byte_bounds_are_403(make: Factory) -> None:
    one = 2 * H * 4
    client = make(
        keys=(KEY_A, KEY_B), limits=RegistryLimits(max_bytes=one, max_total_bytes=one * 2)
    )
    assert _store(client, prompts(1, 2, H, seed=0)[0], KEY_A).status_code == 200
    env = assert_envelope(_store(client, prompts(1, 2, H, seed=1)[0], KEY_A), 403)
    assert f"{one}-byte bound per key" in env.error.message
    assert _store(client, prompts(1, 2, H, seed=2)[0], KEY_B).status_code == 200
    client2 = make(keys=("sk-third",), registry=client_registry(client))
    env = assert_envelope(_store(client2, prompts(1, 2, H, seed=3)[0], "sk-third"), 403)
    assert "registry is full" in env.error.message


def client_registry(client: Any) -> PromptRegistry:
    app = client.app if isinstance(client, TestClient) else None
    core = app.state.core if app is not None else client._transport.core
    assert core.prompts is not None
    registry: PromptRegistry = core.prompts.registry
    return registry


def test_a_server_without_a_registry_says_so(make: Factory) -> None:
    client = make(registry=None)
    env = assert_envelope(_store(client, prompts(1, 2, H)[0]), 404)
    assert "no prompt registry" in env.error.message
    assert_envelope(client.get("/v1/prompts/bp_" + "a" * 32), 404)


def test_wrong_methods_are_405(make: Factory) -> None:
    client = make()
    assert_envelope(client.delete("/v1/prompts"), 405)
    assert_envelope(client.put("/v1/prompts/bp_" + "a" * 32, json={}), 405)
    assert_envelope(client.get("/v1/prompts/bp_" + "a" * 32 + "/logits"), 405)


def test_openapi_lists_the_registry_routes_when_it_is_on(tmp_path: Path) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    store = PromptRegistry(tmp_path / "openapi.sqlite3")
    doc = TestClient(create_app(MockBackend(), registry=store)).get("/openapi.json").json()
    validator.validate(doc)
    routes = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert {
        ("/v1/prompts", "post"),
        ("/v1/prompts/{prompt_id}", "get"),
        ("/v1/prompts/{prompt_id}", "delete"),
        ("/v1/prompts/{prompt_id}/logits", "post"),
    } <= routes
    store.close()


def _spec(**kw: Any) -> dict[str, Any]:
    info = MockBackend(hidden_size=H).info
    base = {"seed": 11, "n_tokens": 3, "hidden_size": H, "dim": 8}
    base["embedding_std"] = info.embedding_std
    return {**base, **kw}


def test_a_projection_and_z_store_the_prompt_a_session_would_build(make: Factory) -> None:
    from bbt.protocol import ProjectionSpec
    from bbt.protocol.projection import Projection
    from bbt.protocol.sessions import recipe_of

    client = make()
    spec = ProjectionSpec(**_spec())
    z = np.random.default_rng(2).standard_normal(8).astype(np.float32)
    p0 = prompts(1, 3, H, seed=4)[0]
    body = {
        "model": "bbt-mock",
        "projection": spec.model_dump(),
        "z": Tensor.from_numpy(z).model_dump(),
        "p0": {"tensor": Tensor.from_numpy(p0).model_dump()},
        "recipe": {"run": "r1"},
    }
    r = client.post("/v1/prompts", json=body)
    assert r.status_code == 200, r.text
    stored = StoredPrompt.model_validate_json(r.content)
    assert stored.kind == "projection"
    assert stored.shape == [3, H]
    assert stored.recipe["run"] == "r1"
    assert stored.recipe["projection"]["seed"] == 11
    assert "tensor_sha256" in stored.recipe["p0"]  # p0's digest, not a second copy of it
    # The client-side projection of the same recipe gives the same bytes: the same id.
    local = Projection(recipe_of(spec)).project(z[None], p0)[0]
    assert _store(client, local).json()["id"] == stored.id
    # p0 from vocabulary ids, resolved by the server.
    body_ids = {**body, "p0": {"token_ids": [5, 6, 7]}}
    by_ids = client.post("/v1/prompts", json=body_ids)
    assert by_ids.status_code == 200, by_ids.text
    assert by_ids.json()["recipe"]["p0"] == {"token_ids": [5, 6, 7]}
    logits = client.post(f"/v1/prompts/{by_ids.json()['id']}/logits", json=_by_id_body())
    assert logits.status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"projection": _spec(recipe="bbt-projection/99")}, "projection.recipe"),
        ({"projection": _spec(hidden_size=H + 1)}, "projection.hidden_size"),
        ({"z": Tensor.from_numpy(np.zeros(7, dtype=np.float32)).model_dump()}, "z.shape"),
        ({"z": Tensor.from_numpy(np.full(8, np.nan, dtype=np.float32)).model_dump()}, "z.data"),
        ({"z": Tensor.from_numpy(np.full(8, 1e30, dtype=np.float32)).model_dump()}, "z.data"),
        ({"p0": {"token_ids": [1]}}, "p0.token_ids"),
        ({"z": None}, "body"),
        ({"prompt": Tensor.from_numpy(prompts(1, 3, H)[0]).model_dump()}, "body"),
    ],
    ids=["recipe", "width", "z-shape", "z-nan", "z-huge", "p0-ids", "no-z", "both"],
)
def test_malformed_projection_stores_are_4xx(
    make: Factory, change: dict[str, Any], field: str
) -> None:
    client = make()
    body = {
        "model": "bbt-mock",
        "projection": _spec(),
        "z": Tensor.from_numpy(np.ones(8, dtype=np.float32)).model_dump(),
        **change,
    }
    body = {k: v for k, v in body.items() if v is not None}
    env = assert_envelope(client.post("/v1/prompts", json=body), 422)
    if field != "body":
        assert env.error.field == field


# --------------------------------------------------------------------------- the store


def test_the_file_is_wal_versioned_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "registry.sqlite3"
    store = PromptRegistry(path)
    store.put(store.tenant_of("k"), "m", prompts(1, 2, 4)[0])
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    assert path.stat().st_mode & 0o077 == 0
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    # Reopened, it still holds the prompt under the same tenant (the salt persists).
    again = PromptRegistry(path)
    assert again.usage(again.tenant_of("k")) == (1, 2 * 4 * 4)
    assert again.usage(again.tenant_of("other")) == (0, 0)
    again.close()


def test_a_newer_schema_is_refused_not_rewritten(tmp_path: Path) -> None:
    from bbt.errors import ConfigurationError

    path = tmp_path / "future.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(ConfigurationError, match="newer than this bbt"):
        PromptRegistry(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 99
    db.close()


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    from bbt.errors import ConfigurationError

    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigurationError, match="cannot open the prompt registry"):
        PromptRegistry(path)


def test_default_location_and_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bbt.server.registry import default_path, open_registry

    monkeypatch.setenv("BBT_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / "registry.sqlite3"
    monkeypatch.delenv("BBT_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "bbt" / "registry.sqlite3"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_path() == Path.home() / ".local" / "share" / "bbt" / "registry.sqlite3"
    assert open_registry("none", default=tmp_path / "x.sqlite3") is None
    assert open_registry(None, default=None) is None
    memory = open_registry("memory", default=None)
    assert memory is not None
    assert memory.path == ":memory:"
    memory.close()
    in_dir = open_registry(str(tmp_path), default=None)
    assert in_dir is not None
    assert in_dir.path == str(tmp_path / "registry.sqlite3")
    in_dir.close()


def test_mock_server_refuses_an_unusable_registry_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bbt.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    result = CliRunner().invoke(app, ["mock-server", "--registry", str(blocker / "r.sqlite3")])
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot create the registry directory")
    assert "Traceback" not in result.output


class _FakeHF(MockBackend):
    """``bbt serve``'s backend without a model: the registry wiring is what is tested."""

    head_name = "tied"
    compute_dtype = "float32"
    device = "cpu"
    compute_reason = "float32: a stand-in, no model"

    def __init__(self, model: object = None, **_: object) -> None:
        super().__init__()


@pytest.mark.parametrize(
    ("args", "where"),
    [([], "default"), (["--registry", "none"], None), (["--registry", "memory"], ":memory:")],
)
def test_bbt_serve_opens_the_registry_it_is_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], where: str | None
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    import bbt.server.hf
    import bbt.server.hf_causal  # imported before the swap below
    from bbt.cli import app

    # hf_causal subclasses HFBackend at import: imported first while the fake stands in for
    # HFBackend, it would subclass the fake for the rest of the session.
    monkeypatch.setenv("BBT_HOME", str(tmp_path))
    monkeypatch.setattr(bbt.server.hf, "HFBackend", _FakeHF)
    seen: list[Any] = []

    def run(self: Any, sockets: Any = None) -> None:
        core = self.config.app.state.core
        seen.append(None if core.prompts is None else core.prompts.registry.path)
        seen.append(list(core.info.capabilities))

    monkeypatch.setattr(uvicorn.Server, "run", run)
    result = CliRunner().invoke(app, ["serve", "--port", "0", *args])
    assert result.exit_code == 0, result.output
    path, capabilities = seen
    expected = str(tmp_path / "registry.sqlite3") if where == "default" else where
    assert path == expected
    assert f"prompt registry: {expected or 'off'}" in result.output
    assert ("prompt_registry" in capabilities) == (where is not None)


def test_a_key_lists_only_its_own_prompts(make: Factory) -> None:
    client = make(keys=(KEY_A, KEY_B))
    assert client.get("/v1/prompts", headers=_auth(KEY_A)).json() == {"object": "list", "data": []}
    ids = [_store(client, prompts(1, 2, H, seed=s)[0], KEY_A).json()["id"] for s in range(3)]
    _store(client, prompts(1, 2, H, seed=7)[0], KEY_B)
    listed = client.get("/v1/prompts", headers=_auth(KEY_A))
    assert listed.status_code == 200
    assert [p["id"] for p in listed.json()["data"]] == ids  # oldest first, B's not among them
    assert all("data" not in p for p in listed.json()["data"])  # metadata only
    client.delete(f"/v1/prompts/{ids[1]}", headers=_auth(KEY_A))
    again = client.get("/v1/prompts", headers=_auth(KEY_A)).json()["data"]
    assert [p["id"] for p in again] == [ids[0], ids[2]]


# --------------------------------------------------------------------------- free-form input
# Issue 18 item 4: a recipe or label that cannot be rendered back must be refused on the way
# in (422), and a row that cannot be rendered (written before the check, or by hand) must
# never take down the whole list.

V12 = {"X-BBT-Protocol": PROTOCOL_VERSION}


def _raw_store(client: Any, extra_json: str, key: str | None = None) -> Any:
    """POST a store request whose tail is raw JSON text: httpx cannot encode a lone
    surrogate, but JSON's "\\ud800" escape carries one to the server."""
    tensor = Tensor.from_numpy(prompts(1, 2, H, seed=5)[0]).model_dump_json()
    body = f'{{"model":"bbt-mock","prompt":{tensor},{extra_json}}}'
    headers = {"Content-Type": "application/json", **_auth(key)}
    return client.post("/v1/prompts", content=body.encode(), headers=headers)


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('"recipe":{"note":"\\ud800"}', "recipe.note"),
        ('"recipe":{"\\udfff":1}', "recipe"),
        ('"recipe":{"list":["ok","\\ud800x"]}', "recipe.list.1"),
        ('"label":"seed \\ud800"', "label"),
    ],
)
def test_a_lone_surrogate_is_a_422_and_the_list_still_works(
    make: Factory, extra: str, field: str
) -> None:
    client = make()
    good = _store(client, prompts(1, 2, H, seed=1)[0]).json()["id"]
    env = assert_envelope(_raw_store(client, extra), 422)
    assert env.error.field == field
    assert "surrogate" in env.error.message
    listed = client.get("/v1/prompts")
    assert listed.status_code == 200, listed.text
    assert [p["id"] for p in listed.json()["data"]] == [good]


@pytest.mark.parametrize("depth", [33, 300])
def test_a_deeply_nested_recipe_is_a_422(make: Factory, depth: int) -> None:
    client = make()
    env = assert_envelope(_raw_store(client, f'"recipe":{_nested(depth)}'), 422)
    assert env.error.field == "recipe"
    assert "nested more than 32 levels" in env.error.message
    assert client.get("/v1/prompts").status_code == 200
    # The bound is the setting's: 32 levels are fine by default.
    assert _raw_store(client, f'"recipe":{_nested(32)}').status_code == 200


def test_non_finite_recipe_numbers_are_a_422(make: Factory) -> None:
    # Python's JSON reader takes NaN and Infinity; strict JSON readers do not, so a stored
    # NaN would make the list unreadable to other clients.
    client = make()
    env = assert_envelope(_raw_store(client, '"recipe":{"loss":NaN}'), 422)
    assert env.error.field == "recipe.loss"


def test_the_recipe_size_bound_is_a_setting(make: Factory) -> None:
    client = make(registry_max_recipe_bytes=1000)
    env = assert_envelope(_store(client, prompts(1, 2, H)[0], recipe={"x": "y" * 1000}), 422)
    assert env.error.field == "recipe"
    assert "1000 bytes" in env.error.message
    assert _store(client, prompts(1, 2, H)[0], recipe={"x": "y" * 900}).status_code == 200


def _insert_raw(path: Path, prompt_id: str, created_at: float, **cols: Any) -> None:
    """A row written behind the server's back (an older bbt, a hand edit), tenant-less key."""
    payload = prompts(1, 2, H, seed=int(created_at))[0].astype("<f4").tobytes()
    row: dict[str, Any] = {
        "id": prompt_id,
        "tenant": "anonymous",
        "model": "bbt-mock",
        "kind": "tensor",
        "shape": f"[2, {H}]",
        "nbytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "recipe": "{}",
        "label": None,
        "created_at": created_at,
        "payload": payload,
    }
    row.update(cols)
    db = sqlite3.connect(path)
    with db:
        db.execute(
            f"INSERT INTO prompts ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    db.close()


BAD_ROWS: dict[str, dict[str, Any]] = {
    "surrogate": {"recipe": '{"k":"\\ud800"}'},
    "deep": {"recipe": _nested(300)},
    "very deep": {"recipe": _nested(5000)},
    "not json": {"recipe": "{not json"},
    "bad utf8 label": {"label": b"\xff\xfe"},
    "bad shape": {"shape": "[2, 'x']"},
}


def test_rows_that_cannot_be_rendered_do_not_take_down_the_list(
    make: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "old-rows.sqlite3"
    store = PromptRegistry(path)
    client = make(registry=store)
    first = _store(client, prompts(1, 2, H, seed=1)[0], recipe={"ok": 1}).json()["id"]
    bad_ids = []
    for i, cols in enumerate(BAD_ROWS.values()):
        bad_id = f"bp_{'b' * 30}{i:02d}"
        bad_ids.append(bad_id)
        # A bytes label goes in as a BLOB; CAST it to TEXT as a damaged text column would be.
        _insert_raw(path, bad_id, 2_000_000_000.0 + i, **cols)
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE prompts SET label = CAST(label AS TEXT) WHERE typeof(label) = 'blob'")
    db.close()
    last = _store(client, prompts(1, 2, H, seed=2)[0]).json()["id"]  # created now: before them

    for headers in ({}, V12):  # a v1 client and a 1.2 one both get a readable list
        listed = client.get("/v1/prompts", headers=headers)
        assert listed.status_code == 200, listed.text
        data = listed.json()["data"]
        good = [p for p in data if p["id"] not in bad_ids]
        assert [p["id"] for p in good] == [first, last]
        assert good[0]["recipe"] == {"ok": 1}
        shown = {p["id"]: p for p in data if p["id"] in bad_ids}
        # Shown (so the owner can find and delete them) with the fields that could not be
        # read left empty; a 1.2 client is also told why.
        for p in shown.values():
            assert p["recipe"] == {}
            if headers:
                assert "damaged" in p["damaged"]
            else:
                assert "damaged" not in p
    for bad_id in bad_ids:
        env = assert_envelope(client.get(f"/v1/prompts/{bad_id}"), 422)
        assert env.error.field == "prompt_id"
        assert "damaged" in env.error.message
        assert client.delete(f"/v1/prompts/{bad_id}").status_code == 200
    assert [p["id"] for p in client.get("/v1/prompts").json()["data"]] == [first, last]
    store.close()


def test_a_prompt_whose_row_is_damaged_is_replaced_when_stored_again(
    make: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "replace.sqlite3"
    store = PromptRegistry(path)
    client = make(registry=store)
    prompt = prompts(1, 2, H, seed=4)[0]
    pid = _store(client, prompt).json()["id"]
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE prompts SET recipe = ? WHERE id = ?", ('{"k":"\\ud800"}', pid))
    db.close()
    again = _store(client, prompt)
    assert again.status_code == 200, again.text
    assert again.json()["id"] != pid
    assert client.post(f"/v1/prompts/{again.json()['id']}/logits", json=_by_id_body()).is_success
    store.close()


# --------------------------------------------------------------------------- quotas and pages
# Issue 18 item 5: every stored byte counts against the key's bound, and the list comes in
# pages (limit + cursor) whose size is bounded.


def test_recipe_bytes_count_against_the_key_quota(make: Factory) -> None:
    payload = 2 * H * 4
    client = make(limits=RegistryLimits(max_bytes=payload * 2 + 40_000))
    recipe = {"notes": "n" * 30_000}
    assert _store(client, prompts(1, 2, H, seed=0)[0], recipe=recipe).status_code == 200
    # Two payloads fit the bound; the first prompt's recipe takes the room of the second.
    env = assert_envelope(_store(client, prompts(1, 2, H, seed=1)[0], recipe=recipe), 403)
    assert env.error.type.value == "permission"
    assert "byte bound per key" in env.error.message
    registry = client_registry(client)
    count, used = registry.usage(registry.tenant_of(None))
    assert count == 1
    assert used >= payload + 30_000
    # A label counts too.
    env = assert_envelope(
        _store(client, prompts(1, 2, H, seed=2)[0], label="l" * 200, recipe={"n": "x" * 9_800}),
        403,
    )


def _page(client: Any, query: str = "", headers: dict[str, str] | None = None) -> Any:
    r = client.get(f"/v1/prompts{query}", headers=V12 if headers is None else headers)
    assert r.status_code == 200, r.text
    return r


def test_the_list_comes_in_pages_in_a_stable_order(make: Factory) -> None:
    client = make()
    ids = [_store(client, prompts(1, 2, H, seed=s)[0]).json()["id"] for s in range(8)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = _page(client, query).json()
        assert len(body["data"]) <= 3
        seen += [p["id"] for p in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # A prompt deleted between pages neither breaks the cursor nor repeats a row.
        if pages == 1:
            client.delete(f"/v1/prompts/{ids[3]}")
    assert pages == 3
    assert seen == ids[:3] + ids[4:]
    # A prompt stored while paging comes last, on a later page, never twice.
    whole = _page(client).json()
    assert whole["next_cursor"] is None
    assert [p["id"] for p in whole["data"]] == seen


def test_old_clients_get_the_first_page_without_the_cursor(make: Factory) -> None:
    client = make(registry_page_size=2)
    ids = [_store(client, prompts(1, 2, H, seed=s)[0]).json()["id"] for s in range(3)]
    for version in ({}, {"X-BBT-Protocol": "1.1"}):
        body = _page(client, headers=version).json()
        assert body == {"object": "list", "data": body["data"]}  # no field they do not know
        assert [p["id"] for p in body["data"]] == ids[:2]
    body = _page(client).json()
    assert [p["id"] for p in body["data"]] == ids[:2]
    assert body["next_cursor"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?cursor=not-a-cursor", "cursor"),
        ("?cursor=" + "A" * 40, "cursor"),
        ("?cursor=", "cursor"),
        ("?limit=0", "limit"),
        ("?limit=-3", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=" + "9" * 5000, "limit"),
    ],
)
def test_bad_page_parameters_are_422(make: Factory, query: str, field: str) -> None:
    client = make()
    _store(client, prompts(1, 2, H)[0])
    env = assert_envelope(client.get(f"/v1/prompts{query}"), 422)
    assert env.error.field == field


def test_a_limit_past_the_maximum_is_clamped(make: Factory) -> None:
    client = make(registry_page_size=2, registry_max_page_size=4)
    for s in range(6):
        _store(client, prompts(1, 2, H, seed=s)[0])
    body = _page(client, "?limit=1000000").json()
    assert len(body["data"]) == 4
    assert body["next_cursor"]


def test_a_page_is_bounded_in_bytes(make: Factory) -> None:
    budget = 100_000
    client = make(registry_max_page_bytes=budget)
    row_recipe = {"notes": "n" * 30_000}
    ids = [
        _store(client, prompts(1, 2, H, seed=s)[0], recipe=row_recipe).json()["id"]
        for s in range(10)
    ]
    seen: list[str] = []
    cursor = ""
    while True:
        r = _page(client, f"?limit=1000{'&cursor=' + cursor if cursor else ''}")
        # limit * row size would be 300 KB; the page stops at the byte budget (plus the one
        # row that crossed it).
        assert len(r.content) <= budget + 31_000
        body = r.json()
        assert body["data"]
        seen += [p["id"] for p in body["data"]]
        if body["next_cursor"] is None:
            break
        cursor = body["next_cursor"]
    assert seen == ids


# --------------------------------------------------------------------------- storage faults
# Issue 18 item 8: a disk that is full or read-only, an I/O error or a lock held too long is
# a typed 503 naming the cause, and the registry works again once the fault is gone.


class FaultyDB:
    """A registry connection whose statements matching ``fail_on`` raise ``error``."""

    def __init__(self, real: sqlite3.Connection, error: sqlite3.Error, fail_on: str) -> None:
        self.real = real
        self.error = error
        self.fail_on = fail_on
        self.failing = True

    def execute(self, sql: str, *args: Any) -> Any:
        if self.failing and sql.lstrip().upper().startswith(self.fail_on):
            raise self.error
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize(
    ("message", "fail_on", "says"),
    [
        ("database or disk is full", "INSERT", "disk is full"),
        ("disk I/O error", "SELECT", "I/O error"),
        ("database is locked", "BEGIN", "busy"),
        ("attempt to write a readonly database", "COMMIT", "read-only"),
    ],
)
def test_storage_faults_are_typed_503s(
    make: Factory, message: str, fail_on: str, says: str
) -> None:
    client = make()
    registry = client_registry(client)
    pid = _store(client, prompts(1, 2, H, seed=1)[0]).json()["id"]
    faulty = FaultyDB(registry._db, sqlite3.OperationalError(message), fail_on)
    registry._db = faulty  # type: ignore[assignment]
    r = _store(client, prompts(1, 2, H, seed=2)[0])
    env = assert_envelope(r, 503)
    assert env.error.type.value == "unavailable"
    assert says in env.error.message
    assert "registry" in env.error.message
    if says == "busy":
        assert r.headers["Retry-After"] == "1"
    else:
        assert "Retry-After" not in r.headers  # waiting a second will not free a disk
    if fail_on == "SELECT":  # reads fail too
        assert_envelope(client.get("/v1/prompts"), 503)
        assert_envelope(client.get(f"/v1/prompts/{pid}"), 503)
        assert_envelope(client.post(f"/v1/prompts/{pid}/logits", json=_by_id_body()), 503)
    else:  # only writes fail: the prompts stored before still serve
        assert client.get("/v1/prompts").status_code == 200
        assert client.post(f"/v1/prompts/{pid}/logits", json=_by_id_body()).status_code == 200
    faulty.failing = False
    # No transaction was left open: the registry works again once the fault is gone.
    assert _store(client, prompts(1, 2, H, seed=2)[0]).status_code == 200
    assert len(client.get("/v1/prompts").json()["data"]) == 2


def test_a_read_only_registry_is_a_503_for_writes_and_serves_reads(
    make: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "ro.sqlite3"
    store = PromptRegistry(path)
    client = make(registry=store)
    pid = _store(client, prompts(1, 2, H, seed=1)[0]).json()["id"]
    # The file turns read-only under a running server (a remount): tests run as root, whom
    # chmod does not stop, so open it read-only instead.
    store._db.close()
    store._db = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    env = assert_envelope(_store(client, prompts(1, 2, H, seed=2)[0]), 503)
    assert env.error.type.value == "unavailable"
    assert "read-only" in env.error.message
    assert str(path) not in env.error.message  # no server paths in answers
    assert_envelope(client.delete(f"/v1/prompts/{pid}"), 503)
    assert [p["id"] for p in client.get("/v1/prompts").json()["data"]] == [pid]
    assert client.post(f"/v1/prompts/{pid}/logits", json=_by_id_body()).status_code == 200
    store.close()
