"""The reference BBTv2 loop, re-implemented in-process, for the BBTv2 parity benchmark.

It follows the paper (Sun et al., EMNLP 2022, "BBTv2") and what its released code
(``deepbbt.py`` of github.com/txsun1997/Black-Box-Tuning, default "add" mode, normal
projections) does, and uses nothing of ``bbt.tuner`` but the loss formulas (as
``reference_bbt.py`` does, for the same reason: a loss is a formula, not part of a loop).
The model is a :class:`bbt.server.backend.Backend` called directly, no HTTP; it must take
deep prompts [P, L, n, H] (``bbt.server.hf.HFBackend`` or ``MockBackend``).

- Seeds: Python's, NumPy's and torch's global RNGs are seeded with the run's seed first.
- Projections: L bias-free linear maps A_l (n * H x d) drawn by torch in layer order,
  entries N(0, s_l^2), ``s_l = alpha * std_l / (sqrt(d) * sigma)``. ``std_0`` is the
  population std of all input word embeddings; ``std_l`` (l >= 1) that of the hidden states
  entering layer l on the *training batch* (every position of the padded batch, as the
  code reshapes the whole tensor), clipped five times to mean +- 3 std. The code measures
  them in its first forward pass; here they are measured before the first call, with no
  prompt (:func:`measure_layer_std`).
- Prompts: the code writes n placeholder tokens (ids 1000 ..) after ``<s>`` and adds
  ``A_l z_l`` to the states at those positions at every layer. Here the placeholder
  embeddings are slice 0's p0 and ``A_0 z_0`` is added to them (before the embedding
  LayerNorm: bbt's server takes slice 0 as input embeddings); deeper slices are ``A_l z_l``,
  added to the states entering layer l, as in the code.
- CMA-ES (pycma): one per layer, ``x0 = 0``, step ``sigma``, options ``seed``, ``popsize``,
  ``maxiter = budget // (popsize * L)``, bounds only when ``bound > 0``.
- Schedule: ``for _ in range(budget // (popsize * L))``, then every layer in order: one
  generation (ask, score each candidate with every other layer at its held prompt, tell),
  after which that layer is held at ``A_l es.result.xbest`` (pycma's best-ever solution).
- Budget: one API call per candidate scored on the training set; dev scoring not counted.
- Dev: on every call whose number is a multiple of ``eval_every``, the whole deep prompt of
  *that* call is scored on dev; it becomes the selection when its accuracy is strictly
  higher than the best so far (starting at 0).

What this loop has in common with ``reference_bbt`` (settings, pycma options, losses, the dev
cadence and selection of a generation) is in :mod:`_reference`, shared by the two reference
loops only.

One difference that changes no result: a generation's population is scored in one backend
call (each row depends only on its own prompt and text).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference import F32, PROMPT_OFFSET, DevPoint, ReferenceLoop, Tally

__all__ = ["PROMPT_OFFSET", "ReferenceBBTv2", "ReferenceResult", "clip_std", "measure_layer_std"]


def clip_std(values: np.ndarray[Any, Any], rounds: int = 5) -> float:
    """The code's outlier handling: ``rounds`` times, clip to mean +- 3 std; then the std."""
    h = np.asarray(values, dtype=np.float64).reshape(-1)
    for _ in range(rounds):
        mu, sd = h.mean(), h.std()
        h = np.clip(h, mu - 3 * sd, mu + 3 * sd)
    return float(h.std())


def measure_layer_std(backend: Any, texts: list[str]) -> list[float] | None:
    """std of the hidden states entering layers 1 .. L-1 on ``texts`` (padded batch, every
    position), for a Hugging Face backend; ``None`` for a backend without an encoder."""
    encoder = getattr(backend, "_encoder", None)
    tok = getattr(backend, "_tok", None)
    if encoder is None or tok is None:
        return None
    import torch

    enc = tok(list(texts), add_special_tokens=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = encoder(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            output_hidden_states=True,
        )
    # hidden_states[0] is the embedding output, [l] the input of layer l, [-1] the last.
    return [clip_std(h.float().numpy()) for h in out.hidden_states[1:-1]]


def _one(prompt: F32) -> F32:
    return prompt[None]


@dataclass
class ReferenceResult:
    calls: int
    generations: int
    dev_calls: int
    best_prompt: F32 | None  # [L, n, H]
    best_dev_acc: float
    selected_calls: int | None
    layer_std: list[float]
    dev_points: list[DevPoint] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class ReferenceBBTv2(ReferenceLoop):
    """One run of the reference BBTv2 loop (see the module docstring; arguments:
    :class:`_reference.ReferenceLoop`)."""

    def __init__(self, backend: Any, *args: Any, **kwargs: Any) -> None:
        import torch

        super().__init__(backend, *args, **kwargs)
        seed, n_tokens, dim = self.seed, self.n_tokens, self.dim
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        info = backend.info
        self.hidden, self.layers = info.hidden_size, info.num_layers
        emb = backend.embed(np.arange(info.vocab_size, dtype=np.int64))
        deeper = measure_layer_std(backend, self.train_texts)
        if deeper is None:  # the mock: its own statistics
            deeper = list(info.layer_std[1:])
        self.layer_std = [float(np.std(emb.reshape(-1))), *deeper]
        self.A: list[F32] = []
        for std_hat in self.layer_std:
            weight = torch.empty(n_tokens * self.hidden, dim)
            torch.nn.init.normal_(weight, 0.0, self.alpha * std_hat / (np.sqrt(dim) * self.sigma))
            self.A.append(weight.numpy())
        ids = np.arange(PROMPT_OFFSET, PROMPT_OFFSET + n_tokens, dtype=np.int64)
        self.p0: F32 = np.zeros((self.layers, n_tokens, self.hidden), dtype=np.float32)
        self.p0[0] = backend.embed(ids)
        # The prompt each layer is held at (A_l xbest_l; 0 before its first turn).
        self.best_prefix: F32 = np.zeros_like(self.p0)

    def layer_prompts(self, layer: int, zs: np.ndarray[Any, Any]) -> F32:
        """A_l z for each z of ``zs`` [P, d] -> [P, n, H] (float32, as torch.nn.Linear)."""
        z32 = np.asarray(zs, dtype=np.float32)
        return (z32 @ self.A[layer].T).reshape(len(z32), self.n_tokens, self.hidden)

    def deep(self, layer: int, zs: np.ndarray[Any, Any]) -> F32:
        """Deep prompts [P, L, n, H]: the held prefix with ``layer`` replaced by A_l z."""
        out = np.repeat(self.best_prefix[None], len(zs), axis=0)
        out[:, layer] = self.layer_prompts(layer, zs)
        return out + self.p0[None]

    def run(self, on_generation: Any = None) -> ReferenceResult:
        import cma

        rounds = self.budget // (self.popsize * self.layers)
        opts = self.cma_options(rounds)
        es_list = [
            cma.CMAEvolutionStrategy(self.dim * [0], self.sigma, inopts=opts)
            for _ in range(self.layers)
        ]
        best: F32 | None = None
        tally = Tally()
        for _ in range(rounds):
            for layer, es in enumerate(es_list):
                solutions = es.ask()
                prompts = self.deep(layer, np.asarray(solutions))
                logits = self.backend.logits(prompts, self.train_texts, self.candidate_ids)[0]
                fitnesses, k = self.score(tally, logits, prompts, _one)
                if k is not None:
                    best = prompts[k].copy()
                es.tell(solutions, fitnesses)
                xbest = np.asarray(es.result.xbest)
                self.best_prefix[layer] = self.layer_prompts(layer, xbest[None])[0]
                rec = tally.record(fitnesses, layer=layer)
                if on_generation is not None:
                    on_generation(self, rec, best)
        return ReferenceResult(best_prompt=best, layer_std=self.layer_std, **tally.summary())
