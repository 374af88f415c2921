"""The random projection of Black-Box Tuning: p = A z + p0.

Sun et al. (ICML 2022, Sec. 3.2) optimise z in a low-dimensional subspace (d = 500) and map
it to a prompt of n x H numbers with a fixed random matrix A of shape D x d, D = n * H.
They draw A from N(0, sigma_A^2) with

    sigma_A = alpha * std_E / (sqrt(d) * sigma)                                  (Sec. 3.2)

where std_E is the std of the model's input embeddings and sigma the CMA-ES step size, so
that a sample z ~ N(0, sigma^2 I) gives Az entries with the scale of real embeddings.

A is never stored: :class:`ProjectionRecipe` (seed, distribution, alpha, sigma, std_E and
shapes) regenerates it bit-exactly with the same NumPy version. Generation draws D x d
float32 numbers in one vectorised call (~0.2 s at paper scale) and the whole matrix lives in
memory once per run: D * d * 4 bytes, i.e. 51,200 * 500 * 4 B = 102.4 MB at paper scale
(n = 50, H = 1024, d = 500). Projecting a population is then one [P, d] x [d, D] matmul.

This module is part of the protocol: a server offering projection sessions (protocol 1.1)
rebuilds the same A from a recipe the client sends, so it must not depend on the tuner.
docs/protocol.md (*The projection generator*) specifies it for servers in other languages.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from bbt.errors import ConfigurationError

Distribution = Literal["normal", "uniform"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("normal", "uniform")

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
FLOAT32_MAX = float(np.finfo(np.float32).max)

#: The generator specified here (and in docs/protocol.md); a session names it in its recipe.
RECIPE_VERSION = "bbt-projection/1"


def matrix_bytes(n_tokens: int, hidden_size: int, dim: int) -> int:
    """Bytes of A (D x d float32, D = n * H) for these shapes, computed without building it:
    a server sizes a requested projection with this before spending any time or memory."""
    return n_tokens * hidden_size * dim * 4


@dataclass(frozen=True)
class ProjectionRecipe:
    """Everything needed to regenerate A bit-exactly (with the same NumPy version)."""

    seed: int
    n_tokens: int
    hidden_size: int
    dim: int
    embedding_std: float
    alpha: float = 1.0
    sigma: float = 1.0
    distribution: Distribution = "normal"

    def __post_init__(self) -> None:
        if self.n_tokens < 1 or self.hidden_size < 1 or self.dim < 1:
            raise ConfigurationError(
                f"projection shapes must be positive: n={self.n_tokens}, "
                f"H={self.hidden_size}, d={self.dim}"
            )
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigurationError(
                f"unknown projection distribution {self.distribution!r}; "
                f"choose one of {', '.join(DISTRIBUTIONS)}"
            )
        if not (self.embedding_std > 0 and self.alpha > 0 and self.sigma > 0):
            raise ConfigurationError("embedding_std, alpha and sigma must all be positive")
        # A is drawn in float32: a scale beyond float32's range would fill it with inf.
        if not (math.isfinite(self.std) and 0 < self.std < FLOAT32_MAX):
            raise ConfigurationError(
                f"the projection's scale alpha * embedding_std / (sqrt(d) * sigma) = {self.std:g} "
                "is not a finite, positive float32"
            )

    @property
    def prompt_size(self) -> int:
        """D = n * H, the number of values in one soft prompt."""
        return self.n_tokens * self.hidden_size

    @property
    def std(self) -> float:
        """sigma_A = alpha * std_E / (sqrt(d) * sigma) (Sun et al., 2022, Sec. 3.2)."""
        return self.alpha * self.embedding_std / (math.sqrt(self.dim) * self.sigma)

    @property
    def nbytes(self) -> int:
        """Memory the generated matrix takes (float32)."""
        return matrix_bytes(self.n_tokens, self.hidden_size, self.dim)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectionRecipe:
        return cls(**data)


class Projection:
    """A materialised projection. ``matrix`` is stored transposed, [d, D], so that a population
    Z [P, d] projects with one C-contiguous matmul ``Z @ matrix``."""

    def __init__(self, recipe: ProjectionRecipe) -> None:
        self.recipe = recipe
        rng = np.random.Generator(np.random.PCG64(recipe.seed))
        shape = (recipe.dim, recipe.prompt_size)
        if recipe.distribution == "normal":
            mat = rng.standard_normal(shape, dtype=np.float32)
            mat *= np.float32(recipe.std)
        else:
            # Same variance as the normal option: U(-b, b) has std b / sqrt(3).
            mat = rng.random(shape, dtype=np.float32)
            mat *= np.float32(2.0 * math.sqrt(3.0) * recipe.std)
            mat -= np.float32(math.sqrt(3.0) * recipe.std)
        self.matrix: FloatArray = mat

    def fingerprint(self) -> str:
        """SHA-256 of the shape and of the first, middle and last rows of the stored [d, D]
        matrix (columns of A) as little-endian float32: cheap, and any change in how A is
        generated (another NumPy, another recipe) changes it."""
        m = self.matrix
        h = hashlib.sha256(f"bbt-projection/1 {m.shape[0]}x{m.shape[1]}\n".encode())
        for row in sorted({0, m.shape[0] // 2, m.shape[0] - 1}):
            h.update(np.ascontiguousarray(m[row], dtype="<f4").tobytes())
        return h.hexdigest()

    def project(self, z: np.ndarray[Any, Any], p0: FloatArray | None = None) -> FloatArray:
        """Prompts [P, n, H] (float32) for z of shape [P, d]; a single z [d] gives [1, n, H]."""
        r = self.recipe
        zz = np.asarray(z, dtype=np.float32)
        if zz.ndim == 1:
            zz = zz[None, :]
        if zz.ndim != 2 or zz.shape[1] != r.dim:
            raise ValueError(f"z must have shape [P, {r.dim}]; got {np.shape(z)}")
        return project_rows(self.matrix, zz, r.n_tokens, p0)


#: Rows of z one BLAS product takes in :func:`project_rows` (a shorter last group is padded
#: with zero rows): every row of two or more is then computed by a product of one shape.
PROJECT_BLOCK = 8


def project_rows(
    matrix: FloatArray, z: FloatArray, n_tokens: int, p0: FloatArray | None = None
) -> FloatArray:
    """``(z @ matrix).reshape(P, n, H) + p0`` in float32: the one projection code of the
    client (:meth:`Projection.project`) and of a session server, so both give bitwise the
    same prompts for the same rows with the same NumPy, BLAS and BLAS thread count.

    BLAS rounds a row's product differently by the shape of the product it is part of: a
    lone row ([1, d] x [d, D]) goes to a matrix-vector kernel, and on some CPUs (OpenBLAS's
    AVX2 kernels) a row among 5 rounds otherwise than the same row among 2. So rows are
    multiplied in groups of :data:`PROJECT_BLOCK`, the last one padded with zeros: a row's
    bits do not depend on how a population is split over requests, as long as it is not
    alone. A client never sends a lone row of a larger population on its own (see
    ``bbt.client.projection_sessions.plan_session_logits``); a lone z (P = 1) is the
    matrix-vector product, as it always was.
    """
    rows = z.shape[0]
    if rows == 1:
        flat = z @ matrix
    else:
        flat = np.empty((rows, matrix.shape[1]), dtype=np.float32)
        block = np.zeros((PROJECT_BLOCK, z.shape[1]), dtype=np.float32)
        for start in range(0, rows, PROJECT_BLOCK):
            part = z[start : start + PROJECT_BLOCK]
            block[: len(part)] = part
            block[len(part) :] = 0.0
            flat[start : start + len(part)] = (block @ matrix)[: len(part)]
    out: FloatArray = flat.reshape(rows, n_tokens, matrix.shape[1] // n_tokens)
    if p0 is not None:
        out += p0
    return out


def fingerprint_array(array: np.ndarray[Any, Any]) -> str:
    """SHA-256 of an array's shape and values as little-endian float32 (e.g. of p0)."""
    a = np.ascontiguousarray(array, dtype="<f4")
    shape = "x".join(str(n) for n in a.shape)
    return hashlib.sha256(f"bbt-array/1 {shape}\n".encode() + a.tobytes()).hexdigest()
