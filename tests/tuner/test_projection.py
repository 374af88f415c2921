from __future__ import annotations

import math

import numpy as np
import pytest

from bbt.errors import ConfigurationError
from bbt.tuner import Projection, ProjectionRecipe


def recipe(**kw: object) -> ProjectionRecipe:
    base: dict[str, object] = {
        "seed": 7,
        "n_tokens": 4,
        "hidden_size": 16,
        "dim": 50,
        "embedding_std": 0.3,
        "alpha": 1.0,
        "sigma": 1.0,
    }
    base.update(kw)
    return ProjectionRecipe(**base)  # type: ignore[arg-type]


def test_std_follows_the_paper_formula() -> None:
    r = recipe(alpha=2.0, sigma=0.5, dim=400, embedding_std=0.1)
    assert r.std == pytest.approx(2.0 * 0.1 / (math.sqrt(400) * 0.5))


@pytest.mark.parametrize("dist", ["normal", "uniform"])
def test_matrix_has_the_recipe_std_and_regenerates_bit_exactly(dist: str) -> None:
    r = recipe(distribution=dist, dim=200, hidden_size=64)
    a = Projection(r).matrix
    b = Projection(ProjectionRecipe.from_dict(r.as_dict())).matrix
    assert a.dtype == np.float32
    assert a.shape == (200, 4 * 64)
    assert a.tobytes() == b.tobytes()
    assert float(a.std()) == pytest.approx(r.std, rel=0.02)
    assert abs(float(a.mean())) < r.std * 0.02
    if dist == "uniform":
        assert float(np.abs(a).max()) <= math.sqrt(3) * r.std * (1 + 1e-6)


def test_another_seed_gives_another_matrix() -> None:
    assert not np.array_equal(Projection(recipe()).matrix, Projection(recipe(seed=8)).matrix)


def test_project_is_az_plus_p0_for_a_population() -> None:
    r = recipe()
    proj = Projection(r)
    z = np.random.default_rng(0).standard_normal((3, r.dim))
    p0 = np.arange(r.prompt_size, dtype=np.float32).reshape(r.n_tokens, r.hidden_size)
    out = proj.project(z, p0)
    assert out.shape == (3, r.n_tokens, r.hidden_size)
    assert out.dtype == np.float32
    want = (z.astype(np.float32) @ proj.matrix).reshape(3, r.n_tokens, r.hidden_size) + p0
    np.testing.assert_allclose(out, want, rtol=1e-6)
    single = proj.project(z[1], p0)
    # One z alone goes through a matrix-vector product: equal up to float32 rounding.
    np.testing.assert_allclose(single[0], out[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(proj.project(np.zeros(r.dim), p0)[0], p0)


def test_bad_shapes_and_recipes_are_refused() -> None:
    proj = Projection(recipe())
    with pytest.raises(ValueError, match="shape"):
        proj.project(np.zeros((2, 3)))
    with pytest.raises(ConfigurationError):
        recipe(distribution="cauchy")
    with pytest.raises(ConfigurationError):
        recipe(dim=0)
    with pytest.raises(ConfigurationError):
        recipe(alpha=0.0)


def test_memory_is_documented_size() -> None:
    paper = recipe(n_tokens=50, hidden_size=1024, dim=500)
    assert paper.nbytes == 102_400_000
