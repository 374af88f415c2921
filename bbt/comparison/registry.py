"""The comparison methods by name: the built-in ones and those of installed packages
(entry-point group ``bbt.compare_methods``: a zero-argument callable returning a
:class:`~bbt.comparison.base.ComparisonMethod`)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from bbt.comparison.base import ComparisonError, ComparisonMethod
from bbt.comparison.perplexity import ManualPerplexity
from bbt.comparison.probes import LogisticProbe, MLPProbe
from bbt.comparison.prompting import InContextLearning, ManualPrompt, ManualSelect
from bbt.comparison.tuned import BBT, BBTPretrained, BBTv2
from bbt.comparison.whitebox import WHITEBOX_NAMES, Whitebox

ENTRY_POINT_GROUP = "bbt.compare_methods"
Factory = Callable[[], ComparisonMethod]

_BUILTIN: dict[str, Factory] = {
    "manual": ManualPrompt,
    "manual-select": ManualSelect,
    "manual-ppl": ManualPerplexity,
    "icl": InContextLearning,
    "feature-lr": LogisticProbe,
    "feature-mlp": MLPProbe,
    "bbt": BBT,
    "bbt-pretrained": BBTPretrained,
    "bbtv2": BBTv2,
}


def _whitebox_factory(method: str) -> Factory:
    return lambda: Whitebox(method)


for _wb in WHITEBOX_NAMES:
    _BUILTIN[f"whitebox-{_wb}"] = _whitebox_factory(_wb)
_EXTRA: dict[str, Factory] = {}

#: What ``bbt compare`` runs without ``--methods``: every black-box method.
DEFAULT_METHODS = ("manual", "manual-select", "icl", "feature-lr", "feature-mlp", "bbt", "bbtv2")


def register(name: str, factory: Factory) -> None:
    """Add a method under ``name`` (replacing one of that name registered before)."""
    _EXTRA[name] = factory


def _plugins() -> dict[str, Factory]:
    found: dict[str, Factory] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found


def available() -> list[str]:
    return sorted({**_BUILTIN, **_plugins(), **_EXTRA})


def get_method(name: str) -> ComparisonMethod:
    table = {**_BUILTIN, **_plugins(), **_EXTRA}
    if name not in table:
        raise ComparisonError(f"unknown method {name!r}; available: {', '.join(sorted(table))}")
    return table[name]()
