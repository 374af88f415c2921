"""What a session call sends of z: a deep session's shared layers once a request (1.5)."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.client.projection_sessions import new_session, plan_session_logits, split_held
from bbt.errors import InvalidRequestError
from bbt.protocol.projection import ProjectionRecipe
from bbt.server import MockBackend

D, L = 3, 4


def test_only_the_varying_layers_travel_per_candidate() -> None:
    rng = np.random.default_rng(0)
    z = np.repeat(rng.standard_normal((1, L * D)), 5, axis=0)
    z[:, 2 * D : 3 * D] = rng.standard_normal((5, D))  # layer 2 varies
    sent, varying, held = split_held(z, L, D)
    assert varying == [2]
    np.testing.assert_array_equal(sent, z[:, 2 * D : 3 * D].astype(np.float32))
    assert held is not None
    h = held.to_numpy()
    np.testing.assert_array_equal(h[2 * D : 3 * D], 0.0)
    keep = np.r_[0 : 2 * D, 3 * D : L * D]
    np.testing.assert_array_equal(h[keep], z[0, keep].astype(np.float32))


def test_whole_z_when_nothing_can_be_shared() -> None:
    z = np.random.default_rng(1).standard_normal((4, L * D))
    for arr, layers in ((z, L), (z[:1], L), (z[:, :D], 1), (np.zeros((3, L * D)), L)):
        sent, varying, held = split_held(arr, layers, D)
        assert sent is arr
        assert varying is None
        assert held is None


def test_a_deep_plan_carries_varying_and_held() -> None:
    info = MockBackend(num_layers=L).info
    recipes = [
        ProjectionRecipe(seed=k, n_tokens=2, hidden_size=info.hidden_size, dim=D, embedding_std=0.1)
        for k in range(L)
    ]
    session = new_session(recipes[0], layers=recipes[1:])
    assert session.dim == L * D
    z = np.zeros((3, L * D))
    z[:, :D] = np.arange(3 * D).reshape(3, D)
    texts = ["a [MASK] b"] * 2
    (chunk,) = plan_session_logits(info, session, z, texts, [3, 4])
    assert chunk.request.varying == [0]
    assert chunk.request.held is not None
    assert chunk.request.z.shape == [3, D]
    with pytest.raises(InvalidRequestError, match="layer_p0"):
        new_session(recipes[0], layer_p0=np.zeros((L - 1, 2, info.hidden_size)))
