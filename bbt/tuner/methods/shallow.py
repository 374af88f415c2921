"""BBT (Sun et al., ICML 2022): one soft prompt [n, H] at the input, z of d numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bbt.client import Service
from bbt.tuner.config import TuneConfig
from bbt.tuner.data import Example
from bbt.tuner.methods.base import F32, Method, PromptLayout
from bbt.tuner.prompts import InitialPrompt
from bbt.tuner.records import Callback
from bbt.tuner.tasks import Task
from bbt.tuner.tuner import Tuner


class BBTMethod(Method):
    """Black-Box Tuning: :class:`~bbt.tuner.tuner.Tuner`, p = A z + p0 at the input."""

    name = "bbt"
    summary = "a prompt at the input"

    def build(
        self,
        service: Service,
        task: Task,
        train: Sequence[Example],
        dev: Sequence[Example],
        config: TuneConfig,
        *,
        initial_prompt: InitialPrompt | None = None,
        p0: F32 | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> Tuner:
        return Tuner(
            service,
            task,
            train,
            dev,
            config,
            initial_prompt=initial_prompt,
            p0=p0,
            callbacks=callbacks,
        )

    def layout(self, tuner: Tuner) -> PromptLayout:
        cfg = tuner.config
        return PromptLayout(cfg.dim, cfg.n_tokens, tuner.model_info.hidden_size)

    def projection_fingerprint(self, tuner: Tuner) -> str:
        return tuner.projection.fingerprint()

    def manifest_extra(self, tuner: Tuner) -> dict[str, Any]:
        return {}


BBT = BBTMethod()
