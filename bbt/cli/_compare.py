"""``bbt compare``: every method of :mod:`bbt.comparison` on the user's task and service,
with held-out metric and cost per method; ``--dry-run`` prices it before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bbt.cli._errors import guard
from bbt.cli._options import read_examples, resolve_task
from bbt.cli._params import from_params
from bbt.cli._progress import sayer
from bbt.cli._service_select import DEFAULT_MOCK_HIDDEN, open_service
from bbt.errors import ConfigurationError

PANEL = "Comparison"


def compare_command(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", "-t", help="A preset task."),
    task_file: Path | None = typer.Option(None, "--task-file", help="A task TOML file."),
    template: str | None = typer.Option(None, "--template", help="A template with {mask}."),
    verbalizer: str | None = typer.Option(None, "--verbalizer", help="e.g. 0=bad,1=great"),
    metric: str = typer.Option("accuracy", "--metric", help="accuracy or f1 (custom task)."),
    data: Path = typer.Option(
        ..., "--data", help="Labelled rows (TSV, CSV, JSONL, Parquet, save_to_disk dir)."
    ),
    test: Path | None = typer.Option(
        None, "--test", help="Held-out rows (default: --n-test rows of --data kept out)."
    ),
    column: list[str] = typer.Option([], "--column", help="FIELD=COLUMN, repeatable."),
    label_column: str | None = typer.Option(None, "--label-column"),
    methods: str = typer.Option(
        "manual,manual-select,icl,feature-lr,feature-mlp,bbt,bbtv2",
        "--methods",
        help="Comma-separated method names (see --list-methods).",
        rich_help_panel=PANEL,
    ),
    seeds: int = typer.Option(3, "--seeds", min=1, rich_help_panel=PANEL),
    budget: int = typer.Option(8000, "--budget", min=1, rich_help_panel=PANEL),
    k_shot: int = typer.Option(16, "--k-shot", "-k", min=1, rich_help_panel=PANEL),
    n_test: int = typer.Option(200, "--n-test", min=1, rich_help_panel=PANEL),
    icl_demos: int = typer.Option(8, "--icl-demos", min=0, rich_help_panel=PANEL),
    n_tokens: int = typer.Option(50, "--n-tokens", "-n", min=1, rich_help_panel=PANEL),
    curve_points: int = typer.Option(
        4,
        "--curve-points",
        min=0,
        help="Held-out checkpoints of each tuned method's learning curve (0: none); their "
        "calls are counted apart from tuning.",
        rich_help_panel=PANEL,
    ),
    price: float | None = typer.Option(
        None, "--price-per-1k-tokens", min=0.0, help="Money per 1,000 tokens, for the cost column."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cost, run nothing."),
    list_methods: bool = typer.Option(False, "--list-methods", help="List methods and exit."),
    no_plot: bool = typer.Option(False, "--no-plot"),
    mock: bool = typer.Option(False, "--mock", help="The mock model in this process."),
    base_url: str | None = typer.Option(None, "--base-url", envvar="BBT_BASE_URL"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="BBT_API_KEY"),
    model: str | None = typer.Option(None, "--model"),
    init: str | None = typer.Option(
        None,
        "--init",
        help="The bbt-pretrained row's start: run:DIR, a pre-trained or tuned run on the "
        "same model (bbt pretrain writes one), or prompt:ID, a prompt in the service's registry.",
        rich_help_panel=PANEL,
    ),
    local_model: Path | None = typer.Option(
        None,
        "--local-model",
        help="The served model's directory on this machine, for the white-box rows "
        "(the embedded default needs none).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Is tuning worth it on my task, and what does it cost?

    Every method on the same k-shot samples, scored on the same held-out rows, with calls,
    tokens and money."""

    def body() -> None:
        from bbt.comparison import CompareSettings, available, get_method

        if list_methods:
            for name in available():
                typer.echo(name)
            return
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if not names:
            raise ConfigurationError("--methods names no method")
        for name in names:
            get_method(name)
        t = resolve_task(task, task_file, template, verbalizer, metric)
        rows = read_examples(t, data, column, label_column, None)
        held = read_examples(t, test, column, label_column, None) if test else None
        # The options named as CompareSettings' fields travel as parsed; local_model is
        # settled below, once the service is known.
        settings = from_params(
            CompareSettings, ctx.params, methods=names, price_per_1k_tokens=price, local_model=None
        )
        say = sayer(quiet)
        service = open_service(
            mock=mock,
            mock_hidden_size=DEFAULT_MOCK_HIDDEN,
            base_url=base_url,
            api_key=api_key,
            model=model,
            say=say,
        )
        with service as (svc, info):
            if local_model is not None:
                if not local_model.is_dir():
                    raise ConfigurationError(f"--local-model {local_model} is not a directory")
                settings.local_model = str(local_model)
            elif info.get("kind") == "embedded":
                settings.local_model = "embedded"
            if dry_run:
                _dry_run(svc, t, rows, held, settings)
                return
            _run(svc, t, rows, held, settings, out, not no_plot, say)

    guard(body)


def _dry_run(svc: Any, t: Any, rows: Any, held: Any, settings: Any) -> None:
    from bbt.comparison.plan import describe, mean_tokens, plan_method

    n_test = len(held[: settings.n_test]) if held is not None else settings.n_test
    tok = mean_tokens(svc, t, rows)
    served = t.for_kind(svc.model_info().kind)  # the templates manual-select/-ppl will try
    plans = [plan_method(m, settings, served, tok, n_test) for m in settings.methods]
    for line in describe(plans, settings, tok):
        typer.echo(line)


def _run(
    svc: Any, t: Any, rows: Any, held: Any, settings: Any, out: Path | None, plot: bool, say: Any
) -> None:
    import time

    from bbt.comparison import compare, report

    out_dir = out if out is not None else Path("runs") / f"compare-{t.name}-{int(time.time())}"

    def progress(run: Any) -> None:
        value = "failed" if run.metric is None else f"{100 * run.metric:.1f}%"
        say(f"seed {run.seed} {run.method}: {value}, {run.fit.calls} calls")

    def save(partial: Any) -> None:
        # After every method run: a crash or Ctrl-C later keeps the runs already paid for.
        report.write(partial, out_dir, with_plot=False)

    comp = compare(svc, t, rows, settings, test=held, on_run=progress, on_progress=save)
    paths = report.write(comp, out_dir, with_plot=plot)
    report.print_table(comp)
    say("wrote " + ", ".join(str(p) for p in paths))


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
