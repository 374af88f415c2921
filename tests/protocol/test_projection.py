"""The projection generator lives in the protocol; the tuner's name for it still works."""

from __future__ import annotations

import numpy as np

import bbt.tuner.projection as tuner_projection
from bbt.protocol import projection
from bbt.protocol.projection import Projection, ProjectionRecipe, project_rows


def test_the_tuner_re_exports_the_protocol_generator() -> None:
    assert tuner_projection.Projection is projection.Projection
    assert tuner_projection.ProjectionRecipe is projection.ProjectionRecipe


def test_each_row_has_the_same_bits_however_a_population_is_split() -> None:
    # d = 50, D = 640: BLAS rounds a [1, d] x [d, D] product (a matrix-vector kernel)
    # differently from the same row inside a larger product; project_rows must not.
    r = ProjectionRecipe(seed=1, n_tokens=10, hidden_size=64, dim=50, embedding_std=0.05)
    proj = Projection(r)
    z = np.random.default_rng(0).standard_normal((7, 50)).astype(np.float32)
    p0 = np.full((10, 64), 0.5, np.float32)
    whole = proj.project(z, p0)
    for size in (1, 2, 3, 5):
        parts = [project_rows(proj.matrix, z[i : i + size], 10, p0) for i in range(0, 7, size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(proj.project(z[3], p0)[0], whole[3])


def test_neither_the_server_nor_the_protocol_imports_the_tuner() -> None:
    import ast
    from pathlib import Path

    import bbt

    root = Path(bbt.__file__).parent
    for package in ("server", "protocol"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                assert not any(n.startswith("bbt.tuner") for n in names), path
