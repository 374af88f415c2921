"""The random projection of Black-Box Tuning: p = A z + p0.

The generator lives in :mod:`bbt.protocol.projection`, where servers that build A for a
projection session (protocol 1.1) import it too without importing the tuner; this module
re-exports it under its historical name.
"""

from bbt.protocol.projection import (
    DISTRIBUTIONS,
    RECIPE_VERSION,
    Distribution,
    FloatArray,
    Projection,
    ProjectionRecipe,
    fingerprint_array,
    project_rows,
)

__all__ = [
    "DISTRIBUTIONS",
    "RECIPE_VERSION",
    "Distribution",
    "FloatArray",
    "Projection",
    "ProjectionRecipe",
    "fingerprint_array",
    "project_rows",
]
