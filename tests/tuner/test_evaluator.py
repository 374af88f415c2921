"""The evaluator seam: the Tuner reaches the service only through its Evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient, Service
from bbt.server.mock import MockBackend
from bbt.tuner import Evaluator, Example, ProjectingEvaluator, Projection, Task, Tuner

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]
F32 = np.ndarray[Any, np.dtype[np.float32]]


class Recording(Evaluator):
    """Delegates to a ProjectingEvaluator and records the shape of every z it is given."""

    def __init__(self, service: Service, recipe: Any, p0: F32) -> None:
        self.inner = ProjectingEvaluator(service, recipe, p0)
        self.shapes: list[tuple[int, ...]] = []
        self.texts: list[int] = []

    def logits(self, z: np.ndarray[Any, Any], texts: Sequence[str], ids: Sequence[int]) -> F32:
        self.shapes.append(np.shape(z))
        self.texts.append(len(texts))
        return self.inner.logits(z, texts, ids)

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        return self.inner.prompts(z)


def test_projecting_evaluator_is_p_equals_a_z_plus_p0(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    tuner_like = Tuner(service, mock_task, *split, small_config())
    ev = tuner_like.evaluator
    assert isinstance(ev, ProjectingEvaluator)
    z = np.random.default_rng(0).normal(size=(3, 20))
    want = Projection(tuner_like.recipe).project(z) + tuner_like.p0
    np.testing.assert_array_equal(ev.prompts(z), want)
    texts = tuner_like.train_texts[:4]
    np.testing.assert_array_equal(
        ev.logits(z, texts, tuner_like.candidate_ids),
        service.logits(want, texts, tuner_like.candidate_ids),
    )
    with pytest.raises(ValueError, match="p0 has shape"):
        ProjectingEvaluator(service, tuner_like.recipe, np.zeros((2, H), np.float32))


def test_the_tuner_scores_only_through_its_evaluator(mock_task: Task, split: Split) -> None:
    made: list[Recording] = []

    def factory(service: Service, recipe: Any, p0: F32) -> Evaluator:
        made.append(Recording(service, recipe, p0))
        return made[-1]

    cfg = small_config(budget=48, eval_every=16)
    plain = Tuner(LocalClient(MockBackend(hidden_size=H)), mock_task, *split, cfg).run()
    service = LocalClient(MockBackend(hidden_size=H))
    tuner = Tuner(service, mock_task, *split, cfg, evaluator=factory)
    sel = tuner.run()
    np.testing.assert_array_equal(sel.z, plain.z)
    (ev,) = made
    assert tuner.evaluator is ev
    # p0 on dev, then per generation one population of 8 on the 32 training texts, and the
    # best candidate on dev at each check: z-space in, never a prompt.
    assert ev.shapes[0] == (1, cfg.dim)
    assert ev.shapes.count((8, cfg.dim)) == tuner.generation == 6
    assert len(ev.shapes) == 1 + tuner.generation + tuner.dev_calls - 1
    assert set(ev.texts) == {len(split[0]), len(split[1])}


def test_a_session_that_will_not_close_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bbt.errors import APIConnectionError
    from bbt.tuner.evaluator import close_session

    class Refusing:
        def close_session(self, session: Any) -> None:
            raise APIConnectionError("the server is gone")

    with caplog.at_level("WARNING", logger="bbt.tuner"):
        close_session(Refusing(), object(), "deep projection session")  # type: ignore[arg-type]
    assert "could not close the deep projection session: the server is gone" in caplog.text
