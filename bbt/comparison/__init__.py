"""``bbt compare``: is tuning worth it on my task, and what does it cost?

Every method (manual prompt, a choice of manual templates, in-context learning, feature
probes, BBT, BBTv2, and white-box references when the model is local) runs on the same
k-shot samples of the user's data, is scored on the same held-out rows, and has its API
calls, requests, tokens, bytes, wall time and money counted from the service's usage.
"""

from bbt.comparison.base import (
    CompareContext,
    ComparisonError,
    ComparisonMethod,
    CurvePoint,
    Fitted,
    MethodRun,
    Usage,
)
from bbt.comparison.registry import DEFAULT_METHODS, available, get_method, register
from bbt.comparison.runner import CompareSettings, Comparison, compare

__all__ = [
    "DEFAULT_METHODS",
    "CompareContext",
    "CompareSettings",
    "Comparison",
    "ComparisonError",
    "ComparisonMethod",
    "CurvePoint",
    "Fitted",
    "MethodRun",
    "Usage",
    "available",
    "compare",
    "get_method",
    "register",
]
