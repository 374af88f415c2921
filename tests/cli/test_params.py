"""Options as data: :func:`bbt.cli._params.from_params` makes a config from a command's parsed
options, and what ``bbt tune`` builds that way is what it built field by field before."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

import bbt.cli._tune as tune_module
from bbt.cli import app
from bbt.cli._eval_predict import RunService
from bbt.cli._params import GROUP, field_names, from_params, grouped
from bbt.comparison import CompareSettings
from bbt.errors import TaskError
from bbt.server.faults import FaultConfig
from bbt.tuner import TuneConfig, TuneOptions

runner = CliRunner()
COMPARE_DEFAULT_METHODS = ["manual", "manual-select", "icl", "feature-lr", "feature-mlp", "bbt"]
COMPARE_DEFAULT_METHODS += ["bbtv2"]


@dataclass
class _Plain:
    a: int = 1
    b: str | None = "b"
    c: list[int] = field(default_factory=list, init=False)


class _Model(BaseModel):
    a: int = 1
    b: str | None = "b"


def test_build_takes_the_fields_and_leaves_the_rest() -> None:
    params = {"a": 3, "b": None, "other": "x"}
    assert field_names(_Plain) == {"a", "b"}
    assert from_params(_Plain, params) == _Plain(a=3, b=None)
    assert from_params(_Plain, params, unset=("b",)) == _Plain(a=3)
    assert from_params(_Plain, params, b="given") == _Plain(a=3, b="given")
    assert from_params(_Model, params, unset=("b",)) == _Model(a=3)
    assert from_params(_Model, {}) == _Model()


def test_build_refuses_a_name_the_config_does_not_have() -> None:
    with pytest.raises(TypeError, match="no field nope"):
        from_params(_Plain, {}, nope=1)
    with pytest.raises(TypeError, match="neither"):
        from_params(dict, {})


def _built_options(monkeypatch: pytest.MonkeyPatch, flags: list[str]) -> TuneOptions:
    """The TuneOptions ``bbt tune FLAGS`` hands to the k-shot split (which is stopped there)."""
    seen: list[TuneOptions] = []

    def stop(options: TuneOptions, task: Any) -> Any:
        seen.append(options)
        raise TaskError("stopped by the test")

    monkeypatch.setattr(tune_module, "prepare", stop)
    result = runner.invoke(app, ["tune", *flags])
    assert "stopped by the test" in result.output, result.output
    assert len(seen) == 1
    return seen[0]


# Flags, and the options the command built from them field by field before it built them
# from its parsed options (the expected values are written out, with their types).
CASES: list[tuple[list[str], TuneOptions]] = [
    (["--task", "mock"], TuneOptions(task="mock", config=TuneConfig())),
    (
        ["--task", "mock", "--eval-mean", "--sigma", "2", "--bound", "3", "-n", "7", "-d", "30"],
        TuneOptions(
            task="mock",
            config=TuneConfig(n_tokens=7, dim=30, sigma=2.0, bound=3.0, eval_mean=True),
        ),
    ),
    (
        [
            *("--task", "sst2", "--data", "train.tsv", "--dev-data", "dev.tsv"),
            *("--column", "text=sentence", "--column", "label=y", "--label-map", "pos=1,neg=0"),
            *("--label-column", "y", "--format", "tsv", "-k", "4", "--dev-k", "2"),
            *("--data-seed", "9", "--seed", "5", "--budget", "120", "--popsize", "10"),
            *("--alpha", "0.5", "--loss", "hinge", "--eval-every", "20", "--patience", "3"),
            *("--patience-calls", "50", "--stop-ucb", "0.1", "--stop-window", "6"),
            *("--stop-min-calls", "40", "--no-eval-mean", "--projection", "uniform"),
            *("--sessions", "off", "--label-words", "0=bad,1=good", "--calibrate"),
            *("--search-label-words", "2", "--init", "vocab"),
        ],
        TuneOptions(
            task="sst2",
            data="train.tsv",
            dev_data="dev.tsv",
            columns=("text=sentence", "label=y"),
            label_map="pos=1,neg=0",
            label_column="y",
            data_format="tsv",
            k_shot=4,
            dev_k=2,
            data_seed=9,
            init="vocab",
            config=TuneConfig(
                seed=5,
                budget=120,
                popsize=10,
                alpha=0.5,
                loss="hinge",
                eval_every=20,
                patience=3,
                patience_calls=50,
                stop_ucb=0.1,
                stop_window=6,
                stop_min_calls=40,
                eval_mean=False,
                projection="uniform",
                sessions="off",
                label_words="0=bad,1=good",
                calibrate=True,
                search_label_words=2,
            ),
        ),
    ),
    (
        [
            *("--template", "{text} It was {mask} .", "--verbalizer", "0=bad,1=great"),
            *("--metric", "f1", "--text-column", "review"),
        ],
        TuneOptions(
            template="{text} It was {mask} .",
            verbalizer="0=bad,1=great",
            metric="f1",
            text_field="review",
        ),
    ),
]


@pytest.mark.parametrize(("flags", "expected"), CASES)
def test_tune_builds_the_options_field_by_field_would(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: TuneOptions
) -> None:
    built = _built_options(monkeypatch, flags)
    # repr, not ==: 2 == 2.0, but a float field must hold a float.
    assert repr(built) == repr(expected)


def test_fault_config_takes_the_mock_servers_options() -> None:
    """``bbt mock-server``'s fault flags: two differ in name from FaultConfig's fields."""
    params = {"latency_ms": 5.0, "rate_429": 0.25, "retry_after": 3, "seed": 1, "fault_seed": 7}
    faults = from_params(FaultConfig, params, retry_after_s=params["retry_after"], seed=7)
    assert faults == FaultConfig(latency_ms=5.0, rate_429=0.25, retry_after_s=3, seed=7)


def test_compare_builds_its_settings_from_its_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``bbt compare``: the settings its dry run gets, from the options as parsed."""
    import bbt.cli._compare as compare_module

    seen: list[CompareSettings] = []
    monkeypatch.setattr(compare_module, "_dry_run", lambda *args: seen.append(args[-1]))
    data = tmp_path / "rows.csv"
    data.write_text("text,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(20)))
    common = ["compare", "--mock", "--template", "{text} It was {mask} .", "--data", str(data)]
    common += ["--verbalizer", "0=bad,1=great", "--dry-run", "-q"]
    flags = ["--methods", "manual, bbt", "--seeds", "2", "-k", "4", "--budget", "30"]
    flags += ["--n-test", "9", "--icl-demos", "3", "-n", "7", "--curve-points", "0"]
    flags += ["--price-per-1k-tokens", "0.5", "--init", "prompt:abc"]
    for args, expected in (
        (common, CompareSettings(methods=COMPARE_DEFAULT_METHODS)),
        (
            [*common, *flags],
            CompareSettings(
                methods=["manual", "bbt"],
                seeds=2,
                k_shot=4,
                budget=30,
                n_test=9,
                price_per_1k_tokens=0.5,
                icl_demos=3,
                n_tokens=7,
                init="prompt:abc",
                curve_points=0,
            ),
        ),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert repr(seen.pop()) == repr(expected)


def test_mock_server_builds_its_faults_from_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bbt mock-server``: --retry-after and --fault-seed are FaultConfig's retry_after_s and
    seed; --seed (the model's) is not the faults' seed."""
    import bbt.server.app as server_app

    seen: list[Any] = []

    def stop(backend: Any, settings: Any, faults: Any, **kwargs: Any) -> Any:
        seen.append(faults)
        raise typer.Exit(0)

    monkeypatch.setattr(server_app, "create_app", stop)
    flags = ["--seed", "3", "--fault-seed", "7", "--retry-after", "4", "--rate-429", "0.25"]
    flags += ["--latency-ms", "5", "--timeout-s", "2", "--rate-drop", "0.1"]
    for args, expected in (
        ([], FaultConfig()),
        (
            flags,
            FaultConfig(
                seed=7, retry_after_s=4, rate_429=0.25, latency_ms=5.0, timeout_s=2.0, rate_drop=0.1
            ),
        ),
    ):
        result = runner.invoke(app, ["mock-server", "--port", "0", *args])
        assert result.exit_code == 0, result.output
        assert repr(seen.pop()) == repr(expected)


@dataclass(frozen=True)
class _Flags:
    colour: str = typer.Option("red", "--colour", help="A colour.")
    loud: bool = typer.Option(False, "--loud/--quiet", help="How loud.")


def test_grouped_options_stand_in_the_groups_place_and_reach_the_command_as_one() -> None:
    seen: list[Any] = []
    toy = typer.Typer(add_completion=False)

    @toy.command()
    @grouped(_Flags, "flags")
    def main(first: int = typer.Option(1), flags: _Flags = GROUP, last: int = 2) -> None:
        seen.append((first, flags, last))

    command = typer.main.get_command(toy)
    assert [p.name for p in command.params] == ["first", "colour", "loud", "last"]
    result = runner.invoke(toy, ["--colour", "blue", "--loud", "--last", "3"])
    assert result.exit_code == 0, result.output
    assert seen == [(1, _Flags(colour="blue", loud=True), 3)]
    assert "A colour." in runner.invoke(toy, ["--help"]).output


def test_eval_and_predict_declare_the_same_service_options() -> None:
    command = typer.main.get_command(app)
    ctx = typer.Context(command)
    shared = [f.name for f in dataclasses.fields(RunService)]

    def options(name: str) -> list[tuple[Any, ...]]:
        params = command.get_command(ctx, name).params  # type: ignore[attr-defined]
        return [(p.name, p.opts, p.secondary_opts, p.help) for p in params if p.name in shared]

    assert [o[0] for o in options("eval")] == shared
    assert options("eval") == options("predict")
