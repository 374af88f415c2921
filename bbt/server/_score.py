"""The score endpoint (protocol 1.6), framework-free: ``/v1/score``.

:class:`~bbt.server._core.ServiceCore` routes it here, whichever transport a request came
by. A backend answers scores when it lists the ``"score"`` capability
(:class:`bbt.server.backend.Scores`, a causal LM); the route answers 404 naming the
capability otherwise, before any compute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bbt.protocol import ScoreRequest, ScoreResponse
from bbt.protocol.score import check_score_answer, check_score_request, no_score
from bbt.server.backend import Scores, supports

if TYPE_CHECKING:
    from bbt.server._core import ServiceCore


def score(core: ServiceCore, req: ScoreRequest) -> ScoreResponse:
    if not supports(core.backend, Scores):
        raise no_score(core.info.id)
    texts = check_score_request(req, core.info)
    sums, counts, usage = core.backend.score(texts)
    # A backend bug, not the caller's, when this fails: a 500 with the details logged.
    sums, counts = check_score_answer(sums, counts, len(texts))
    return ScoreResponse(model=core.info.id, logprobs=sums, token_counts=counts, usage=usage)
