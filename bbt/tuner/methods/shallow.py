"""BBT (Sun et al., ICML 2022): one soft prompt [n, H] at the input, z of d numbers."""

from __future__ import annotations

from bbt.tuner.methods.base import Method, PromptLayout
from bbt.tuner.tuner import Tuner


class BBTMethod(Method):
    """Black-Box Tuning: :class:`~bbt.tuner.tuner.Tuner`, p = A z + p0 at the input."""

    name = "bbt"
    tuner_class = Tuner
    summary = "a prompt at the input"

    def layout(self, tuner: Tuner) -> PromptLayout:
        cfg = tuner.config
        return PromptLayout(cfg.dim, cfg.n_tokens, tuner.model_info.hidden_size)

    def projection_fingerprint(self, tuner: Tuner) -> str:
        return tuner.projection.fingerprint()


BBT = BBTMethod()
