"""Mixture of source prompts: p = sum_k softmax(w)_k P_k + A z, with w and z tuned together.

Given K prompts tuned (or pre-trained) on source tasks (``--init mix:DIR1,DIR2,...``), the
mixture method searches K mixture weights w alongside BBT's z: one CMA-ES over
x = [w, z] (K + d numbers). At x = 0 the prompt is the sources' mean, which is the run's
recorded p0. ATTEMPT (Asai et al., 2022) mixes source prompts with an input-dependent
attention trained by gradients; without gradients the weights here are one per run, not
per input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.errors import ConfigurationError
from bbt.tuner.config import TuneConfig
from bbt.tuner.evaluator import Evaluator
from bbt.tuner.inputs import TunerInputs
from bbt.tuner.methods.base import F32, Method, PromptLayout
from bbt.tuner.optimizers import OptimizerSpec, cma_seed, make
from bbt.tuner.projection import Projection, ProjectionRecipe
from bbt.tuner.transfer import load_sources, mix_prompts
from bbt.tuner.tuner import Candidate, Tuner

if TYPE_CHECKING:
    from bbt.client import Service
    from bbt.tuner import optimizers
    from bbt.tuner.tuner import TuneConfig


class MixtureEvaluator(Evaluator):
    """x = [w, z] [P, K + d] to prompts sum_k softmax(w)_k P_k + A z, scored locally
    projected (one :meth:`Service.logits` call per population)."""

    def __init__(
        self, service: Service, recipe: ProjectionRecipe, stack: np.ndarray[Any, Any]
    ) -> None:
        self.service = service
        self.recipe = recipe
        self.projection = Projection(recipe)
        self.stack = stack
        self.k = int(stack.shape[0])

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        x = np.asarray(z, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        mixed = mix_prompts(x[:, : self.k], self.stack)
        out: F32 = self.projection.project(x[:, self.k :]) + mixed
        return out

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        return self.service.logits(self.prompts(z), texts, candidate_ids)


class MixtureTuner(Tuner):
    """:class:`~bbt.tuner.tuner.Tuner` over x = [w, z]; the sources come from the run's
    initial prompt (kind ``mix``), reloaded and checked against its recorded hash on resume."""

    def _prepare(self, inputs: TunerInputs) -> TunerInputs:
        initial_prompt = inputs.initial_prompt
        if initial_prompt is None or initial_prompt.kind != "mix":
            raise ConfigurationError(
                "method mixture needs its source prompts: --init mix:RUN_DIR1,RUN_DIR2,..."
            )
        assert initial_prompt.sources is not None  # checked by InitialPrompt
        info = inputs.service.model_info()
        n_tokens = (inputs.config or TuneConfig()).n_tokens
        self.stack, _, _ = load_sources(
            initial_prompt.sources, info, n_tokens, initial_prompt.sha256
        )
        stack = self.stack
        return replace(inputs, evaluator=lambda s, r, _p0: MixtureEvaluator(s, r, stack))

    @property
    def n_sources(self) -> int:
        return int(self.stack.shape[0])

    def _make_optimizer(self) -> optimizers.Optimizer:
        cfg = self.config
        size = cfg.dim + self.n_sources
        spec = OptimizerSpec(size, cfg.population, cfg.sigma, cma_seed(cfg.seed), cfg.bound)
        return make(cfg.optimizer, spec)

    def start(self) -> None:
        """Score x = 0 (the sources' mean, the recorded p0) on dev before the first
        generation, as :meth:`Tuner.start` scores z = 0."""
        st = self._state
        if self.config.eval_initial and st.selected is None and st.generation == 0:
            x0 = np.zeros(self.config.dim + self.n_sources)
            metric, ce = self.evaluate_dev(x0)
            if math.isfinite(metric):
                st.selected = Candidate(x0, float("nan"), 0, metric, ce)
            st.extra["initial_dev_metric"] = metric

    def weights(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """softmax(w) of a candidate x: how much of each source it takes."""
        w = np.asarray(x, dtype=np.float64)[: self.n_sources]
        e = np.exp(w - w.max())
        out: np.ndarray[Any, Any] = e / e.sum()
        return out


class MixtureMethod(Method):
    """CMA-ES over mixture weights of K source prompts and BBT's z."""

    name = "mixture"
    tuner_class = MixtureTuner
    summary = "K source prompts mixed by tuned weights, plus A z (--init mix:DIR1,DIR2)"

    def _tuner(self, tuner: Tuner) -> MixtureTuner:
        if not isinstance(tuner, MixtureTuner):
            raise ConfigurationError("the mixture method describes mixture tuners only")
        return tuner

    def layout(self, tuner: Tuner) -> PromptLayout:
        t = self._tuner(tuner)
        cfg = t.config
        return PromptLayout(cfg.dim + t.n_sources, cfg.n_tokens, t.model_info.hidden_size)

    def projection_fingerprint(self, tuner: Tuner) -> str:
        return tuner.projection.fingerprint()

    def manifest_extra(self, tuner: Tuner) -> dict[str, Any]:
        t = self._tuner(tuner)
        return {"mixture": {"sources": t.n_sources}}


MIXTURE = MixtureMethod()
