"""bbt's one-line errors and error.log never show a URL's ``user:password@`` (issue 18)."""

from __future__ import annotations

from bbt.cli._tune import _redact


def test_cli_error_text_drops_url_credentials() -> None:
    text = "connection failed for http://bbt-user:pw-cli-77a1@10.0.0.1:8000/v1/models?key=k1"
    assert _redact(text) == "connection failed for http://10.0.0.1:8000/v1/models?key=***"
