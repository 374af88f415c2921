"""The access log cannot be forged from a request (issue 18, item 7).

uvicorn percent-decodes the path, so ``/v1/x%0d%0a...`` reaches the app as a real CR LF; a
log line written raw would split in two and the second half would read as a request that
never happened. Every request-derived string is escaped before it is logged.
"""

from __future__ import annotations

import logging
import socket

import anyio
import pytest

from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app

from .asgi import RawCall, uvicorn_server

FORGED = " 200 0.1ms in=0 out=0 id=forged"


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bbt.server.access"]


def test_percent_encoded_crlf_in_the_path_stays_on_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ServerSettings(api_keys=[])
    app = create_app(MockBackend(), settings)
    raw = b"GET /v1/x%0d%0aGET%20/v1/models" + FORGED.replace(" ", "%20").encode() + b" HTTP/1.1"
    with (
        caplog.at_level(logging.INFO, logger="bbt.server.access"),
        uvicorn_server(app, settings) as url,
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as sock,
    ):
        sock.sendall(raw + b"\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = b""
        for _ in range(100):  # bounded; the server closes after one answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 ")
    (record,) = _access_records(caplog)
    line = record.getMessage()
    assert "\r" not in line
    assert "\n" not in line
    assert line.startswith("GET /v1/x\\x0d\\x0aGET\\x20/v1/models\\x20200\\x200.1ms")
    assert " 404 " in line
    # The structured field is escaped too: a plain formatter may print %(path)s.
    assert "\n" not in record.__dict__["path"]
    assert record.__dict__["path"].startswith("/v1/x\\x0d\\x0a")


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("\r\n", "\\x0d\\x0a"),
        ("\x00\x1b[31m", "\\x00\\x1b[31m"),
        ("\x85", "\\x85"),  # C1 NEL: a newline to some log viewers
        ("\u2028", "\\u2028"),  # Unicode line separator
        (" ", "\\x20"),  # a space would start a forged field on the same line
        ("\\x0a", "\\x5cx0a"),  # a literal backslash cannot pose as an escape
        ('"', "\\x22"),
    ],
)
def test_a_raw_control_character_in_the_scope_path_is_escaped(
    raw: str, escaped: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Another server (Ray Serve's proxy, a test client) may hand over what uvicorn's
    # parser would refuse: the app escapes whatever the scope holds.
    app = create_app(MockBackend(), ServerSettings(api_keys=[]))
    call = RawCall(app, f"/v1/x{raw}y", {})
    with caplog.at_level(logging.INFO, logger="bbt.server.access"):
        anyio.run(call.run)
    assert call.status == 404
    (record,) = _access_records(caplog)
    assert f"POST /v1/x{escaped}y 404 " in record.getMessage()
    assert record.__dict__["path"] == f"/v1/x{escaped}y"


def test_loggable_leaves_an_ordinary_path_alone() -> None:
    from bbt.server._logsafe import loggable

    assert loggable("/v1/sessions/AbC-_9/logits") == "/v1/sessions/AbC-_9/logits"
    assert loggable("/v1/modèles") == "/v1/modèles"  # printable non-ASCII is kept
    assert loggable(None) == "None"
