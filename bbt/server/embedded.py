"""The embedded default: the reference server with the default model, on a loopback port.

``bbt tune`` with no service URL uses :func:`embedded_server`: it loads
:class:`~bbt.server.hf.HFBackend` (all-MiniLM-L6-v2 with the shipped fitted MLM head, the
dtype picked from the hardware), serves it with the protocol-v1 app factory under uvicorn
in a background thread on a free ``127.0.0.1`` port, yields the base URL, and stops the
server when the block ends.
No API key is configured: the socket only listens on loopback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from bbt.errors import ConfigurationError
from bbt.server.hf import SERVE_EXTRA_HINT, default_model_path

__all__ = ["EMBEDDED_DEFAULTS", "default_model_path", "embedded_server"]

#: Backend options of the embedded default unless overridden. ``auto``: bfloat16 where the
#: CPU runs it natively (~1.9x float32), float32 where torch would emulate it (5.6x slower
#: than float32 on an AVX2-only CPU); see :mod:`bbt.server._compute`.
EMBEDDED_DEFAULTS: dict[str, Any] = {"dtype": "auto", "device": "auto"}


def _require_uvicorn() -> Any:
    try:
        import uvicorn
    except ImportError:
        raise ConfigurationError(
            f"the embedded server needs uvicorn and FastAPI: {SERVE_EXTRA_HINT}"
        ) from None
    return uvicorn


@contextmanager
def embedded_server(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
    **backend_options: Any,
) -> Iterator[str]:
    """Serve ``model`` (default: the embedded MiniLM) on a free port; yield its base URL.

    ``backend_options`` go to the backend :func:`~bbt.server.backend.backend_for` picks
    (:class:`~bbt.server.hf.HFBackend` for a masked LM: ``head``, ``dtype``,
    ``num_threads``, ``token_budget``, ...), over :data:`EMBEDDED_DEFAULTS`. ``say``, when
    given, receives one-line progress messages. Raises
    :class:`~bbt.errors.ConfigurationError` when the ``serve`` extra is missing, the model
    cannot be loaded, or the server does not start within ``startup_timeout`` seconds.
    """
    uvicorn = _require_uvicorn()
    from bbt.server.backend import backend_for
    from bbt.server.hf import HFBackend

    try:
        from bbt.server.app import create_app
        from bbt.server.settings import ServerSettings
    except ImportError:  # pragma: no cover - fastapi comes with the extra
        raise ConfigurationError(f"the embedded server needs FastAPI: {SERVE_EXTRA_HINT}") from None

    options = {**EMBEDDED_DEFAULTS, **backend_options}
    started = time.monotonic()
    # Whatever the registry picks for a model directory is a Hugging Face backend.
    backend = cast("HFBackend", backend_for(model, **options))
    if say is not None:
        say(
            f"loaded {backend.info.id} ({backend.head_name} head) in "
            f"{time.monotonic() - started:.1f}s on {backend.device}; {backend.compute_reason}"
        )
    sock: socket.socket | None = None
    server: Any = None
    thread: threading.Thread | None = None
    try:
        # Loopback only and no keys: explicit, so BBT_SERVER_* settings cannot lock us out.
        app = create_app(backend, ServerSettings(api_keys=[], api_key_file=None))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="auto",
            timeout_graceful_shutdown=5,
            **app.state.core.settings.uvicorn_options(),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="bbt-embedded-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive():
                raise ConfigurationError("the embedded server stopped while starting")
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the embedded server did not start within {startup_timeout:.0f}s"
                )
            time.sleep(0.02)
        url = f"http://{host}:{port}"
        if say is not None:
            say(f"embedded server listening at {url}")
        yield url
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        if sock is not None:
            sock.close()
        backend.close()
