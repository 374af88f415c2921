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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.errors import ConfigurationError
from bbt.protocol import DEEP_PROMPTS, ModelInfo
from bbt.tuner import optimizers
from bbt.tuner.deep_sessions import choose_deep_evaluator
from bbt.tuner.evaluator import Evaluator
from bbt.tuner.inputs import TunerInputs
from bbt.tuner.optimizers import LayerSchedule, LayerwiseOptimizer, OptimizerSpec
from bbt.tuner.projection import Projection, ProjectionRecipe
from bbt.tuner.tuner import (
    F32,
    F64,
    NONFINITE_PENALTY,
    Candidate,
    GenerationRecord,
    TuneConfig,
    Tuner,
)

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
        config.recipe(info.hidden_size, std, seed=layer_seed(config.seed, layer, 0xB2))
        for layer, std in enumerate(stds)
    ]


class DeepProjection:
    """p_l = A_l z_l (+ p0_l) for every layer: z [P, L * d] -> prompts [P, L, n, H]."""

    def __init__(self, recipes: Sequence[ProjectionRecipe]) -> None:
        self.recipes = list(recipes)
        self.layers = [Projection(r) for r in self.recipes]
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


@dataclass
class _Schedule:
    """BBTv2's layer schedule as bbt up to f05a715 pickled it into checkpoints. Only the
    legacy reader (:mod:`bbt.tuner.checkpoint`) meets it, converting it to
    :class:`~bbt.tuner.optimizers.LayerwiseOptimizer`'s state dict; the class stays, under
    this name, so that those pickles still load."""

    blobs: list[bytes]  # every layer's CMA-ES, pickled
    held: F64
    held_loss: list[float]
    means: F64
    sigmas: list[float]
    stops: list[dict[str, Any]]
    layer_generations: int
    active: int = 0
    visit: int = 0
    generation: int = 0
    last: int = 0


class DeepEvaluator(Evaluator):
    """p_l = A_l z_l + p0_l for every layer, computed locally; one :meth:`Service.logits`
    call per population with deep prompts [P, L, n, H]. ``z`` is [P, L * d]."""

    def __init__(self, service: Service, projection: DeepProjection, p0: F32) -> None:
        r = projection.recipes[0]
        want = (projection.num_layers, r.n_tokens, r.hidden_size)
        if p0.shape != want:
            raise ValueError(f"deep p0 has shape {list(p0.shape)}; expected {list(want)}")
        self.service = service
        self.projection = projection
        self.p0: F32 = np.ascontiguousarray(p0, dtype=np.float32)

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        return self.projection.project(z, self.p0)

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        return self.service.logits(self.prompts(z), texts, candidate_ids)


class BBTv2Tuner(Tuner):
    """:class:`~bbt.tuner.tuner.Tuner` with BBTv2's deep prompts and layer-wise CMA-ES: a
    :class:`LayerwiseOptimizer` and a :class:`DeepEvaluator` on the tuner's seams.

    Everything else (budget in API calls, dev selection, non-finite handling, callbacks,
    checkpoints) is the BBT tuner's. ``p0`` may be the deep p0 [L, n, H] of a run being
    resumed, or the layer-0 p0 [n, H].
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """:class:`~bbt.tuner.tuner.Tuner`'s arguments; ``config`` defaults to BBTv2's."""
        super().__init__(*args, **kwargs)
        self.p0 = self.deep_evaluator.p0

    def _prepare(self, inputs: TunerInputs) -> TunerInputs:
        cfg = inputs.config or TuneConfig(method=METHOD)
        info = inputs.service.model_info()
        stds = require_deep(info)
        self.num_layers = len(stds)
        p0 = shallow = inputs.p0
        self._resumed_p0: F32 | None = None
        if p0 is not None:
            p0 = np.asarray(p0, dtype=np.float32)
            want = (self.num_layers, cfg.n_tokens, info.hidden_size)
            if p0.ndim == 3:
                if p0.shape != want:
                    raise ConfigurationError(
                        f"deep p0 has shape {list(p0.shape)}; expected {list(want)}"
                    )
                shallow, self._resumed_p0 = p0[0], p0
            else:
                shallow = p0
        return replace(
            inputs,
            config=cfg,
            p0=shallow,
            callbacks=[self._mark_layer, *inputs.callbacks],
            evaluator=self._deep_evaluator,
        )

    def _make_optimizer(self) -> optimizers.Optimizer:
        """BBTv2's layer-wise schedule over one ``config.optimizer`` per layer, each seeded
        from its own stream (layer 0's is BBT's)."""
        cfg = self.config
        layers = [
            optimizers.make(
                cfg.optimizer,
                OptimizerSpec(
                    cfg.dim,
                    cfg.population,
                    cfg.sigma,
                    layer_seed(cfg.seed, layer, 0xC3A),
                    cfg.bound,
                ),
            )
            for layer in range(self.num_layers)
        ]
        # A candidate with the penalty loss (non-finite scores) is never held.
        return LayerwiseOptimizer(layers, cfg.layer_generations, hold_below=NONFINITE_PENALTY)

    def _deep_evaluator(self, service: Service, recipe: ProjectionRecipe, p0: F32) -> Evaluator:
        """The evaluator factory: layer 0 from BBT's recipe and p0, deeper layers from theirs."""
        self.layer_recipes = layer_recipes(self.config, self.model_info)
        if self.layer_recipes[0] != recipe:
            raise RuntimeError("layer 0's projection must be BBT's")
        deep = np.zeros((self.num_layers, *p0.shape), dtype=np.float32)
        if self._resumed_p0 is not None:
            deep[:] = self._resumed_p0
        else:
            deep[0] = p0
        self.deep_evaluator = DeepEvaluator(service, DeepProjection(self.layer_recipes), deep)
        # Through a deep projection session (protocol 1.5) when the service offers one.
        return choose_deep_evaluator(self.deep_evaluator, self.config.sessions)

    @property
    def deep_projection(self) -> DeepProjection:
        """Every layer's projection (what resume fingerprints)."""
        return self.deep_evaluator.projection

    @property
    def z_size(self) -> int:
        """Numbers in one candidate z: L * d."""
        return self.num_layers * self.config.dim

    @property
    def schedule(self) -> LayerSchedule:
        """The layer schedule (which layer is next, the z each layer is held at)."""
        opt = self.optimizer
        assert isinstance(opt, LayerwiseOptimizer)
        return opt.schedule

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


def make_tuner(*args: Any, **kwargs: Any) -> Tuner:
    """The tuner for ``config.method``, built by its method: what
    :func:`bbt.tuner.methods.build_tuner` does (this name is kept for callers of bbt before
    the registry, which decides, not this module)."""
    from bbt.tuner.methods import build_tuner  # the registry imports this module

    return build_tuner(*args, **kwargs)
