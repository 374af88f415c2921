"""``serve run`` entry point: bbt's reference server as a Ray Serve application builder.

    serve run bbt.server.ray_app:build replicas=2
    serve run bbt.server.ray_app:build model=/models/roberta-large device=cuda num_gpus=1 \\
        replicas=4
    serve run bbt.server.ray_app:build backend=mock compute_ms=150 replicas=2

The same ``import_path`` and ``args`` go into a Serve config file (``serve deploy``) or a
KubeRay ``RayService``'s ``serveConfigV2`` (docs/scaling.md). Every argument is a string:

=======================  ===================================================================
backend                  hf (default) or mock
model, head, dtype,      the ``bbt serve`` options of the same names (hf)
device, threads,
token_budget, model_id
hidden_size, seed,       the mock's options (mock)
compute_ms
replicas                 fixed replica count (default 1)
min_replicas,            autoscaling bounds; max_replicas turns autoscaling on
max_replicas
target_ongoing_requests  autoscaling target per replica (default 4)
num_cpus, num_gpus       resources per replica (default 1 CPU, 0 GPU)
max_ongoing_requests     requests a replica takes at once (default 16)
batching                 true (default) or false: cross-request batching in the replica
batch_token_budget       padded tokens per merged batch (default: the model's budget)
api_key_file             key file read by each replica (or BBT_SERVER_API_KEYS in its env)
=======================  ===================================================================
"""

from __future__ import annotations

from typing import Any

from bbt.errors import ConfigurationError
from bbt.server.ray_serve import BackendSpec, ReplicaOptions, build_app

_HF = {
    "model": ("model_path", str),
    "head": ("head", str),
    "dtype": ("dtype", str),
    "device": ("device", str),
    "threads": ("num_threads", int),
    "token_budget": ("token_budget", int),
    "model_id": ("model_id", str),
}
_MOCK = {
    "hidden_size": ("hidden_size", int),
    "seed": ("seed", int),
    "compute_ms": ("compute_ms", float),
    "model_id": ("model_id", str),
}
_REPLICA = {
    "replicas": int,
    "min_replicas": int,
    "max_replicas": int,
    "target_ongoing_requests": float,
    "num_cpus": float,
    "num_gpus": float,
    "max_ongoing_requests": int,
    "batch_token_budget": int,
    "batch_wait_ms": float,
    "api_key_file": str,
}


def _convert(name: str, kind: type, raw: Any) -> Any:
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def parse_args(args: dict[str, Any]) -> tuple[BackendSpec, ReplicaOptions]:
    """The backend recipe and replica options from ``serve run`` key=value arguments."""
    rest = dict(args)
    backend = str(rest.pop("backend", "hf"))
    if backend not in ("hf", "mock"):
        raise ConfigurationError(f"backend must be hf or mock, not {backend!r}")
    table = _HF if backend == "hf" else _MOCK
    backend_kw: dict[str, Any] = {}
    replica_kw: dict[str, Any] = {}
    for key, raw in list(rest.items()):
        if key in table:
            target, kind = table[key]
            backend_kw[target] = _convert(key, kind, raw)
        elif key in _REPLICA:
            replica_kw[key] = _convert(key, _REPLICA[key], raw)
        elif key in ("batching", "sessions"):
            replica_kw[key] = str(raw).lower() in ("1", "true", "yes", "on")
        else:
            raise ConfigurationError(f"unknown argument {key!r} for backend {backend}")
    return BackendSpec(backend, backend_kw), ReplicaOptions(**replica_kw)  # type: ignore[arg-type]


def build(args: dict[str, Any]) -> Any:
    """Ray Serve application builder (``serve run bbt.server.ray_app:build key=value ...``)."""
    spec, options = parse_args(args)
    return build_app(spec, options)


__all__ = ["build", "parse_args"]
