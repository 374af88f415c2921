from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from bbt.comparison import registry
from bbt.comparison.base import CompareContext, ComparisonError, Fitted, Kind
from bbt.comparison.prompting import TemplatePredictor


class _Plugin:
    name: str = "plugin"
    kind: Kind = "black-box"

    def fit(self, ctx: CompareContext) -> Fitted:
        return Fitted(TemplatePredictor(ctx.service, ctx.task))


def plugin_factory() -> _Plugin:
    return _Plugin()


def test_builtin_methods_cover_the_issue() -> None:
    names = registry.available()
    for name in (
        "manual",
        "manual-select",
        "manual-ppl",
        "icl",
        "feature-lr",
        "feature-mlp",
        "bbt",
        "bbtv2",
        "whitebox-prompt-tuning",
        "whitebox-p-tuning-v2",
        "whitebox-lora",
    ):
        assert name in names
        assert registry.get_method(name).name == name


def test_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ComparisonError, match=r"unknown method .nope.*manual"):
        registry.get_method("nope")


def test_register_adds_a_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_EXTRA", {})
    registry.register("mine", plugin_factory)
    assert "mine" in registry.available()
    assert isinstance(registry.get_method("mine"), _Plugin)


def test_entry_point_plugins_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(
        name="from-ep", value=f"{__name__}:plugin_factory", group=registry.ENTRY_POINT_GROUP
    )

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [ep] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert "from-ep" in registry.available()
    assert isinstance(registry.get_method("from-ep"), _Plugin)
