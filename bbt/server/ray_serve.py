"""The reference server scaled out on Ray Serve (``pip install 'bbt[ray]'``).

Each Ray Serve replica builds its own backend (one model per replica) and serves it
through :func:`~bbt.server.app.create_app`, the same app ``bbt serve`` runs under uvicorn:
protocol, validation, auth, limits and error envelopes are the same code. Ray Serve adds
what one process cannot: replicas (fixed, or autoscaled on ongoing requests), CPU and
GPU shares per replica, routing over them, and a path to Kubernetes (KubeRay).

Inside a replica, :class:`~bbt.server.batching.BatchingBackend` (on by default) merges
concurrent logits requests, from any number of tuning jobs, into shared forward passes.

Entry points:

* ``bbt serve --replicas N [--ray-address ADDR]`` (:func:`run_blocking`);
* ``serve run bbt.server.ray_app:build replicas=2 ...`` or a Serve config file / KubeRay
  ``RayService`` naming ``bbt.server.ray_app:build`` (see :mod:`bbt.server.ray_app`);
* Python: ``serve.run(build_app(BackendSpec("mock"), ReplicaOptions(replicas=2)))``.

Ray is imported only here, and only when a function needs it: the client, the tuner and
``bbt serve`` without ``--replicas`` never need it. API keys never travel through Ray
(its deployment arguments are stored by the controller): each replica reads
``BBT_SERVER_API_KEYS`` / ``BBT_SERVER_API_KEY_FILE`` from its own environment, or the key
file named in :attr:`ReplicaOptions.api_key_file`, which must exist on every node.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bbt.errors import ConfigurationError
from bbt.server.backend import Backend
from bbt.server.batching import DEFAULT_TOKEN_BUDGET, BatchingBackend
from bbt.server.settings import ServerSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("bbt.server.ray")

RAY_EXTRA_HINT = "pip install 'bbt[ray]'"
#: Name of the Serve application (and its deployment) that bbt deploys.
APP_NAME = "bbt"


def require_ray() -> tuple[Any, Any]:
    """(ray, ray.serve), or a :class:`ConfigurationError` naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ConfigurationError(
            f"scaling out needs Ray Serve ({exc.name or 'ray'} is missing): {RAY_EXTRA_HINT}"
        ) from None
    return ray, serve


@dataclass(frozen=True)
class BackendSpec:
    """What each replica builds: a picklable recipe, never a loaded model.

    ``kind`` "hf" passes ``options`` to :class:`~bbt.server.hf.HFBackend` (model path,
    head, dtype, device, num_threads, token_budget, model_id); "mock" to
    :class:`~bbt.server.mock.MockBackend` (hidden_size, seed, compute_ms, ...).
    """

    kind: Literal["hf", "mock"] = "hf"
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Backend:
        from bbt.server.backend import backend_for

        options = dict(self.options)
        if self.kind == "mock":
            return backend_for(kind="mock", **options)
        # The registry tells a causal LM from a masked one by the model's config.
        return backend_for(options.pop("model_path", None), **options)


@dataclass(frozen=True)
class ReplicaOptions:
    """How many replicas, what each one gets, and how each one batches.

    ``max_replicas`` set: Ray Serve autoscales between ``min_replicas`` and
    ``max_replicas`` on ongoing requests per replica (``target_ongoing_requests``);
    otherwise exactly ``replicas`` run.
    """

    replicas: int = 1
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    #: CPU cores reserved per replica (Ray schedules on them; torch threads are separate).
    num_cpus: float = 1.0
    #: GPUs per replica: 1 gives each replica its own GPU, 0.5 packs two on one.
    num_gpus: float = 0.0
    #: Requests a replica takes at once; Ray queues the rest at its router.
    max_ongoing_requests: int = 16
    batching: bool = True
    #: Padded tokens per merged batch; None: the backend's own forward budget, if it has one.
    batch_token_budget: int | None = None
    batch_wait_ms: float = 0.0
    api_key_file: str | None = None
    #: Projection sessions live in one replica's memory and Ray routes each request to any
    #: replica, so a session opened on one is unknown to the next. None (auto): offered only
    #: where exactly one replica can run; True for deployments with sticky routing.
    sessions: bool | None = None
    #: Further ServerSettings fields for every replica (e.g. the session limits), as pairs.
    server_settings: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.min_replicas < 0:
            raise ConfigurationError("replicas must be at least 1 (min_replicas at least 0)")
        if self.max_replicas is not None and self.max_replicas < max(1, self.min_replicas):
            raise ConfigurationError("max_replicas must be at least min_replicas and 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.max_ongoing_requests < 1:
            raise ConfigurationError("num_cpus and num_gpus must be >= 0, max_ongoing >= 1")

    @property
    def single_replica(self) -> bool:
        """Whether at most one replica can ever run (fixed, or autoscaling up to one)."""
        if self.max_replicas is not None:
            return self.max_replicas <= 1
        return self.replicas == 1

    def offers_sessions(self) -> bool:
        return self.single_replica if self.sessions is None else self.sessions

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of ``serve.deployment`` for the bbt replica."""
        opts: dict[str, Any] = {
            "name": APP_NAME,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.max_replicas is not None:
            opts["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, min(self.replicas, self.max_replicas)),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            opts["num_replicas"] = self.replicas
        return opts


def replica_backend(spec: BackendSpec, options: ReplicaOptions) -> Backend:
    """The backend one replica serves: ``spec`` built, behind the batcher if enabled."""
    backend = spec.build()
    if not options.batching:
        return backend
    budget = options.batch_token_budget
    if budget is None:
        budget = int(getattr(backend, "token_budget", DEFAULT_TOKEN_BUDGET))
    return BatchingBackend(backend, budget, max_wait_ms=options.batch_wait_ms)


def replica_settings(options: ReplicaOptions) -> ServerSettings:
    """Server settings of one replica; keys come from the replica's own environment.

    The app's queue admits as many requests as Ray sends it (``max_ongoing_requests``)
    and lets them all reach the backend, so the batcher sees them together: queueing
    beyond that is Ray's job, at its router.
    """
    kw: dict[str, Any] = {
        "max_concurrency": options.max_ongoing_requests if options.batching else 1,
        "max_queue": options.max_ongoing_requests,
        # Off where requests of one session could reach another replica: clients then send
        # full prompts, which every replica answers (see docs/scaling.md).
        "sessions": options.offers_sessions(),
        **dict(options.server_settings),
    }
    if options.api_key_file is not None:
        kw["api_key_file"] = options.api_key_file
    return ServerSettings(**kw)


class BBTReplica:
    """One replica: a backend and the app over it (wrapped by ``serve.ingress`` in
    :func:`build_app`; Ray calls ``__serve_build_asgi_app__`` after ``__init__``)."""

    def __init__(self, spec: BackendSpec, options: ReplicaOptions) -> None:
        logging.getLogger("bbt").setLevel(logging.INFO)
        self._backend = replica_backend(spec, options)
        self._settings = replica_settings(options)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from bbt.server.app import create_app

        return create_app(self._backend, self._settings)

    def check_health(self) -> None:
        """Ray Serve's periodic health check: the model must still answer."""
        self._backend.info  # noqa: B018 - raises if the backend is gone


def build_app(spec: BackendSpec, options: ReplicaOptions | None = None) -> Any:
    """The Ray Serve application (``serve.run`` it, or return it from a builder)."""
    _, serve = require_ray()
    opts = options or ReplicaOptions()
    ingress = serve.ingress()(BBTReplica)
    return serve.deployment(ingress, **opts.deployment_options()).bind(spec, opts)


def start(
    spec: BackendSpec,
    options: ReplicaOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    num_cpus: int | None = None,
) -> bool:
    """Deploy bbt on Ray Serve and wait until its replicas answer; True if Ray was started here.

    ``address`` None starts a local Ray (``num_cpus`` caps it); "auto" or "ray://..."
    joins an existing cluster, whose Serve HTTP proxy keeps its own host and port if
    Serve already runs there.
    """
    ray, serve = require_ray()
    started_here = address is None and not ray.is_initialized()
    if not ray.is_initialized():
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is not None:
            init["address"] = address
        elif num_cpus is not None:
            init["num_cpus"] = num_cpus
        try:
            ray.init(**init)
        except ConnectionError as exc:
            raise ConfigurationError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(spec, options), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError as exc:  # a replica failed to start (bad model path, import error...)
        stop(started_here)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(
            f"Ray Serve could not start the bbt replicas ({first}); the replicas' own errors "
            "are in Ray's logs (serve/replica_*.log and serve/controller_*.log under "
            "/tmp/ray/session_latest/logs on the node)"
        ) from None
    return started_here


def stop(started_here: bool) -> None:
    """Remove bbt from Serve; stop Serve and Ray too when :func:`start` started them."""
    ray, serve = require_ray()
    if not ray.is_initialized():
        return
    try:
        if started_here:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    finally:
        if started_here:
            ray.shutdown()


def run_blocking(
    spec: BackendSpec,
    options: ReplicaOptions,
    *,
    host: str,
    port: int,
    address: str | None,
    num_cpus: int | None = None,
    say: Any = print,
) -> None:
    """``bbt serve --replicas``: deploy, report, serve until Ctrl-C or SIGTERM, then clean up.

    SIGTERM (what a process manager or ``docker stop`` sends) stops it like Ctrl-C, so a
    local Ray started here never outlives the command.
    """

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    started_here = start(spec, options, host=host, port=port, address=address, num_cpus=num_cpus)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # After start(): ray.init installs its own SIGTERM handler (a stack dump and exit).
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        where = "a local Ray" if started_here else f"the Ray cluster at {address}"
        say(
            f"serving on Ray Serve ({where}): {options.replicas} replica(s) at "
            f"http://{host}:{port}; Ctrl-C stops"
        )
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        say("stopping Ray Serve ...")
    finally:
        stop(started_here)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = [
    "APP_NAME",
    "RAY_EXTRA_HINT",
    "BBTReplica",
    "BackendSpec",
    "ReplicaOptions",
    "build_app",
    "replica_backend",
    "replica_settings",
    "require_ray",
    "run_blocking",
    "start",
    "stop",
]
