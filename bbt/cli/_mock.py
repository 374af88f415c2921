"""``bbt mock-server``: the numpy mock model behind the real app factory, with optional faults.

Missing FastAPI/uvicorn, a busy port or bad settings end the command with a one-line
message and a non-zero status, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bbt.cli._common import bind_listener, one_line_errors
from bbt.cli._params import from_params
from bbt.cli._serve import warn_if_exposed
from bbt.cli._startup import auth_summary, run_uvicorn, start_logging
from bbt.cli._startup import log_level as parse_log_level


def mock_server(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", "-p", min=0, max=65535, help="TCP port (0: any)."),
    hidden_size: int = typer.Option(64, "--hidden-size", min=8, help="H of the mock model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the mock model's weights."),
    model_id: str | None = typer.Option(
        None, "--model-id", help="Model id to serve under (default bbt-mock, bbt-mock-causal)."
    ),
    causal: bool = typer.Option(
        False,
        "--causal",
        help="Serve the mock as a causal LM (kind causal_lm: no mask token, scored at the "
        "token after the text).",
    ),
    api_key: list[str] = typer.Option(
        [],
        "--api-key",
        help="Accepted bearer key (repeatable; also BBT_SERVER_API_KEYS). Prefer the "
        "environment or --api-key-file: arguments show in process lists.",
    ),
    api_key_file: Path | None = typer.Option(
        None, "--api-key-file", help="File with one accepted key per line."
    ),
    max_body_bytes: int | None = typer.Option(
        None, "--max-body-bytes", min=1, help="Largest request body (default: 32 MiB)."
    ),
    max_concurrency: int = typer.Option(
        1, "--max-concurrency", min=1, help="Backend calls run at once."
    ),
    max_queue: int | None = typer.Option(
        None,
        "--max-queue",
        min=0,
        help="Requests that may wait for the backend; more get 503 + Retry-After "
        "(default 16; also BBT_SERVER_MAX_QUEUE).",
    ),
    compute_ms: float = typer.Option(
        0.0,
        "--compute-ms",
        min=0,
        help="Simulated model time per logits call; unlike --latency-ms it holds the "
        "backend, so requests queue as on a real model.",
    ),
    latency_ms: float = typer.Option(0.0, "--latency-ms", min=0, help="Added to every request."),
    jitter_ms: float = typer.Option(0.0, "--jitter-ms", min=0, help="Extra uniform delay."),
    rate_429: float = typer.Option(0.0, "--rate-429", min=0, max=1, help="Share of 429s."),
    retry_after: int = typer.Option(1, "--retry-after", min=0, help="Retry-After of 429s (s)."),
    rate_500: float = typer.Option(0.0, "--rate-500", min=0, max=1, help="Share of 500s."),
    rate_503: float = typer.Option(0.0, "--rate-503", min=0, max=1, help="Share of 503s."),
    rate_timeout: float = typer.Option(
        0.0, "--rate-timeout", min=0, max=1, help="Share of answers delayed by --timeout-s."
    ),
    timeout_s: float = typer.Option(30.0, "--timeout-s", min=0, help="Delay of slow answers."),
    rate_drop: float = typer.Option(
        0.0, "--rate-drop", min=0, max=1, help="Share of connections dropped mid-response."
    ),
    rate_malformed: float = typer.Option(
        0.0, "--rate-malformed", min=0, max=1, help="Share of 200s with a broken body."
    ),
    fault_seed: int = typer.Option(0, "--fault-seed", help="Seed of the fault sequence."),
    registry: str | None = typer.Option(
        None,
        "--registry",
        help="Prompt registry: a file path, or 'memory' (default: none, no registry).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning."),
) -> None:
    """Serve the deterministic mock masked (or, with --causal, causal) LM (needs bbt\\[server])."""
    level = parse_log_level(log_level)
    # A BBTError here is create_app's own message, which names the extra.
    with one_line_errors("bbt mock-server needs {name}: pip install 'bbt[server]'"):
        import uvicorn  # noqa: F401  (missing: the one-line message, before any work)

        from bbt.server.app import create_app
    from pydantic import SecretStr

    from bbt.server.faults import FaultConfig
    from bbt.server.mock import MockBackend
    from bbt.server.settings import ServerSettings

    with one_line_errors(invalid="invalid settings"):
        given: dict[str, Any] = {"max_concurrency": max_concurrency}
        if api_key:
            given["api_keys"] = [SecretStr(k) for k in api_key]
        if api_key_file is not None:
            given["api_key_file"] = api_key_file
        if max_body_bytes is not None:
            given["max_body_bytes"] = max_body_bytes
        if max_queue is not None:
            given["max_queue"] = max_queue
        settings = ServerSettings(**given)
        # The fault flags are FaultConfig's fields but for two names (--seed is the model's).
        faults = from_params(FaultConfig, ctx.params, retry_after_s=retry_after, seed=fault_seed)
    from bbt.server.registry import open_registry

    with one_line_errors():
        store = open_registry(registry, default=None)

    start_logging(level)
    backend = MockBackend(
        hidden_size=hidden_size, seed=seed, model_id=model_id, compute_ms=compute_ms, causal=causal
    )
    model_id = backend.info.id
    app = create_app(backend, settings, faults, registry=store)
    sock = bind_listener(host, port)
    bound = sock.getsockname()
    auth = auth_summary(settings, "no authentication")
    typer.echo(
        f"bbt mock-server: {model_id} ({'causal, ' if causal else ''}H={hidden_size}, "
        f"seed {seed}) on "
        f"http://{host}:{bound[1]} ({auth}"
        + (", faults on" if faults.active else "")
        + (f", prompt registry {store.path}" if store is not None else "")
        + "); Ctrl-C stops",
        err=True,
    )
    warn_if_exposed("bbt mock-server", str(bound[0]), int(bound[1]), len(settings.api_keys))

    def stop() -> None:
        sock.close()
        if store is not None:
            store.close()

    run_uvicorn(
        app, sock, settings, log_level, cleanup=stop, lifespan="off", timeout_graceful_shutdown=2
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("mock-server")(mock_server)
