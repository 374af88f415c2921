"""bbt.testing._fake_server: what the engine fakes share (dispatch, routes, faults, the key,
the transport and the ``python -m`` entry), on a toy fake."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest

from bbt.testing._fake_server import FakeServer, route, serve_main
from bbt.testing._vllm_model import FakeError


class Toy(FakeServer):
    @route("GET", "/ping")
    def _ping(self, body: Any) -> Any:
        return {"pong": body}

    @route("POST", "/echo")
    def _echo(self, body: Any) -> Any:
        if body.get("bad"):
            raise FakeError(422, "bad echo")
        return body

    def needs_key(self, path: str) -> bool:
        return path != "/ping"


class Louder(Toy):
    @route("GET", "/ping")
    def _loud(self, body: Any) -> Any:
        return {"PONG": True}


def test_routes_are_the_marked_methods_and_a_subclass_replaces_them() -> None:
    assert set(Toy().routes()) == {("GET", "/ping"), ("POST", "/echo")}
    assert Louder().handle("GET", "/ping", {}, b"")[2] == {"PONG": True}
    assert Toy().handle("GET", "/ping", {}, b"")[2] == {"pong": None}


def test_dispatch_answers_json_errors_and_404() -> None:
    fake = Toy()
    assert fake.handle("POST", "/echo", {}, b'{"a":1}') == (200, {}, {"a": 1})
    assert list(fake.requests_seen) == [{"path": "/echo", "body": {"a": 1}}]
    assert fake.handle("POST", "/echo", {}, b'{"bad":1}') == (
        422,
        {},
        {"error": {"message": "bad echo"}},
    )
    assert fake.handle("POST", "/echo", {}, b"[1]")[0] == 400
    assert fake.handle("POST", "/echo", {}, b"{nope")[2] == {
        "error": {"message": "request body is not valid JSON"}
    }
    assert fake.handle("GET", "/nowhere", {}, b"") == (404, {}, {"detail": "Not Found"})
    assert fake.counters.requests == 5


def test_the_key_guards_the_paths_the_engine_says() -> None:
    fake = Toy(api_key="k")
    assert fake.handle("POST", "/echo", {}, b"{}")[0] == 401
    assert fake.handle("POST", "/echo", {"authorization": "Bearer k"}, b"{}")[0] == 200
    assert fake.handle("GET", "/ping", {}, b"")[0] == 200


def test_faults_come_first_with_retry_after_over_the_transport() -> None:
    fake = Toy(faults=[(503, 1.5), (500, None)])
    with httpx.Client(transport=fake.transport(), base_url="http://toy") as client:
        first = client.get("/ping")
        assert (first.status_code, first.headers["retry-after"]) == (503, "1.5")
        assert first.json() == {"error": {"message": "injected fault"}}
        assert client.get("/ping").status_code == 500
        assert client.get("/ping").json() == {"pong": None}


def test_serve_main_builds_writes_and_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    served: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(
        uvicorn, "run", lambda app, host, port, log_level: served.append((app, host, port))
    )

    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--loud", action="store_true")

    made: list[argparse.Namespace] = []

    def make(args: argparse.Namespace) -> FakeServer:
        made.append(args)
        return Louder(api_key=args.api_key) if args.loud else Toy()

    argv = ["--loud", "--api-key", "k", "--model-files", str(tmp_path / "m")]
    assert serve_main(argv, engine="Toy", port=4321, add_options=options, make=make) == 0
    assert made[0].loud
    assert made[0].api_key == "k"
    assert served[0][1:] == ("127.0.0.1", 4321)
    assert (tmp_path / "m" / "config.json").is_file()
    assert "wrote" in capsys.readouterr().out
