"""How ``bbt tune`` builds its client for the embedded default server (no model loaded)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import bbt.server.embedded
from bbt.cli import _tune


@pytest.fixture
def fake_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Replace the real server by a URL; record what the CLI tells the user."""
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    for var in ("BBT_BASE_URL", "BBT_TIMEOUT", "BBT_API_KEY", "BBT_MODEL"):
        monkeypatch.delenv(var, raising=False)

    @contextmanager
    def fake(**_: Any) -> Iterator[str]:
        yield "http://127.0.0.1:9"

    monkeypatch.setattr(bbt.server.embedded, "embedded_server", fake)
    return []


def _client(said: list[str]) -> tuple[Any, dict[str, Any]]:
    with _tune._service(
        mock=False, mock_hidden_size=0, base_url=None, api_key=None, model=None, say=said.append
    ) as (client, info):
        return client, info


def test_no_url_uses_the_embedded_server_with_a_long_timeout(fake_embedded: list[str]) -> None:
    client, info = _client(fake_embedded)
    assert info == {"kind": "embedded", "base_url": "http://127.0.0.1:9"}
    # A population request on a shared CPU can outlast a network timeout; a retry would
    # queue the same work again behind the first attempt.
    assert client.settings.timeout == _tune.EMBEDDED_TIMEOUT
    assert any("embedded default server" in line for line in fake_embedded)


def test_a_timeout_the_user_set_is_kept(
    fake_embedded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_TIMEOUT", "7")
    client, _ = _client(fake_embedded)
    assert client.settings.timeout == 7.0


def test_a_configured_api_key_never_goes_to_the_embedded_server(
    fake_embedded: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is meant for a remote service; the embedded server has no keys to check.
    monkeypatch.setenv("BBT_API_KEY", "sk-remote-only")
    client, _ = _client(fake_embedded)
    assert client.settings.api_key is None
    assert "Authorization" not in client._headers()
