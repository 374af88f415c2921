"""The Black-Box Tuning loop: CMA-ES over z, one API call per candidate, dev-set selection.

Algorithm 1 of Sun et al. (ICML 2022): CMA-ES (Hansen, 2016; pycma) proposes a population
of z in R^d, each is projected to a prompt p = A z + p0, scored on the whole k-shot training
set by the model (one *API call* per candidate), and the losses go back to CMA-ES. Every
``eval_every`` calls the best candidate so far is scored on the dev set; the prompt that
scores best there is the run's result.

The :class:`Tuner` composes two seams and owns everything between them (budget, losses,
the non-finite rule, dev selection, callbacks, checkpoints):

- an optimiser (:mod:`bbt.tuner.optimizers`, chosen by name: ``config.optimizer``; CMA-ES
  by default), pure ask/tell in z-space (no I/O, no global RNG);
- :class:`bbt.tuner.evaluator.Evaluator`, which turns z into logits on the service (by
  default :class:`~bbt.tuner.evaluator.ProjectingEvaluator`: p = A z + p0 locally).

Determinism (what makes ``--resume`` exact): the optimiser's state, its sampling stream
included, is its ``state_dict()`` (JSON-able data and arrays) that every checkpoint holds,
and after every generation CMA-ES continues from the copy restored from that very state, so
an uninterrupted run and a resumed run execute identical code on identical state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.errors import ConfigurationError, TaskError
from bbt.tuner import optimizers, stopping
from bbt.tuner._state import Candidate as Candidate  # part of this module's API
from bbt.tuner._state import RunState, pack_state, unpack_checkpoint
from bbt.tuner.config import (
    DEFAULT_ALPHA,
    DEFAULT_BUDGET,
    DEFAULT_DIM,
    DEFAULT_EVAL_EVERY,
    DEFAULT_EVAL_MEAN,
    DEFAULT_LOSS,
    DEFAULT_N_TOKENS,
    DEFAULT_POPSIZE,
    DEFAULT_SEED,
    DEFAULT_SIGMA,
    METHODS,
    TuneConfig,
)
from bbt.tuner.data import Example
from bbt.tuner.evaluator import Evaluator, EvaluatorFactory, make_evaluator
from bbt.tuner.inputs import TunerInputs
from bbt.tuner.losses import get_loss, get_metric
from bbt.tuner.optimizers import OptimizerSpec, cma_seed
from bbt.tuner.projection import Projection, ProjectionRecipe
from bbt.tuner.prompts import InitialPrompt, build_initial_prompt
from bbt.tuner.records import Callback, GenerationRecord
from bbt.tuner.scoring import (
    NONFINITE_PENALTY,
    dev_scores,
    nonfinite_rule,
    takes_selection,
    train_scores,
)
from bbt.tuner.tasks import Task, verbalizer_ids

#: The name under which pickles of bbt up to f05a715 (the legacy reader's) find the state.
_State = RunState

F32 = np.ndarray[Any, np.dtype[np.float32]]
F64 = np.ndarray[Any, np.dtype[np.float64]]

log = logging.getLogger("bbt.tuner")

# TuneConfig and its defaults (bbt.tuner.config) and the records (bbt.tuner.records) stay
# importable from here.
__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BUDGET",
    "DEFAULT_DIM",
    "DEFAULT_EVAL_EVERY",
    "DEFAULT_EVAL_MEAN",
    "DEFAULT_LOSS",
    "DEFAULT_N_TOKENS",
    "DEFAULT_POPSIZE",
    "DEFAULT_SEED",
    "DEFAULT_SIGMA",
    "METHODS",
    "NONFINITE_PENALTY",
    "Callback",
    "Candidate",
    "GenerationRecord",
    "TuneConfig",
    "Tuner",
]


class Tuner:
    """Black-Box Tuning with an ask/tell interface.

    ``step()`` runs one generation (ask, score on the service, tell); ``run()`` runs until the
    budget is spent or a stop condition holds. Those who drive it themselves call
    :meth:`ask`, score the candidates however they like (:meth:`evaluate` does what
    ``step`` does), and hand the losses to :meth:`tell`.

    It composes an optimiser (:attr:`optimizer`, the one ``config.optimizer`` names) and an
    :class:`~bbt.tuner.evaluator.Evaluator` (:attr:`evaluator`), built by ``evaluator``
    (default :func:`~bbt.tuner.evaluator.make_evaluator`, which uses a projection session
    when the service offers one and ``config.sessions`` allows it) from the service, the
    projection recipe and p0. :meth:`close` releases what the evaluator holds (a session).

    Budget accounting: one API call is one candidate scored on the whole training set. A
    generation of P candidates costs P calls and runs only if it fits in what is left of
    the budget. Dev-set scoring is counted apart (``dev_calls``), as in the paper's code.

    Selection: the best candidate so far (lowest train loss; the earlier one on a tie) is
    scored on the dev set when a multiple of ``eval_every`` calls is reached, and at the end
    of the run. It becomes the selected prompt when its dev metric is higher than the
    selection's, or equal with a lower dev cross-entropy; on a full tie the earlier one stays.
    With ``eval_initial`` (default) p0 itself (z = 0) is scored first, so a run always ends
    with a selected prompt. With ``eval_mean`` every dev check (and the end of the run) also
    scores the CMA-ES mean, at one more dev call, under the same rule, after the best.

    Non-finite values (a service that returns NaN or inf) follow :mod:`bbt.tuner.scoring`;
    the first generation that has one is logged, and :meth:`tell` applies the rule to
    losses handed in by hand too.
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
        evaluator: EvaluatorFactory | None = None,
    ) -> None:
        inputs = self._prepare(
            TunerInputs(service, task, train, dev, config, initial_prompt, p0, callbacks, evaluator)
        )
        self.service = service = inputs.service
        self.task = task = inputs.task
        self.config = cfg = inputs.config or TuneConfig()
        self.callbacks: list[Callback] = list(inputs.callbacks)
        train, dev, p0, evaluator = inputs.train, inputs.dev, inputs.p0, inputs.evaluator
        self.model_info = info = service.model_info()
        if cfg.n_tokens > info.limits.max_prompt_tokens:
            raise ConfigurationError(
                f"n={cfg.n_tokens} prompt tokens; model {info.id!r} takes at most "
                f"{info.limits.max_prompt_tokens}"
            )
        if not train:
            raise TaskError("the training set is empty")
        if not dev and cfg.eval_initial:
            raise TaskError("the dev set is empty; dev-set selection needs examples")
        self.train, self.dev = list(train), list(dev)
        self.candidate_ids = verbalizer_ids(task, service)
        # The template matching the served kind (masked: {mask}; causal: ends at the word).
        self.train_texts = [task.render_for(info, e.fields) for e in self.train]
        self.dev_texts = [task.render_for(info, e.fields) for e in self.dev]
        self.train_labels = self._labels(self.train, "training")
        self.dev_labels = self._labels(self.dev, "dev")
        self._loss = get_loss(cfg.loss)
        self._metric = get_metric(task.metric)

        self.initial_prompt = inputs.initial_prompt or InitialPrompt()
        if p0 is None:
            p0, self.initial_prompt = build_initial_prompt(
                self.initial_prompt, service, cfg.n_tokens
            )
        if p0.shape != (cfg.n_tokens, info.hidden_size):
            raise ConfigurationError(
                f"p0 has shape {list(p0.shape)}; expected [{cfg.n_tokens}, {info.hidden_size}]"
            )
        self.p0: F32 = np.ascontiguousarray(p0, dtype=np.float32)
        self.recipe: ProjectionRecipe = cfg.recipe(info.hidden_size, info.embedding_std)
        if evaluator is None:
            evaluator = partial(make_evaluator, sessions=cfg.sessions)
        self.evaluator: Evaluator = evaluator(service, self.recipe, self.p0)
        self._state = RunState()
        self._warned_nonfinite = False
        self._session_start = time.perf_counter()
        self._elapsed_base = 0.0
        self.optimizer: optimizers.Optimizer = self._make_optimizer()

    def _prepare(self, inputs: TunerInputs) -> TunerInputs:
        """A subclass's checks and changes to its inputs before the set-up (none here)."""
        return inputs

    def _make_optimizer(self) -> optimizers.Optimizer:
        """The optimiser ``config.optimizer`` names, over z in R^d."""
        cfg = self.config
        spec = OptimizerSpec(cfg.dim, cfg.population, cfg.sigma, cma_seed(cfg.seed), cfg.bound)
        return optimizers.make(cfg.optimizer, spec)

    # ------------------------------------------------------------------ set-up

    def _labels(self, examples: Sequence[Example], what: str) -> np.ndarray[Any, Any]:
        labels = [e.label for e in examples]
        if any(lab is None for lab in labels):
            raise TaskError(f"every {what} example needs a label")
        return np.asarray(labels, dtype=np.int64)

    # ------------------------------------------------------------------ properties

    @property
    def generation(self) -> int:
        return self._state.generation

    @property
    def calls(self) -> int:
        """API calls spent on training candidates (the budget's unit)."""
        return self._state.calls

    @property
    def dev_calls(self) -> int:
        return self._state.dev_calls

    @property
    def popsize(self) -> int:
        return self.optimizer.popsize  # the next generation's (IPOP's grows)

    @property
    def best(self) -> Candidate | None:
        """The candidate with the lowest training loss so far."""
        return self._state.best_train

    @property
    def selected(self) -> Candidate | None:
        """The best-on-dev candidate: the run's result."""
        return self._state.selected

    @property
    def stop_reason(self) -> str | None:
        return self._state.stop_reason

    @property
    def elapsed(self) -> float:
        return self._elapsed_base + time.perf_counter() - self._session_start

    @property
    def sigma(self) -> float:
        return self.optimizer.sigma

    @property
    def projection(self) -> Projection:
        """The projection A of :attr:`recipe` (built once, shared with the evaluator when it
        projects locally)."""
        proj = getattr(self.evaluator, "projection", None)
        if isinstance(proj, Projection) and proj.recipe == self.recipe:
            return proj
        own = self.__dict__.get("_own_projection")
        if not isinstance(own, Projection):
            own = self.__dict__["_own_projection"] = Projection(self.recipe)
        return own

    def done(self) -> bool:
        """Whether the run is over (budget, early stopping, CMA-ES converged, or a callback)."""
        if self._state.stop_reason is None:
            if self._state.calls + self.popsize > self.config.budget:
                self._state.stop_reason = "budget"
            else:
                stops = self.optimizer.stop()
                if stops:
                    self._state.stop_reason = "cma:" + ",".join(sorted(stops))
        return self._state.stop_reason is not None

    # ------------------------------------------------------------------ scoring

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        """The prompts z [P, d] stand for: [P, n, H] (p = A z + p0) with the default
        evaluator."""
        return self.evaluator.prompts(z)

    def _logits(self, z: np.ndarray[Any, Any], texts: list[str]) -> F32:
        return self.evaluator.logits(z, texts, self.candidate_ids)

    def evaluate(self, candidates: np.ndarray[Any, Any]) -> tuple[F64, F64]:
        """Score candidates on the training set in one service call (P API calls): the loss
        and the task metric of each, both [P]. A candidate with any non-finite logit gets a
        NaN loss and metric (a hinge or accuracy of such logits can look finite, but means
        nothing); :meth:`tell` then applies the non-finite rule."""
        logits = self._logits(candidates, self.train_texts)
        return train_scores(logits, self.train_labels, self._loss, self._metric)

    def evaluate_dev(self, z: np.ndarray[Any, Any]) -> tuple[float, float]:
        """Dev metric and dev cross-entropy of one z (counted in ``dev_calls``); -inf and inf
        when the service returned non-finite logits (the worst score, never selected)."""
        logits = self._logits(np.asarray(z)[None, :], self.dev_texts)
        self._state.dev_calls += 1
        scores = dev_scores(logits, self.dev_labels, self._metric)
        if scores is None:
            log.warning("the service returned non-finite dev logits; scored as the worst")
            return -math.inf, math.inf
        return scores

    def _nonfinite_rule(self, loss: F64) -> tuple[F64, F64, int]:
        """:func:`bbt.tuner.scoring.nonfinite_rule`, logged the first time it applies."""
        cma, rank, k = nonfinite_rule(loss)
        if k and not self._warned_nonfinite:
            self._warned_nonfinite = True
            log.warning(
                "generation %d: %d of %d candidates scored NaN/inf; such a candidate gets the "
                "worst finite loss of its generation (%g if none is finite) and is counted as "
                "`nonfinite` in the history (logged once per session)",
                self._state.generation + 1,
                k,
                loss.size,
                NONFINITE_PENALTY,
            )
        return cma, rank, k

    # ------------------------------------------------------------------ ask / tell

    @property
    def _pending(self) -> F64 | None:
        return self.optimizer.pending

    def ask(self) -> F64:
        """The next population, [P, d] (float64)."""
        return self.optimizer.ask()

    def tell(
        self, losses: Sequence[float] | np.ndarray[Any, Any], metrics: Any = None
    ) -> GenerationRecord:
        """Report the losses of the population from :meth:`ask`; runs dev selection when due
        and the callbacks. ``metrics`` (train metric per candidate) is optional."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        pop = self._pending
        raw = np.asarray(losses, dtype=np.float64)
        if raw.shape != (pop.shape[0],):
            raise ValueError(f"losses must be {pop.shape[0]} numbers, one per candidate")
        # Non-finite losses: see the class docstring. Raising here would lose the run for
        # good (a resume replays the same z), so the candidate is ranked last instead.
        loss, rank, nonfinite = self._nonfinite_rule(raw)
        self.optimizer.tell(loss)
        st = self._state
        before = st.calls
        st.calls += pop.shape[0]
        st.generation += 1
        i = int(np.argmin(rank))  # first minimum: the earlier candidate wins a tie
        if math.isfinite(rank[i]) and (st.best_train is None or rank[i] < st.best_train.train_loss):
            st.best_train = Candidate(pop[i].copy(), float(rank[i]), st.calls)
        m = np.asarray(metrics, dtype=np.float64) if metrics is not None else None
        rec = GenerationRecord(
            generation=st.generation,
            calls=st.calls,
            dev_calls=st.dev_calls,
            loss_min=float(loss.min()),
            loss_mean=float(loss.mean()),
            loss_max=float(loss.max()),
            loss_std=float(loss.std()),
            best_loss=st.best_train.train_loss if st.best_train else float("nan"),
            train_metric=float(m[i]) if m is not None else float("nan"),
            sigma=self.sigma,
            wall_time=0.0,
            nonfinite=nonfinite,
        )
        if st.calls // self.config.eval_every > before // self.config.eval_every:
            self._dev_select(rec)
        rec.dev_calls = st.dev_calls
        rec.best_dev_metric = st.selected.dev_metric if st.selected else None
        rec.selected_calls = st.selected.calls if st.selected else None
        rec.wall_time = round(self.elapsed, 6)
        st.elapsed = self.elapsed
        for cb in self.callbacks:
            if cb(rec) is True and st.stop_reason is None:
                st.stop_reason = "callback"
        return rec

    def step(self) -> GenerationRecord:
        """One generation: ask, score the population in one service call, tell."""
        pop = self.ask()
        losses, metrics = self.evaluate(pop)
        return self.tell(losses, metrics)

    def start(self) -> None:
        """Score p0 (z = 0) on the dev set, once, before the first generation."""
        st = self._state
        if self.config.eval_initial and st.selected is None and st.generation == 0:
            z0 = np.zeros(self.config.dim)
            metric, ce = self.evaluate_dev(z0)
            if math.isfinite(metric):  # a non-finite dev score is never selected
                st.selected = Candidate(z0, float("nan"), 0, metric, ce)
            st.extra["initial_dev_metric"] = metric

    def finish(self) -> Candidate:
        """Score the best candidate on dev if it has not been yet (and, with ``eval_mean``,
        the CMA-ES mean if it has not been at this point of the run); return the selection."""
        st = self._state
        best_due = st.best_train is not None and st.evaluated_calls != st.best_train.calls
        if best_due or self._mean_due():
            self._dev_select(None)
        if st.selected is None:
            if st.best_train is None:
                raise TaskError("the run ended before any candidate was scored")
            st.selected = st.best_train  # no dev set: fall back to the training loss
        return st.selected

    def close(self) -> None:
        """Release what the evaluator holds on the service (a projection session)."""
        self.evaluator.close()

    def run(self) -> Candidate:
        """Run generations until :meth:`done`, then return the selected candidate."""
        self.start()
        while not self.done():
            self.step()
        return self.finish()

    def _mean_due(self) -> bool:
        """Whether the CMA-ES mean of this point of the run still needs its dev score."""
        st = self._state
        return (
            self.config.eval_mean
            and bool(self.dev)
            and st.generation > 0
            and st.extra.get("mean_scored_calls") != st.calls
        )

    def _consider(self, cand: Candidate) -> bool:
        """Make ``cand`` (already scored on dev) the selection if it beats it: higher dev
        metric, or equal with a lower dev cross-entropy; on a full tie the earlier stays."""
        better = takes_selection(cand, self._state.selected)
        if better:
            self._state.selected = replace(cand, z=cand.z.copy())
        return better

    def _dev_select(self, rec: GenerationRecord | None) -> None:
        """One dev check: the best-by-train candidate (if new since the last check), then,
        with ``eval_mean``, the CMA-ES mean; each may become the selection."""
        st = self._state
        cand = st.best_train
        if cand is None or not self.dev:
            return
        improved = False
        if st.evaluated_calls != cand.calls:
            # (The same best candidate as at the last check has nothing new to say.)
            metric, ce = self.evaluate_dev(cand.z)
            cand.dev_metric, cand.dev_ce = metric, ce
            st.evaluated_calls = cand.calls
            if rec is not None:
                rec.dev_metric, rec.dev_ce = metric, ce
            improved = self._consider(cand)
        if self._mean_due():
            # The mean moves every generation, so it is scored even when the best is stale.
            # Scored after the best: on a full tie the best-by-train candidate stays.
            z = self.optimizer.mean()  # the mean as a candidate z (within any bounds)
            metric, ce = self.evaluate_dev(z)
            st.extra["mean_scored_calls"] = st.calls
            mean = Candidate(z, float("nan"), st.calls, metric, ce, source="mean")
            st.extra["last_mean"] = mean
            if rec is not None:
                rec.mean_dev_metric, rec.mean_dev_ce = metric, ce
            improved = self._consider(mean) or improved
        if rec is not None and st.selected is not None:
            rec.selected = "initial" if st.selected.calls == 0 else st.selected.source
        st.stale_evals = 0 if improved else st.stale_evals + 1
        p = self.config.patience
        if p is not None and st.stale_evals >= p and st.stop_reason is None:
            st.stop_reason = "early_stopping"
        stopping.after_dev_check(st, improved, self.config.patience_calls, self.config)

    @property
    def last_mean(self) -> Candidate | None:
        """The CMA-ES mean as last scored on dev (with ``eval_mean``), with its dev scores."""
        mean = self._state.extra.get("last_mean")
        return mean if isinstance(mean, Candidate) else None

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """A snapshot taken between generations (after :meth:`tell`): JSON-able data and
        NumPy arrays only (see :func:`pack_state`)."""
        if self._pending is not None:
            raise RuntimeError("checkpoint between generations only (after tell())")
        self._state.elapsed = self.elapsed
        return pack_state(self._state, self.optimizer.state_dict(), self.config.optimizer)

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the legacy reader converts older checkpoints)."""
        state, optimizer_state = unpack_checkpoint(data, self.config.optimizer)
        self.optimizer.load_state_dict(optimizer_state)
        self._state = state
        self._elapsed_base = state.elapsed
        self._session_start = time.perf_counter()

    @property
    def initial_dev_metric(self) -> float | None:
        v = self._state.extra.get("initial_dev_metric")
        return None if v is None else float(v)
