"""Which service a command talks to: ``--mock``, a URL (HTTP, ``vllm+`` or ``sglang+``), or
the embedded default server, started for the command (with the ``--server-*`` options) and
stopped after.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import typer

from bbt.errors import ConfigurationError

DEFAULT_MOCK_HIDDEN = 64
#: How messages name each engine adapter.
ENGINE_NAMES = {"vllm": "vLLM", "sglang": "SGLang"}
#: Read timeout (s) for the embedded server unless BBT_TIMEOUT or .env sets one.
EMBEDDED_TIMEOUT = 3600.0
#: The help panel of the embedded server's options.
SERVER_PANEL = "Server (embedded)"

#: Environment variables for the embedded server's options, read when no flag is given.
SERVER_ENV = {
    "dtype": "BBT_EMBEDDED_DTYPE",
    "num_threads": "BBT_EMBEDDED_THREADS",
    "device": "BBT_EMBEDDED_DEVICE",
}
#: Command parameter -> its flag, in the order messages name them.
SERVER_FLAGS = {
    "server_dtype": "--server-dtype",
    "server_threads": "--server-threads",
    "server_device": "--server-device",
}


@dataclass(frozen=True)
class ServerOptions:
    """How to run the embedded server, when the command starts one.

    ``given`` names the flags typed on the command line: those are refused when another
    service answers (a URL, ``--mock``), since they could not have any effect. Values from
    ``BBT_EMBEDDED_*`` are meant for whenever the embedded server starts, and are ignored
    otherwise.
    """

    dtype: str | None = None
    num_threads: int | None = None
    device: str | None = None
    given: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> ServerOptions:
        threads = os.environ.get(SERVER_ENV["num_threads"]) or None
        try:
            num_threads = None if threads is None else int(threads)
        except ValueError:
            raise ConfigurationError(
                f"{SERVER_ENV['num_threads']} must be a whole number, not {threads!r}"
            ) from None
        return cls(
            dtype=os.environ.get(SERVER_ENV["dtype"]) or None,
            num_threads=num_threads,
            device=os.environ.get(SERVER_ENV["device"]) or None,
        )

    def refuse(self, other: str) -> None:
        """Raise when flags for the embedded server were given but ``other`` answers."""
        if self.given:
            flags = " and ".join(self.given)
            verb = "applies" if len(self.given) == 1 else "apply"
            raise ConfigurationError(
                f"{flags} only {verb} to the embedded server, which this command does not "
                f"start: the {other} answers, with its own settings"
            )

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments for ``embedded_server``: only what was set, so the embedded
        defaults decide the rest; the backend validates the values."""
        options: dict[str, Any] = {}
        if self.dtype is not None:
            options["dtype"] = self.dtype
        if self.num_threads is not None:
            options["num_threads"] = self.num_threads
        if self.device is not None:
            options["device"] = resolve_device(self.device)
        return options


def resolve_device(device: str) -> str:
    """``auto``: CUDA where torch sees a device, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def server_options(
    ctx: typer.Context, dtype: str | None, num_threads: int | None, device: str | None
) -> ServerOptions:
    def typed(name: str) -> bool:
        # By name: typer may ship its own copy of click's ParameterSource enum.
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    given = tuple(flag for name, flag in SERVER_FLAGS.items() if typed(name))
    return ServerOptions(dtype=dtype, num_threads=num_threads, device=device, given=given)


@contextmanager
def open_service(
    *,
    mock: bool,
    mock_hidden_size: int,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    say: Callable[[str], None],
    server: ServerOptions | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The service to use and how the manifest should describe it (no credentials).

    ``server`` (default: the ``BBT_EMBEDDED_*`` variables) configures the embedded server.
    """
    server = server if server is not None else ServerOptions.from_env()
    if mock:
        server.refuse("in-process mock")
        from bbt.client import LocalClient
        from bbt.server.mock import MockBackend

        yield (
            LocalClient(MockBackend(hidden_size=mock_hidden_size)),
            {"kind": "mock", "hidden_size": mock_hidden_size},
        )
        return
    from bbt.client import Client, ClientSettings
    from bbt.client.engine_urls import engine_of

    settings = ClientSettings(base_url=base_url, api_key=api_key, model=model)
    engine = engine_of(settings.base_url)
    if engine is not None:
        server.refuse(f"{ENGINE_NAMES[engine]} server at the configured URL")
        factory = import_module(f"bbt.{engine}").service_from_settings
        with factory(settings) as svc:
            yield svc, {"kind": engine, "base_url": settings.base_url}
        return
    if settings.base_url:
        server.refuse("service at the configured URL (--base-url, BBT_BASE_URL or .env)")
        with Client.from_settings(settings) as client:
            yield client, {"kind": "http", "base_url": settings.base_url}
        return
    try:
        from bbt.server.embedded import embedded_server
    except ImportError as exc:
        raise ConfigurationError(
            "no service URL configured (--base-url or BBT_BASE_URL) and the embedded default "
            f"server is not available ({exc}); install it with: pip install 'bbt[serve]'"
        ) from None
    say("no service URL configured: starting the embedded default server (stopped at the end)")
    # The embedded server has no keys and listens on loopback: a BBT_API_KEY meant for a
    # remote service has no business travelling, even to 127.0.0.1.
    update: dict[str, Any] = {"api_key": None}
    if "timeout" not in settings.model_fields_set:
        # The embedded model shares this machine's CPU: a population request can outlast a
        # network timeout, and a retry would only queue the same work again behind it.
        update["timeout"] = EMBEDDED_TIMEOUT
    with embedded_server(say=say, **server.backend_options()) as url:
        update["base_url"] = url
        with Client.from_settings(settings.model_copy(update=update)) as client:
            yield client, {"kind": "embedded", "base_url": url}
    say("embedded server stopped")


def service_for_run(
    run_dir: Path,
    mock: bool | None,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    say: Callable[[str], None],
    server: ServerOptions | None = None,
) -> Any:
    """A run made against the in-process mock is resumed/used against it again."""
    from bbt.tuner import read_manifest

    manifest = read_manifest(run_dir)
    svc = manifest.get("service", {})
    use_mock = mock if mock is not None else (svc.get("kind") == "mock" and not base_url)
    hidden = int(svc.get("hidden_size") or manifest["model"]["hidden_size"])
    return open_service(
        mock=use_mock,
        mock_hidden_size=hidden,
        base_url=base_url,
        api_key=api_key,
        model=model,
        say=say,
        server=server,
    )


DTYPE_HELP = (
    "Embedded server only: compute dtype, auto | float32 | bfloat16 | float16 (CUDA) "
    f"(or {SERVER_ENV['dtype']}; default: the embedded default)."
)
THREADS_HELP = f"Embedded server only: torch threads (or {SERVER_ENV['num_threads']})."
DEVICE_HELP = (
    f"Embedded server only: auto | cpu | cuda (or {SERVER_ENV['device']}); auto picks CUDA "
    "when torch sees a GPU."
)


def _server_option(param: str, env: str, help: str) -> Any:
    """The ``--server-*`` option of command parameter ``param``, read from ``SERVER_ENV[env]``
    when not given."""
    return typer.Option(
        None, SERVER_FLAGS[param], envvar=SERVER_ENV[env], help=help, rich_help_panel=SERVER_PANEL
    )


def server_dtype_option() -> Any:
    return _server_option("server_dtype", "dtype", DTYPE_HELP)


def server_threads_option() -> Any:
    return _server_option("server_threads", "num_threads", THREADS_HELP)


def server_device_option() -> Any:
    return _server_option("server_device", "device", DEVICE_HELP)
