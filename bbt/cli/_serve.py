"""``bbt serve``: the reference LMaaS server for a Hugging Face masked or causal LM.

Loads :class:`~bbt.server.hf.HFBackend` (default: the embedded MiniLM with its shipped MLM
head), or :class:`~bbt.server.hf_causal.HFCausalBackend` for a directory whose config names
a causal LM (:func:`~bbt.server.hf_causal.detect_model_kind`), builds the protocol-v1 app
with :func:`~bbt.server.app.create_app` and runs it under uvicorn (``bbt[serve]``). A bad
model path, a missing extra, an unreadable key file or a port in use end the command with a
one-line message and a non-zero status, never a traceback.

Listening beyond loopback with no API key is allowed (a trusted network, a proxy doing auth)
but never silent: :func:`exposure_warning` decides, and both ``bbt serve`` and
``bbt mock-server`` print its WARNING at start-up.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, cast

import typer

from bbt.cli._common import bind_listener, fail, one_line_errors
from bbt.cli._serve_options import option
from bbt.cli._startup import auth_summary, run_uvicorn, start_logging
from bbt.cli._startup import log_level as parse_log_level


def exposure_warning(command: str, bound_host: str, port: int, n_keys: int) -> str | None:
    """The start-up WARNING for a server reachable beyond this machine with no API key.

    ``bound_host`` is the address the socket actually bound (so ``localhost`` counts as
    loopback and ``0.0.0.0`` / ``::`` as every interface). None when there is nothing to say.
    """
    if n_keys > 0:
        return None
    try:
        address = ipaddress.ip_address(bound_host.split("%", 1)[0])
    except ValueError:
        address = None
    if address is not None and address.is_loopback:
        return None
    every = address is not None and address.is_unspecified
    where = f"{bound_host} (every interface)" if every else bound_host
    return (
        f"WARNING: {command} is listening on {where} with NO API KEY: anyone "
        f"who can reach port {port} can use this server and its compute. Set "
        "BBT_SERVER_API_KEYS or --api-key-file, or listen on 127.0.0.1."
    )


def warn_if_exposed(command: str, bound_host: str, port: int, n_keys: int) -> None:
    message = exposure_warning(command, bound_host, port, n_keys)
    if message is not None:
        typer.secho(message, err=True, fg=typer.colors.RED, bold=True)


#: What ``bbt serve`` says when an import of the serve extra fails.
NEEDS_SERVE = "bbt serve needs the serve extra ({name} is missing): pip install 'bbt[serve]'"


def serve(
    model: str | None = option("model", None, "-m"),
    head: str = option("head", "auto"),
    host: str = option("host", "127.0.0.1"),
    port: int = option("port", 8000, "-p", min=0, max=65535),
    dtype: str = option("dtype", "auto"),
    device: str = option("device", "auto"),
    threads: int | None = option("threads", None, min=1),
    token_budget: int | None = option("token_budget", None, min=1),
    model_id: str | None = option("model_id", None),
    api_key_file: Path | None = option("api_key_file", None),
    max_queue: int | None = option("max_queue", None, min=0),
    registry: str | None = option("registry", None),
    sessions: bool | None = option("sessions", None, flag="--sessions/--no-sessions"),
    session_idle_timeout: float | None = option("session_idle_timeout", None, min=1),
    max_sessions_per_key: int | None = option("max_sessions_per_key", None, min=1),
    max_session_memory: int | None = option("max_session_memory", None, min=1),
    log_level: str = option("log_level", "info"),
    replicas: int | None = option("replicas", None, min=1),
    ray_address: str | None = option("ray_address", None),
) -> None:
    """Serve a masked or causal LM over protocol v1 (needs bbt\\[serve])."""
    level = _check_options(dtype, device, log_level, replicas, ray_address)
    model = _packaged_model(model)
    session_settings = _session_settings(
        session_idle_timeout, max_sessions_per_key, max_session_memory
    )
    backend_options: dict[str, Any] = {
        "dtype": dtype,
        "device": device,
        "num_threads": threads,
        "token_budget": token_budget,
        "model_id": model_id,
    }
    if replicas is not None:
        # Replicas have no prompt registry (one SQLite file per replica would hand out ids
        # the others do not know: docs/scaling.md), and Ray's router does the queueing.
        if registry is not None and registry != "none":
            fail("--registry is not available with --replicas: the replicas keep no prompt "
                 "registry (docs/scaling.md says how to run one for a cluster)")  # fmt: skip
        if max_queue is not None:
            fail("--max-queue is not used with --replicas: Ray Serve's router queues requests")
        _serve_on_ray(
            replicas,
            ray_address,
            host=host,
            port=port,
            api_key_file=api_key_file,
            sessions=sessions,
            session_settings=session_settings,
            backend_options={"model_path": model, "head": head, **backend_options},
        )
        return
    settings_kw: dict[str, Any] = dict(session_settings)
    for key, value in (("api_key_file", api_key_file), ("max_queue", max_queue)):
        if value is not None:
            settings_kw[key] = value
    if sessions is not None:
        settings_kw["sessions"] = sessions
    _serve_here(
        model,
        head,
        host=host,
        port=port,
        level=level,
        log_level=log_level,
        registry=registry,
        settings_kw=settings_kw,
        backend_options=backend_options,
    )


def _packaged_model(model: str | None) -> str | None:
    """A packaged GGUF model's name (bbt.server.packaged) as its converted directory, with
    its licence said on stderr; any other value unchanged. A name that is also a path is a
    path."""
    from bbt.server import packaged

    if model is None or not packaged.is_packaged(model) or Path(model).exists():
        return model
    entry = packaged.PACKAGED[model]
    if packaged.converted(entry) is None:
        typer.echo(
            f"converting {model} once to {packaged.cache_dir() / model} (minutes) ...", err=True
        )
    with one_line_errors():
        path = packaged.resolve(model)
    typer.echo(f"{model}: {packaged.licence_line(path) or entry.licence}", err=True)
    return str(path)


def _check_options(
    dtype: str, device: str, log_level: str, replicas: int | None, ray_address: str | None
) -> int:
    """Refuse bad choices in one line each; answer the logging level."""
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        fail(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {device!r}")
    level = parse_log_level(log_level)
    if ray_address is not None and replicas is None:
        fail("--ray-address needs --replicas")
    return level


def _session_settings(
    idle_timeout: float | None, per_key: int | None, memory_mib: int | None
) -> dict[str, Any]:
    """The session options given, as :class:`ServerSettings` fields (the rest default)."""
    given = {
        "session_idle_timeout_s": idle_timeout,
        "max_sessions_per_key": per_key,
        "max_session_bytes": None if memory_mib is None else memory_mib * 1024 * 1024,
    }
    return {field: value for field, value in given.items() if value is not None}


def _serve_here(
    model: str | None,
    head: str,
    *,
    host: str,
    port: int,
    level: int,
    log_level: str,
    registry: str | None,
    settings_kw: dict[str, Any],
    backend_options: dict[str, Any],
) -> None:
    """``bbt serve`` in this process: one model, uvicorn, the prompt registry."""
    with one_line_errors(NEEDS_SERVE):
        import uvicorn  # noqa: F401  (missing: the one-line message, before any work)

        from bbt.server.app import create_app
        from bbt.server.backend import backend_for, backend_kind
        from bbt.server.hf import HFBackend
        from bbt.server.settings import ServerSettings

    start_logging(level)
    with one_line_errors(invalid="invalid server settings"):
        settings = ServerSettings(**settings_kw)

    from bbt.server.registry import default_path, open_registry

    # A causal LM (config.json: *ForCausalLM / *LMHeadModel / is_decoder) gets the causal
    # backend; anything else the masked one, as before. Refused before any loading.
    causal = backend_kind(model) == "hf-causal"
    if causal and head != "auto":
        fail(f"--head is for masked LMs; {model} is a causal LM, scored with its own LM head")
    sock = bind_listener(host, port)
    # Before the model: a bad --registry fails in a second, not after a model load.
    with one_line_errors(cleanup=sock.close):
        store = open_registry(registry, default=default_path())

    def release() -> None:
        sock.close()
        if store is not None:
            store.close()

    with one_line_errors(NEEDS_SERVE, cleanup=release):
        typer.echo(f"loading {model or 'the embedded default model'} ...", err=True)
        # Both kinds a model directory can be are Hugging Face backends.
        backend = cast("HFBackend", backend_for(model, head=head, **backend_options))
    info = backend.info
    bound = sock.getsockname()
    auth = auth_summary(settings, "no API key")
    what = "causal LM" if causal else f"{backend.head_name} head"
    typer.echo(
        f"serving {info.id} ({what}, {backend.compute_dtype} on "
        f"{backend.device}) at http://{host}:{bound[1]} ({auth}); Ctrl-C stops",
        err=True,
    )
    typer.echo(f"compute: {backend.compute_reason}", err=True)
    typer.echo(f"prompt registry: {store.path if store is not None else 'off'}", err=True)
    warn_if_exposed("bbt serve", str(bound[0]), int(bound[1]), len(settings.api_keys))
    app = create_app(backend, settings, registry=store)

    def stop() -> None:
        backend.close()
        release()

    run_uvicorn(app, sock, settings, log_level, cleanup=stop, log_config=None)


def _serve_on_ray(
    replicas: int,
    address: str | None,
    *,
    host: str,
    port: int,
    api_key_file: Path | None,
    sessions: bool | None,
    session_settings: dict[str, Any],
    backend_options: dict[str, Any],
) -> None:
    """``bbt serve --replicas``: the same backend options, one model per Ray Serve replica."""
    with one_line_errors(NEEDS_SERVE):  # the server extra itself, then Ray
        from bbt.server import ray_serve

        ray_serve.require_ray()
    if port == 0:
        fail("--replicas needs a fixed --port (Ray Serve's proxy cannot report a free one)")
    bind_listener(host, port).close()  # a port in use: the usual one-line error, now
    threads = backend_options.get("num_threads")
    gpu = backend_options.get("device") == "cuda"
    options = ray_serve.ReplicaOptions(
        replicas=replicas,
        num_cpus=float(threads or 1),
        num_gpus=1.0 if gpu else 0.0,
        api_key_file=str(api_key_file.resolve()) if api_key_file is not None else None,
        sessions=sessions,
        server_settings=tuple(sorted(session_settings.items())),
    )
    spec = ray_serve.BackendSpec("hf", {k: v for k, v in backend_options.items() if v is not None})
    with one_line_errors():
        ray_serve.run_blocking(
            spec,
            options,
            host=host,
            port=port,
            address=address,
            say=lambda m: typer.echo(m, err=True),
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("serve")(serve)
