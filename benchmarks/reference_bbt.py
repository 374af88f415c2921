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
independent of ``bbt.tuner``: that is what the parity benchmark compares.

Two deliberate differences, neither changing a result: the population of a generation is
scored in one backend call (each row of the logits depends only on its own prompt and text,
so this equals the code's one-call-per-candidate loop), and pycma writes no log files.
The texts are the caller's and the backend puts the prompt right after the first special
token; the code's inputs also have a " . " token between its prompt placeholder and the
text. The parity benchmark gives both loops the same texts, so that it compares the loops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbt.tuner.losses import HINGE_MARGIN, cross_entropy, hinge

F32 = np.ndarray[Any, np.dtype[np.float32]]

#: The paper's code inserts vocabulary tokens from this id as its prompt placeholder.
PROMPT_OFFSET = 1000


def ce_loss(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """``torch.nn.CrossEntropyLoss(reduction='mean')`` over logits [B, C] (the shared
    definition, :func:`bbt.tuner.losses.cross_entropy`, for one candidate)."""
    return float(cross_entropy(logits, y)[0])


def hinge_loss(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """sum over examples and wrong classes of max(0, l_j - l_y + margin), / B (the shared
    definition, :func:`bbt.tuner.losses.hinge`, margin ``HINGE_MARGIN`` = 2, for one
    candidate)."""
    return float(hinge(logits, y, HINGE_MARGIN)[0])


@dataclass
class DevPoint:
    calls: int
    dev_acc: float
    best_dev_acc: float
    selected_calls: int | None  # the call whose candidate is the selection


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


class ReferenceBBT:
    """One run of the reference loop.

    Args:
        backend: the model; only ``info``, ``embed`` and ``logits`` are used.
        train_texts, train_labels, dev_texts, dev_labels: rendered inputs and label indices.
        candidate_ids: vocabulary ids of the verbalizer words, in label order.
    """

    def __init__(
        self,
        backend: Any,
        train_texts: list[str],
        train_labels: np.ndarray[Any, Any],
        dev_texts: list[str],
        dev_labels: np.ndarray[Any, Any],
        candidate_ids: np.ndarray[Any, Any],
        *,
        n_tokens: int = 50,
        dim: int = 500,
        popsize: int = 20,
        sigma: float = 1.0,
        alpha: float = 1.0,
        bound: float = 0.0,
        budget: int = 8000,
        eval_every: int = 100,
        loss: str = "ce",
        seed: int = 42,
    ) -> None:
        import torch

        self.backend = backend
        self.train_texts, self.train_labels = train_texts, np.asarray(train_labels)
        self.dev_texts, self.dev_labels = dev_texts, np.asarray(dev_labels)
        self.candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
        self.n_tokens, self.dim, self.popsize = n_tokens, dim, popsize
        self.sigma, self.bound, self.budget = sigma, bound, budget
        self.eval_every, self.seed = eval_every, seed
        self.loss_fn = {"ce": ce_loss, "hinge": hinge_loss}[loss]

        info = backend.info
        hidden = info.hidden_size
        # The code seeds Python, NumPy and torch with the run's seed before anything else.
        np.random.seed(seed)
        torch.manual_seed(seed)
        emb = backend.embed(np.arange(info.vocab_size, dtype=np.int64))
        self.std_hat = float(np.std(emb.reshape(-1)))
        self.proj_std = alpha * self.std_hat / (np.sqrt(dim) * sigma)
        weight = torch.empty(n_tokens * hidden, dim)
        torch.nn.init.normal_(weight, 0.0, self.proj_std)
        self.A: F32 = weight.numpy()  # [(n * H), d]
        ids = np.arange(PROMPT_OFFSET, PROMPT_OFFSET + n_tokens, dtype=np.int64)
        self.p0: F32 = backend.embed(ids).astype(np.float32)  # [n, H]
        self.hidden = hidden

    def prompts(self, zs: np.ndarray[Any, Any]) -> F32:
        """A z + p0 for each z of ``zs`` [P, d] (float32, as ``torch.nn.Linear`` computes)."""
        z32 = np.asarray(zs, dtype=np.float32)
        flat = z32 @ self.A.T
        return flat.reshape(len(z32), self.n_tokens, self.hidden) + self.p0[None]

    def run(self, on_generation: Any = None) -> ReferenceResult:
        import cma

        opts: dict[str, Any] = {
            "seed": self.seed,
            "popsize": self.popsize,
            "maxiter": self.budget // self.popsize,
            "verbose": -1,
            "verb_log": 0,  # the code leaves pycma's log files on; they change nothing
        }
        if self.bound > 0:
            opts["bounds"] = [-self.bound, self.bound]
        es = cma.CMAEvolutionStrategy(self.dim * [0], self.sigma, inopts=opts)

        num_call = 0
        dev_calls = 0
        best_dev = 0.0
        best_z: np.ndarray[Any, Any] | None = None
        selected_calls: int | None = None
        points: list[DevPoint] = []
        history: list[dict[str, float]] = []
        t0 = time.perf_counter()
        generations = 0
        while not es.stop():
            solutions = es.ask()
            logits = self.backend.logits(
                self.prompts(np.asarray(solutions)), self.train_texts, self.candidate_ids
            )[0]
            fitnesses: list[float] = []
            for k, z in enumerate(solutions):
                num_call += 1
                loss = self.loss_fn(logits[k], self.train_labels)
                fitnesses.append(loss)
                if num_call % self.eval_every == 0:
                    dev_logits = self.backend.logits(
                        self.prompts(np.asarray(z)[None]), self.dev_texts, self.candidate_ids
                    )[0][0]
                    dev_calls += 1
                    dev_acc = float((dev_logits.argmax(axis=1) == self.dev_labels).mean())
                    if dev_acc > best_dev:
                        best_dev, best_z, selected_calls = dev_acc, np.array(z), num_call
                    points.append(DevPoint(num_call, dev_acc, best_dev, selected_calls))
            es.tell(solutions, fitnesses)
            generations += 1
            rec = {
                "generation": generations,
                "calls": num_call,
                "loss_min": min(fitnesses),
                "loss_mean": float(np.mean(fitnesses)),
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            if on_generation is not None:
                on_generation(self, rec, best_z)
        return ReferenceResult(
            calls=num_call,
            generations=generations,
            dev_calls=dev_calls,
            best_prompt=None if best_z is None else self.prompts(best_z[None])[0],
            best_z=best_z,
            best_dev_acc=best_dev,
            selected_calls=selected_calls,
            dev_points=points,
            history=history,
            seconds=time.perf_counter() - t0,
            stop=dict(es.stop()),
        )
