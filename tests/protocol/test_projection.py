"""The projection generator lives in the protocol; the tuner's name for it still works."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import bbt.tuner.projection as tuner_projection
from bbt.protocol import projection
from bbt.protocol.projection import Projection, ProjectionRecipe, project_rows


def test_the_tuner_re_exports_the_protocol_generator() -> None:
    assert tuner_projection.Projection is projection.Projection
    assert tuner_projection.ProjectionRecipe is projection.ProjectionRecipe


def test_rows_keep_their_bits_in_any_split_of_two_rows_or_more() -> None:
    # d = 50, D = 640: large enough that BLAS rounds a lone [1, d] x [d, D] row (a
    # matrix-vector kernel) differently from the same row among others; what a session
    # client relies on is that groups of two rows or more all agree with the whole.
    r = ProjectionRecipe(seed=1, n_tokens=10, hidden_size=64, dim=50, embedding_std=0.05)
    proj = Projection(r)
    z = np.random.default_rng(0).standard_normal((12, 50)).astype(np.float32)
    p0 = np.full((10, 64), 0.5, np.float32)
    whole = proj.project(z, p0)
    for size in (2, 3, 4, 6):
        parts = [project_rows(proj.matrix, z[i : i + size], 10, p0) for i in range(0, 12, size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # A lone row is the matrix-vector product, as the client's own P = 1 projection.
    np.testing.assert_array_equal(project_rows(proj.matrix, z[3:4], 10, p0), proj.project(z[3], p0))


@pytest.mark.parametrize(("dim", "hidden"), [(50, 64), (200, 192)])
def test_rows_keep_their_bits_in_uneven_splits(dim: int, hidden: int) -> None:
    # OpenBLAS's AVX2 kernels round a row among 5 otherwise than the same row among 2 (the
    # client tests of sessions failed so on an AVX2-only machine before project_rows took
    # rows in fixed groups): every split into groups of two rows or more, in any order of
    # sizes and with the groups' rows at any position, must give the whole's bits.
    r = ProjectionRecipe(seed=2, n_tokens=10, hidden_size=hidden, dim=dim, embedding_std=0.05)
    proj = Projection(r)
    z = np.random.default_rng(1).standard_normal((13, dim)).astype(np.float32)
    whole = proj.project(z)
    for sizes in ([5, 2, 6], [2, 11], [9, 4], [3, 3, 3, 4], [8, 5], [7, 6], [13]):
        bounds = np.cumsum([0, *sizes])
        parts = [project_rows(proj.matrix, z[a:b], 10) for a, b in itertools.pairwise(bounds)]
        np.testing.assert_array_equal(np.concatenate(parts), whole, err_msg=str(sizes))


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
