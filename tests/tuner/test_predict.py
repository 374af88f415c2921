"""TunedPrompt talks only to a URL the user configured, never to one a run directory names.

The defect: with no URL configured, ``TunedPrompt.service`` fell back to the ``base_url``
in the run's manifest and opened a ``Client`` there, which attached ``BBT_API_KEY`` from
the environment or ``.env``: a run directory from someone else could collect your key.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
import respx

from bbt.client import Client, LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.testing import CoreTransport, mock_respx_router
from bbt.tuner import Example, TunedPrompt, get_preset, read_manifest, sample_k_shot, tune

from .conftest import H, small_config

RECORDED = "http://recorded.example:8000"
CONFIGURED = "http://configured.example:9000"
KEY = "sk-canary-5b1e0c7d9a2f4e3b-must-stay-home"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run whose manifest records RECORDED, as a run tuned there would.

    Tuned once per module (no test writes to it), to spare the shared CPU.
    """
    out = tmp_path_factory.mktemp("predict") / "run"
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(pool, 16, 1, 2)
    transport = CoreTransport(MockBackend(hidden_size=H))
    with Client(RECORDED, transport=transport, env_file=None) as client:
        tune(client, get_preset("mock"), train, dev, small_config(budget=16), run_dir=out)
    assert read_manifest(out)["service"]["base_url"] == RECORDED
    return out


@pytest.fixture
def user_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user has a key (environment and .env) and no URL configured."""
    for name in list(os.environ):
        if name.startswith("BBT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"BBT_API_KEY={KEY}\n")
    monkeypatch.setenv("BBT_API_KEY", KEY)


@pytest.mark.usefixtures("user_key")
def test_the_recorded_url_is_never_contacted(run: Path) -> None:
    # Intercept all of httpx: the recorded host answers like a real service would, and any
    # other request fails the test as unmocked.
    with mock_respx_router(MockBackend(hidden_size=H), base_url=RECORDED) as router:
        tp = TunedPrompt.load(run)
        refused: ConfigurationError | None = None
        try:
            tp.predict(["vate sato"])
        except ConfigurationError as exc:
            refused = exc
        sent = [c.request for c in router.calls]  # respx forgets them on leaving the block
    # Before the fix: every request went there with "Authorization: Bearer <KEY>".
    assert [r.headers.get("Authorization") for r in sent] == []
    assert sent == []
    assert refused is not None
    assert tp.recorded_base_url == RECORDED
    message = str(refused)
    assert repr(RECORDED) in message  # names what it refused to contact ...
    assert "base_url=" in message  # ... and how to opt in
    assert "BBT_BASE_URL" in message
    assert KEY not in message


@pytest.mark.usefixtures("user_key")
def test_a_configured_url_wins_and_the_recorded_one_gets_nothing(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_BASE_URL", CONFIGURED)
    # respx forgets its calls on leaving the block: every check happens inside it.
    with respx.mock(assert_all_called=False) as router:
        recorded = router.route(host="recorded.example").mock(return_value=httpx.Response(500))
        configured = router.route(host="configured.example")
        configured.side_effect = CoreTransport(MockBackend(hidden_size=H)).handle_request
        preds = TunedPrompt.load(run).predict(["vate sato", "lune"])
        assert len(preds) == 2
        assert recorded.call_count == 0
        assert configured.call_count > 0
        assert all(c.request.headers["Authorization"] == f"Bearer {KEY}" for c in configured.calls)


@pytest.mark.usefixtures("user_key")
def test_passing_the_recorded_url_is_the_explicit_opt_in(run: Path) -> None:
    with mock_respx_router(MockBackend(hidden_size=H), base_url=RECORDED) as router:
        tp = TunedPrompt.load(run, base_url=RECORDED)
        assert len(tp.predict(["vate sato"])) == 1
        assert router.calls.call_count > 0
        assert {c.request.url.host for c in router.calls} == {"recorded.example"}


@pytest.mark.usefixtures("user_key")
def test_a_bound_service_needs_no_url(run: Path, service: LocalClient) -> None:
    with respx.mock() as router:  # any HTTP request at all would be unmocked and fail
        assert len(TunedPrompt.load(run, service).predict(["vate sato"])) == 1
        assert router.calls.call_count == 0
