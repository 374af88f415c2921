"""``bbt serve``'s options as data: each option's help text and help panel, by parameter
name, and the one factory that makes its typer option (flag ``--NAME-WITH-DASHES``)."""

from __future__ import annotations

from typing import Any

import typer

#: The help panels of ``bbt serve --help``: the options grouped by what they set.
PANELS: dict[str, tuple[str, ...]] = {
    "Model": ("model", "head", "model_id"),
    "Compute": ("dtype", "device", "threads", "token_budget"),
    "Listening, access and logs": (
        "host",
        "port",
        "api_key_file",
        "max_queue",
        "registry",
        "log_level",
    ),
    "Projection sessions (protocol 1.1)": (
        "sessions",
        "session_idle_timeout",
        "max_sessions_per_key",
        "max_session_memory",
    ),
    "Scale-out on Ray Serve": ("replicas", "ray_address"),
}

#: The help text of each option.
HELP: dict[str, str] = {
    "model": (
        "Model directory (default: the embedded MiniLM); a causal LM's config "
        "(*ForCausalLM, GPT2LMHeadModel, is_decoder) is detected. smollm2-135m or "
        "gemma-3-270m: a GGUF model installed from PyPI (docs/quality.md), converted once."
    ),
    "head": "MLM head: auto | model | tied | shipped | PATH to a fitted head file.",
    "host": "Interface to listen on.",
    "port": "TCP port.",
    "dtype": (
        "Compute dtype: auto (bf16 only where native, else float32) | float32 | bfloat16 "
        "| float16 (CUDA only)."
    ),
    "device": "auto (CUDA if present) | cpu | cuda.",
    "threads": "torch CPU threads.",
    "token_budget": "Most padded tokens in one forward pass (default: 4096 on CPU, 16384 on CUDA).",
    "model_id": "Model id to advertise.",
    "api_key_file": "File with one accepted API key per line (also BBT_SERVER_API_KEYS / _FILE).",
    "max_queue": (
        "Requests that may wait for the model; more get 503 + Retry-After "
        "(default 16; also BBT_SERVER_MAX_QUEUE)."
    ),
    "registry": (
        "Prompt registry file (default: $BBT_HOME/registry.sqlite3, else "
        "~/.local/share/bbt/registry.sqlite3); 'none' turns it off, 'memory' keeps it in RAM."
    ),
    "sessions": "Offer projection sessions (protocol 1.1; default on; BBT_SERVER_SESSIONS).",
    "session_idle_timeout": "Seconds before an unused session is dropped (default 600).",
    "max_sessions_per_key": "Sessions one API key holds (default 4).",
    "max_session_memory": (
        "MiB all sessions together hold (default 2048; one paper-scale session: 98)."
    ),
    "log_level": "debug | info | warning.",
    "replicas": (
        "Scale out on Ray Serve: N replicas, one model each (needs bbt\\[ray]; docs/scaling.md)."
    ),
    "ray_address": (
        "With --replicas: join this Ray cluster (auto | ray://host:10001) instead of "
        "starting a local one."
    ),
}


def option(name: str, default: Any, *short: str, flag: str | None = None, **kwargs: Any) -> Any:
    """The typer option of ``bbt serve``'s parameter ``name``: ``flag`` (default
    ``--name-with-dashes``) and ``short`` aliases, its help text and panel from the tables."""
    text = HELP[name]  # an option with no help is a KeyError here, at import
    panel = next(panel for panel, names in PANELS.items() if name in names)
    flags = (flag or "--" + name.replace("_", "-"), *short)
    return typer.Option(default, *flags, help=text, rich_help_panel=panel, **kwargs)
