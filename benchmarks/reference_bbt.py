"""The reference Black-Box Tuning loop, re-implemented in-process, for the parity benchmark.

This follows what the paper's released code (Sun et al., ICML 2022, ``bbt.py`` of
github.com/txsun1997/Black-Box-Tuning, default "add" mode, serial evaluation) does, and
nothing of ``bbt.tuner``; it scores prompts with a :class:`bbt.server.backend.Backend` called
directly, with no HTTP:

- Projection: a bias-free linear map A of shape (n * H) x d whose entries are drawn by torch,
  after ``torch.manual_seed(seed)``, from N(0, std^2) with
  ``std = alpha * std_hat / (sqrt(d) * sigma)``, ``std_hat`` the (population) std of all of
  the model's input word embeddings. The prompt is ``A z + p0``, p0 being the embeddings of
  vocabulary ids 1000 .. 1000 + n - 1 (the code writes those tokens into the input and
  adds ``A z`` to their embeddings).
- CMA-ES (pycma): ``x0 = 0``, step size ``sigma``, options ``seed``, ``popsize`` and
  ``maxiter = budget // popsize``; bounds only when ``bound > 0`` (default 0); the loop
  runs ``while not es.stop()``, so pycma's own termination criteria may end it early.
- Budget accounting: one API call per candidate scored on the whole training set; the
  dev-set scoring is not counted.
- Dev evaluation: on every call whose number is a multiple of ``eval_every``, the candidate
  of *that* call (not the best so far) is scored on the dev set; it becomes the selected
  prompt when its dev metric is strictly higher than the best so far (which starts at 0).
  The final prompt is the selected one.
- Loss: mean cross-entropy over the verbalizer logits (or the hinge loss with margin 2,
  summed over the wrong classes, averaged over examples); the metric is accuracy.

The losses are imported from ``bbt.tuner.losses`` on purpose: a loss is a formula, not part
of the loop, and one definition of it (float64 arithmetic, tested against the paper's code
in ``tests/tuner/test_losses.py``) is what keeps the two loops scoring candidates alike.
Everything else here (projection, CMA-ES set-up, budget, dev cadence, selection) stays
independent of ``bbt.tuner``: that is what the parity benchmark compares. What this loop has
in common with ``reference_bbtv2`` (settings, pycma options, losses, the dev cadence and
selection of a generation) is in :mod:`_reference`, shared by the two reference loops only.

Two deliberate differences, neither changing a result: the population of a generation is
scored in one backend call (each row of the logits depends only on its own prompt and text,
so this equals the code's one-call-per-candidate loop), and pycma writes no log files.
The texts are the caller's and the backend puts the prompt right after the first special
token; the code's inputs also have a " . " token between its prompt placeholder and the
text. The parity benchmark gives both loops the same texts, so that it compares the loops.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference import (
    F32,
    PROMPT_OFFSET,
    DevPoint,
    ReferenceLoop,
    Tally,
    ce_loss,
    hinge_loss,
)

__all__ = ["PROMPT_OFFSET", "ReferenceBBT", "ReferenceResult", "ce_loss", "hinge_loss"]


@dataclass
class ReferenceResult:
    calls: int
    generations: int
    dev_calls: int
    best_prompt: F32 | None  # [n, H]
    best_z: np.ndarray[Any, Any] | None
    best_dev_acc: float
    selected_calls: int | None
    dev_points: list[DevPoint] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    stop: dict[str, Any] = field(default_factory=dict)


class ReferenceBBT(ReferenceLoop):
    """One run of the reference loop (arguments: :class:`_reference.ReferenceLoop`)."""

    def __init__(self, backend: Any, *args: Any, **kwargs: Any) -> None:
        import torch

        super().__init__(backend, *args, **kwargs)
        info = backend.info
        hidden = info.hidden_size
        # The code seeds Python, NumPy and torch with the run's seed before anything else.
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        emb = backend.embed(np.arange(info.vocab_size, dtype=np.int64))
        self.std_hat = float(np.std(emb.reshape(-1)))
        self.proj_std = self.alpha * self.std_hat / (np.sqrt(self.dim) * self.sigma)
        weight = torch.empty(self.n_tokens * hidden, self.dim)
        torch.nn.init.normal_(weight, 0.0, self.proj_std)
        self.A: F32 = weight.numpy()  # [(n * H), d]
        ids = np.arange(PROMPT_OFFSET, PROMPT_OFFSET + self.n_tokens, dtype=np.int64)
        self.p0: F32 = backend.embed(ids).astype(np.float32)  # [n, H]
        self.hidden = hidden

    def prompts(self, zs: np.ndarray[Any, Any]) -> F32:
        """A z + p0 for each z of ``zs`` [P, d] (float32, as ``torch.nn.Linear`` computes)."""
        z32 = np.asarray(zs, dtype=np.float32)
        flat = z32 @ self.A.T
        return flat.reshape(len(z32), self.n_tokens, self.hidden) + self.p0[None]

    def _one_prompt(self, z: Any) -> F32:
        return self.prompts(np.asarray(z)[None])

    def run(self, on_generation: Any = None) -> ReferenceResult:
        import cma

        opts = self.cma_options(self.budget // self.popsize)
        es = cma.CMAEvolutionStrategy(self.dim * [0], self.sigma, inopts=opts)
        best_z: np.ndarray[Any, Any] | None = None
        tally = Tally()
        while not es.stop():
            solutions = es.ask()
            logits = self.backend.logits(
                self.prompts(np.asarray(solutions)), self.train_texts, self.candidate_ids
            )[0]
            fitnesses, k = self.score(tally, logits, solutions, self._one_prompt)
            if k is not None:
                best_z = np.array(solutions[k])
            es.tell(solutions, fitnesses)
            rec = tally.record(fitnesses)
            if on_generation is not None:
                on_generation(self, rec, best_z)
        return ReferenceResult(
            best_prompt=None if best_z is None else self.prompts(best_z[None])[0],
            best_z=best_z,
            stop=dict(es.stop()),
            **tally.summary(),
        )
