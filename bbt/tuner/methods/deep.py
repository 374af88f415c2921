"""BBTv2 (Sun et al., EMNLP 2022): a prompt at every layer [L, n, H], z of L * d numbers,
layer-wise CMA-ES (see :mod:`bbt.tuner.bbtv2`)."""

from __future__ import annotations

from typing import Any

from bbt.protocol import DEEP_PROMPTS, ModelInfo
from bbt.tuner.bbtv2 import BBTv2Tuner, require_deep
from bbt.tuner.methods.base import Method, PromptLayout
from bbt.tuner.tuner import Tuner


class BBTv2Method(Method):
    """BBTv2: :class:`~bbt.tuner.bbtv2.BBTv2Tuner` (deep prompts, one CMA-ES per layer)."""

    name = "bbtv2"
    tuner_class = BBTv2Tuner
    summary = "a prompt at every layer, layers tuned in turn; needs a server with deep prompts"
    requires = (DEEP_PROMPTS,)

    def check(self, info: ModelInfo) -> None:
        require_deep(info)  # its message says what to use instead

    @staticmethod
    def _deep(tuner: Tuner) -> BBTv2Tuner:
        if not isinstance(tuner, BBTv2Tuner):  # the method built it: a bug if not
            raise TypeError(f"method bbtv2 got a {type(tuner).__name__}")
        return tuner

    def layout(self, tuner: Tuner) -> PromptLayout:
        t = self._deep(tuner)
        cfg = t.config
        return PromptLayout(t.z_size, cfg.n_tokens, t.model_info.hidden_size, t.num_layers)

    def projection_fingerprint(self, tuner: Tuner) -> str:
        return self._deep(tuner).deep_projection.fingerprint()

    def manifest_extra(self, tuner: Tuner) -> dict[str, Any]:
        # Layer 0's recipe is "projection" (BBT's); these regenerate every layer's A_l.
        return {"layer_projections": [r.as_dict() for r in self._deep(tuner).layer_recipes]}


BBTV2 = BBTv2Method()
