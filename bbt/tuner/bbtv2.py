"""BBTv2 (Sun et al., EMNLP 2022): deep prompts at every layer, divide-and-conquer CMA-ES.

BBT tunes one prompt at the input; BBTv2 gives every layer l of the encoder its own prompt
p_l = A_l z_l + p0_l and optimises the layers' sub-problems in turn. What the paper leaves
out comes from its released code (``deepbbt.py`` of github.com/txsun1997/Black-Box-Tuning),
re-implemented here:

- **Projections.** One random A_l per layer, entries N(0, s_l^2) with
  ``s_l = alpha * std_l / (sqrt(d) * sigma)`` (BBT's formula), ``std_0`` the std of the
  input embeddings and ``std_l`` (l >= 1) the std of the hidden states entering layer l,
  outliers clipped (five rounds at 3 std). The server measures these and advertises them
  in :attr:`bbt.protocol.ModelInfo.layer_std`.
- **Initial prompts.** Layer 0 starts from p0 like BBT (``--init``); deeper layers from 0.
- **Schedule.** One CMA-ES per layer, x0 = 0, the same sigma, popsize and bounds for all.
  Layers take turns, one generation each (``layer_generations``), 0, 1, ..., L-1, 0, ...;
  the budget (API calls) is shared, one call per candidate as in BBT.
- **The other layers** are held at the best z their own CMA-ES has seen so far (the code's
  ``es.result.xbest``), 0 before their first turn.
- **Loss and selection** as in BBT: every candidate is a whole deep prompt (the active
  layer's candidate with every other layer held), scored on the whole training set; the
  best one by training loss is scored on dev every ``eval_every`` calls, and the selection
  is the best on dev (see :class:`bbt.tuner.tuner.Tuner`).

Where bbt differs from the code, by design: layer 0's prompt goes into the input embeddings
(the code adds it after the embedding LayerNorm, to placeholder tokens' states) so that a
deep prompt whose deeper slices are zero *is* the shallow BBT prompt; a layer l >= 1 slice
is added to the hidden states entering layer l at the prompt positions, as in the code.

A candidate's z is the concatenation of the L layers' z (layer-major, L * d numbers). The
run directory stores the deep prompt [L, n, H] in ``prompt.npy``, that z in ``z.npy`` and
the deep p0 [L, n, H] in ``p0.npy``; its manifest says ``"method": "bbtv2"`` and holds every
layer's projection recipe. The layer schedule (which layer is next, each layer's CMA-ES,
the z each layer is held at) lives inside the checkpoint, so a resumed run continues
bitwise like an uninterrupted one.

Memory: the L matrices take L * n * H * d * 4 bytes (MiniLM, n = 10, d = 200: 18 MB;
RoBERTa-large at the paper's n = 50, d = 500: 2.5 GB, as in the released code); the
checkpoint holds L CMA-ES states (about 2 * d^2 * 8 bytes each).
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.errors import ConfigurationError
from bbt.protocol import DEEP_PROMPTS, ModelInfo
from bbt.tuner.data import Example
from bbt.tuner.projection import Projection, ProjectionRecipe
from bbt.tuner.prompts import InitialPrompt
from bbt.tuner.tasks import Task
from bbt.tuner.tuner import (
    NONFINITE_PENALTY,
    Callback,
    Candidate,
    GenerationRecord,
    TuneConfig,
    Tuner,
    import_cma,
)

F32 = np.ndarray[Any, np.dtype[np.float32]]
F64 = np.ndarray[Any, np.dtype[np.float64]]

METHOD = "bbtv2"


def layer_seed(seed: int, layer: int, stream: int) -> int:
    """A 32-bit seed for ``layer``'s projection (stream 0xB2) or CMA-ES (stream 0xC3A);
    layer 0 keeps BBT's own seeds, so BBTv2's layer 0 starts where BBT would."""
    if layer == 0:
        if stream == 0xB2:
            return seed
        return int(np.random.SeedSequence([seed, 0xC3A]).generate_state(1, dtype=np.uint32)[0]) | 1
    state = np.random.SeedSequence([seed, stream, layer]).generate_state(1, dtype=np.uint32)
    return int(state[0]) | 1


def require_deep(info: ModelInfo) -> list[float]:
    """The per-layer std of a model that serves deep prompts; else a clear error."""
    if DEEP_PROMPTS not in info.capabilities or info.layer_std is None:
        raise ConfigurationError(
            f"BBTv2 needs deep prompts, and the service's model {info.id!r} does not offer them "
            f"(no {DEEP_PROMPTS!r} capability in its discovery data); use --method bbt, or "
            "bbt's own server (bbt serve / the embedded default), which serves them"
        )
    if len(info.layer_std) != info.num_layers or not all(s > 0 for s in info.layer_std):
        raise ConfigurationError(
            f"the service reports {len(info.layer_std)} layer std values for a model of "
            f"{info.num_layers} layers (each must be positive)"
        )
    return [float(s) for s in info.layer_std]


def layer_recipes(config: TuneConfig, info: ModelInfo) -> list[ProjectionRecipe]:
    """One projection recipe per layer, scaled from that layer's hidden-state std."""
    stds = require_deep(info)
    return [
        ProjectionRecipe(
            seed=layer_seed(config.seed, layer, 0xB2),
            n_tokens=config.n_tokens,
            hidden_size=info.hidden_size,
            dim=config.dim,
            embedding_std=std,
            alpha=config.alpha,
            sigma=config.sigma,
            distribution=config.projection,
        )
        for layer, std in enumerate(stds)
    ]


class DeepProjection:
    """p_l = A_l z_l (+ p0_l) for every layer: z [P, L * d] -> prompts [P, L, n, H]."""

    def __init__(self, recipes: Sequence[ProjectionRecipe], first: Projection | None = None):
        self.recipes = list(recipes)
        # Layer 0's recipe is BBT's: a caller that already generated it passes it in.
        self.layers = [
            first if (k == 0 and first is not None and first.recipe == r) else Projection(r)
            for k, r in enumerate(self.recipes)
        ]
        self.dim = self.recipes[0].dim

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def project(self, z: np.ndarray[Any, Any], p0: F32 | None = None) -> F32:
        zz = np.asarray(z, dtype=np.float64)
        if zz.ndim == 1:
            zz = zz[None, :]
        size = self.num_layers * self.dim
        if zz.ndim != 2 or zz.shape[1] != size:
            raise ValueError(f"z must have shape [P, {size}] (L * d); got {np.shape(z)}")
        parts = [
            proj.project(zz[:, k * self.dim : (k + 1) * self.dim])
            for k, proj in enumerate(self.layers)
        ]
        out: F32 = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float32)
        if p0 is not None:
            out += p0
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"bbt-deep-projection/1 {self.num_layers}\n".encode())
        for proj in self.layers:
            h.update(proj.fingerprint().encode())
        return h.hexdigest()


class LayerwiseCMA:
    """BBTv2's divide and conquer behind the part of pycma's interface the tuner uses
    (``ask``, ``tell``, ``stop``, ``sigma``): L CMA-ES, one per layer, taking turns.

    ``ask`` returns whole candidates (L * d): the active layer's samples with every other
    layer held at the best z its CMA-ES has seen. ``tell`` feeds the active layer's part
    back to its CMA-ES, moves that layer's held z to its best so far, and advances the
    schedule. Between generations every CMA-ES is kept pickled (the tuner's continue-from-
    the-pickle rule holds per layer), so pickling this object, as a checkpoint does, copies
    bytes and runs no pycma code.
    """

    def __init__(
        self,
        layers: int,
        dim: int,
        sigma: float,
        popsize: int,
        seed: int,
        bound: float | None,
        layer_generations: int,
    ) -> None:
        cma = import_cma()
        self.layers, self.dim, self.layer_generations = layers, dim, layer_generations
        self.bounded = bound is not None
        self.blobs: list[bytes] = []
        for layer in range(layers):
            opts: dict[str, Any] = {
                "popsize": popsize,
                "randn": np.random.RandomState(layer_seed(seed, layer, 0xC3A)).randn,
                "seed": float("nan"),
                "verbose": -9,
                "verb_log": 0,
                "verb_disp": 0,
                "maxfevals": float("inf"),
                "maxiter": float("inf"),
            }
            if bound is not None:
                opts["bounds"] = [-bound, bound]
            es = cma.CMAEvolutionStrategy(np.zeros(dim), sigma, inopts=opts)
            self.blobs.append(pickle.dumps(es, protocol=pickle.HIGHEST_PROTOCOL))
        #: The z each layer is held at while another is optimised, [L, d].
        self.held: F64 = np.zeros((layers, dim), dtype=np.float64)
        self.held_loss: list[float] = [math.inf] * layers
        self.means: F64 = np.zeros((layers, dim), dtype=np.float64)
        self.sigmas: list[float] = [float(sigma)] * layers
        self.stops: list[dict[str, Any]] = [{} for _ in range(layers)]
        self.active = 0  # the layer the next generation optimises
        self.visit = 0  # generations it has run in its current turn
        self.generation = 0
        self.last = 0  # the layer the last told generation optimised
        self._live: Any = None  # the active layer's CMA-ES between ask and tell
        self._asked: list[Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        if self._live is not None:
            raise RuntimeError("LayerwiseCMA pickles between generations only (after tell)")
        return {k: v for k, v in self.__dict__.items() if k not in ("_live", "_asked")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._live = None
        self._asked = None

    @property
    def sigma(self) -> float:
        """Step size of the layer the last generation optimised."""
        return self.sigmas[self.last]

    def _slice(self, layer: int) -> slice:
        return slice(layer * self.dim, (layer + 1) * self.dim)

    def ask(self) -> list[F64]:
        if self._live is None:
            self._live = pickle.loads(self.blobs[self.active])
        if self._asked is None:
            self._asked = list(self._live.ask())
        full = np.repeat(self.held.reshape(1, -1), len(self._asked), axis=0)
        full[:, self._slice(self.active)] = np.asarray(self._asked, dtype=np.float64)
        return list(full)

    def tell(self, solutions: Sequence[Any], losses: Sequence[float]) -> None:
        if self._live is None or self._asked is None:
            raise RuntimeError("tell() without a pending ask()")
        layer = self.active
        rows = np.asarray([np.asarray(s)[self._slice(layer)] for s in solutions])
        if not np.array_equal(rows, np.asarray(self._asked, dtype=np.float64)):
            raise ValueError("tell() must get the candidates of the last ask()")
        es = self._live
        es.tell(self._asked, list(losses))
        values = np.asarray(losses, dtype=np.float64)
        i = int(np.argmin(values))
        # A candidate with the penalty loss (non-finite scores) is never held.
        if values[i] < self.held_loss[layer] and values[i] < NONFINITE_PENALTY:
            self.held[layer] = rows[i]
            self.held_loss[layer] = float(values[i])
        self.means[layer] = np.asarray(self._mean(es), dtype=np.float64)
        self.sigmas[layer] = float(es.sigma)
        self.stops[layer] = {k: v for k, v in es.stop().items() if k != "maxiter"}
        self.blobs[layer] = pickle.dumps(es, protocol=pickle.HIGHEST_PROTOCOL)
        self._live = None
        self._asked = None
        self.last = layer
        self.generation += 1
        self.visit += 1
        if self.visit >= self.layer_generations:
            self.visit = 0
            self.active = (layer + 1) % self.layers

    def _mean(self, es: Any) -> Any:
        """pycma's mean in the space candidates live in (within the bounds, if any)."""
        if not self.bounded:
            return es.mean
        return es.gp.pheno(es.mean, into_bounds=es.boundary_handler.repair)

    def stop(self) -> dict[str, Any]:
        """pycma's stop conditions once *every* layer's CMA-ES has met one (the code runs
        a fixed number of rounds and keeps asking a converged layer; so does bbt until all
        have converged)."""
        if all(self.stops):
            merged: dict[str, Any] = {}
            for s in self.stops:
                merged.update(s)
            return merged
        return {}

    def mean_z(self) -> F64:
        """Every layer's CMA-ES mean, concatenated (L * d)."""
        return np.asarray(self.means.reshape(-1), dtype=np.float64).copy()


class BBTv2Tuner(Tuner):
    """:class:`~bbt.tuner.tuner.Tuner` with BBTv2's deep prompts and layer-wise CMA-ES.

    Everything else (budget in API calls, dev selection, non-finite handling, callbacks,
    checkpoints) is the BBT tuner's. ``p0`` may be the deep p0 [L, n, H] of a run being
    resumed, or the layer-0 p0 [n, H].
    """

    def __init__(
        self,
        service: Service,
        task: Task,
        train: Sequence[Example],
        dev: Sequence[Example],
        config: TuneConfig | None = None,
        *,
        initial_prompt: InitialPrompt | None = None,
        p0: F32 | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        cfg = config or TuneConfig(method=METHOD)
        info = service.model_info()
        stds = require_deep(info)
        self.num_layers = len(stds)
        shallow = None
        if p0 is not None:
            p0 = np.asarray(p0, dtype=np.float32)
            want = (self.num_layers, cfg.n_tokens, info.hidden_size)
            if p0.ndim == 3:
                if p0.shape != want:
                    raise ConfigurationError(
                        f"deep p0 has shape {list(p0.shape)}; expected {list(want)}"
                    )
                shallow = p0[0]
            else:
                shallow = p0
        super().__init__(
            service,
            task,
            train,
            dev,
            cfg,
            initial_prompt=initial_prompt,
            p0=shallow,
            callbacks=[self._mark_layer, *callbacks],
        )
        deep_p0 = np.zeros((self.num_layers, cfg.n_tokens, info.hidden_size), dtype=np.float32)
        if p0 is not None and p0.ndim == 3:
            deep_p0[:] = p0
        else:
            deep_p0[0] = self.p0
        self.p0 = deep_p0
        self.layer_recipes = layer_recipes(cfg, info)
        self.deep_projection = DeepProjection(self.layer_recipes, first=self.projection)
        # The tuner projects through ``self.projection``: from here on, the deep one.
        self.projection = self.deep_projection  # type: ignore[assignment]

    def _new_es(self) -> Any:
        cfg = self.config
        with self._own_rng():
            return LayerwiseCMA(
                layers=self.num_layers,
                dim=cfg.dim,
                sigma=cfg.sigma,
                popsize=cfg.population,
                seed=cfg.seed,
                bound=cfg.bound,
                layer_generations=cfg.layer_generations,
            )

    @property
    def z_size(self) -> int:
        """Numbers in one candidate z: L * d."""
        return self.num_layers * self.config.dim

    @property
    def schedule(self) -> LayerwiseCMA:
        """The layer-wise CMA-ES (which layer is next, the z each layer is held at)."""
        es: LayerwiseCMA = self._es
        return es

    def _mark_layer(self, rec: GenerationRecord) -> None:
        rec.layer = self.schedule.last

    def start(self) -> None:
        st = self._state
        if self.config.eval_initial and st.selected is None and st.generation == 0:
            z0 = np.zeros(self.z_size)
            metric, ce = self.evaluate_dev(z0)
            if math.isfinite(metric):
                st.selected = Candidate(z0, float("nan"), 0, metric, ce)
            st.extra["initial_dev_metric"] = metric

    def _mean_z(self) -> F64:
        return self.schedule.mean_z()


def make_tuner(
    service: Service,
    task: Task,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TuneConfig,
    **kwargs: Any,
) -> Tuner:
    """The tuner for ``config.method``: :class:`Tuner` (BBT) or :class:`BBTv2Tuner`."""
    if config.method == METHOD:
        return BBTv2Tuner(service, task, train, dev, config, **kwargs)
    return Tuner(service, task, train, dev, config, **kwargs)
