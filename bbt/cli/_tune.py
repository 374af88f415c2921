"""``bbt tune``, ``bbt eval`` and ``bbt predict``: Black-Box Tuning from the command line.

Which model answers, in order: ``--mock`` (the mock model in this process), then a URL from
``--base-url`` / ``BBT_BASE_URL`` / ``.env``, and with none of those the embedded default
server, started for the command and stopped after it. Every bbt error ends the command
with a one-line message and a non-zero status, never a traceback.

The pieces: :mod:`bbt.cli._options` (the options as data and the k-shot split),
:mod:`bbt.cli._service_select` (which service), :mod:`bbt.cli._progress` (the bar),
:mod:`bbt.cli._errors` (how a command fails), :mod:`bbt.cli._eval_predict`,
:mod:`bbt.cli._params` (the run's config built from the parsed options).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer

from bbt.cli._common import EXIT_ERROR
from bbt.cli._common import fail as _fail
from bbt.cli._errors import ARG_API_KEY, EXIT_INTERNAL, EXIT_INTERRUPTED, guard
from bbt.cli._errors import internal_error as _internal_error
from bbt.cli._errors import redact as _redact
from bbt.cli._eval_predict import eval_command, predict_command
from bbt.cli._options import (
    BUDGET_PANEL,
    MOCK_EXAMPLES,
    PROMPT_PANEL,
    RUN_PANEL,
    SERVICE_PANEL,
    TASK_PANEL,
    Prepared,
    default_out,
    option,
    prepare,
    resolve_task,
)
from bbt.cli._params import from_params
from bbt.cli._preflight import preflight
from bbt.cli._progress import Eta as _Eta
from bbt.cli._progress import Progress, sayer, summary
from bbt.cli._service_select import (
    DEFAULT_MOCK_HIDDEN,
    EMBEDDED_TIMEOUT,
    SERVER_ENV,
    ServerOptions,
    open_service,
    server_device_option,
    server_dtype_option,
    server_options,
    server_threads_option,
    service_for_run,
)
from bbt.cli._service_select import resolve_device as _resolve_device
from bbt.tuner.options import TuneOptions

# The names tests and callers of bbt before the split reach through this module.
_guard = guard
_service = open_service
_default_out = default_out
__all__ = [
    "DEFAULT_MOCK_HIDDEN",
    "EMBEDDED_TIMEOUT",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "MOCK_EXAMPLES",
    "SERVER_ENV",
    "ServerOptions",
    "_Eta",
    "_fail",
    "_internal_error",
    "_redact",
    "_resolve_device",
    "eval_command",
    "predict_command",
    "register",
    "tune_command",
]


def tune_command(
    ctx: typer.Context,
    task: str | None = option("task", "--task", "-t", panel=TASK_PANEL),
    task_file: Path | None = option("task_file", "--task-file", panel=TASK_PANEL),
    template: str | None = option("template", panel=TASK_PANEL),
    verbalizer: str | None = option("verbalizer", panel=TASK_PANEL),
    metric: str = option("metric", panel=TASK_PANEL),
    data: Path | None = option("data", "--data", panel=TASK_PANEL),
    dev_data: Path | None = option("dev_data", panel=TASK_PANEL),
    column: list[str] = option("columns", "--column", default=[], panel=TASK_PANEL),
    text_field: str | None = option(
        "text_field", "--text-field", "--text-column", panel=TASK_PANEL
    ),
    text_pair_column: str | None = option("text_pair_column", panel=TASK_PANEL),
    label_map: str | None = option("label_map", panel=TASK_PANEL),
    label_column: str | None = option("label_column", panel=TASK_PANEL),
    data_format: str | None = option("data_format", "--format", panel=TASK_PANEL),
    k_shot: int = option("k_shot", "--k-shot", "-k", panel=TASK_PANEL),
    dev_k: int | None = option("dev_k", panel=TASK_PANEL),
    seed: int = option("seed", panel=BUDGET_PANEL),
    data_seed: int | None = option("data_seed", panel=TASK_PANEL),
    budget: int = option("budget", panel=BUDGET_PANEL),
    n_tokens: int = option("n_tokens", "--n-tokens", "-n", panel=PROMPT_PANEL),
    dim: int = option("dim", "--dim", "-d", panel=PROMPT_PANEL),
    popsize: int = option("popsize", panel=BUDGET_PANEL),
    sigma: float = option("sigma", panel=BUDGET_PANEL),
    alpha: float = option("alpha", panel=PROMPT_PANEL),
    bound: float | None = option("bound", panel=BUDGET_PANEL),
    loss: str = option("loss", panel=BUDGET_PANEL),
    eval_every: int = option("eval_every", panel=BUDGET_PANEL),
    patience: int | None = option("patience", panel=BUDGET_PANEL),
    patience_calls: int | None = option("patience_calls", panel=BUDGET_PANEL),
    stop_ucb: float | None = option("stop_ucb", panel=BUDGET_PANEL),
    stop_window: int = option("stop_window", panel=BUDGET_PANEL),
    stop_min_calls: int = option("stop_min_calls", panel=BUDGET_PANEL),
    eval_mean: bool | None = option(
        "eval_mean",
        "--eval-mean/--no-eval-mean",
        default=None,  # unset: TuneConfig's own default
        show_default=False,
        panel=BUDGET_PANEL,
    ),
    method: str = option("method", panel=BUDGET_PANEL),
    layer_generations: int = option("layer_generations", panel=BUDGET_PANEL),
    optimizer: str = option("optimizer", panel=BUDGET_PANEL),
    projection: str = option("projection", panel=PROMPT_PANEL),
    sessions: str = option("sessions", "--sessions", panel=SERVICE_PANEL),
    label_words: str | None = option("label_words", panel=PROMPT_PANEL),
    calibrate: bool = option("calibrate", "--calibrate/--no-calibrate", panel=PROMPT_PANEL),
    search_label_words: int = option("search_label_words", panel=PROMPT_PANEL),
    init: str = option("init", panel=PROMPT_PANEL),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run directory (default runs/TASK-TIME-RANDOM).",
        rich_help_panel=RUN_PANEL,
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue the run in this directory (its manifest fixes task, data and settings).",
        rich_help_panel=RUN_PANEL,
    ),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="With --resume: load a checkpoint not written under this user's key (an older "
        "bbt's is a pickle, which can run code: only for run directories you trust).",
        rich_help_panel=RUN_PANEL,
    ),
    base_url: str | None = typer.Option(
        None, help="Service URL (or BBT_BASE_URL / .env).", rich_help_panel=SERVICE_PANEL
    ),
    api_key: str | None = typer.Option(
        None,
        help="API key (or BBT_API_KEY / .env); never stored.",
        rich_help_panel=SERVICE_PANEL,
    ),
    model: str | None = typer.Option(
        None, help="Model id (default: the first served).", rich_help_panel=SERVICE_PANEL
    ),
    mock: bool = typer.Option(
        False,
        "--mock",
        help="Use the mock model in this process (offline).",
        rich_help_panel=SERVICE_PANEL,
    ),
    mock_hidden_size: int = typer.Option(
        DEFAULT_MOCK_HIDDEN, help="Hidden size of --mock.", rich_help_panel=SERVICE_PANEL
    ),
    server_dtype: str | None = server_dtype_option(),
    server_threads: int | None = server_threads_option(),
    server_device: str | None = server_device_option(),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print what the run would cost (calls, requests, bytes, time from one probe "
        "request) and exit: no run directory, no tuning.",
        rich_help_panel=RUN_PANEL,
    ),
    plot: bool = typer.Option(
        True, "--plot/--no-plot", help="Write plot.png.", rich_help_panel=RUN_PANEL
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar.", rich_help_panel=RUN_PANEL
    ),
) -> None:
    """Tune a soft prompt with Black-Box Tuning (Sun et al., ICML 2022)."""
    say = sayer(quiet)
    ARG_API_KEY.set(api_key)
    server = server_options(ctx, server_dtype, server_threads, server_device)

    if trust_checkpoint and resume is None:
        _fail("--trust-checkpoint goes with --resume DIR")
    if resume is not None and dry_run:
        _fail("--dry-run does not apply to --resume")
    if resume is not None:
        # Before the service and the progress bar, and with no "continue with --resume" hint:
        # resuming is what was refused.
        _guard(lambda: _check_checkpoint(resume, trust_checkpoint))
        _guard(
            lambda: _resume(
                resume,
                mock or None,
                base_url,
                api_key,
                model,
                plot,
                quiet,
                say,
                trust_checkpoint,
                server,
            ),
            resume,
        )
        return

    def build() -> Prepared:
        from bbt.tuner import TuneConfig

        # The task first: a wrong task is named before a wrong hyper-parameter.
        t = resolve_task(task, task_file, template, verbalizer, metric)
        # The options named as TuneConfig's / TuneOptions' fields travel as parsed; an unset
        # --eval-mean keeps TuneConfig's own default.
        config = from_params(TuneConfig, ctx.params, unset=("eval_mean",))
        options = from_params(
            TuneOptions,
            ctx.params,
            task_file=None if task_file is None else str(task_file),
            data=None if data is None else str(data),
            dev_data=None if dev_data is None else str(dev_data),
            columns=tuple(column),
            config=config,
        )
        prepared = prepare(options, t)
        preflight(prepared)  # what can fail without the service fails before any output
        return prepared

    run = _guard(build)

    def service() -> Any:
        """The service the run (or the dry run) talks to, as a context manager."""
        return open_service(
            mock=mock,
            mock_hidden_size=mock_hidden_size,
            base_url=base_url,
            api_key=api_key,
            model=model,
            say=say,
            server=server,
        )

    if dry_run:
        _guard(lambda: _dry_run(run, service()))
        return
    run_dir = out or default_out(run.task.name)
    _guard(lambda: _tune(run, service(), run_dir, plot, quiet, say), run_dir)


def _tune(
    run: Prepared, service: Any, run_dir: Path, plot: bool, quiet: bool, say: Callable[[str], None]
) -> None:
    from bbt.tuner import tune

    cfg, t = run.options.config, run.task
    with ExitStack() as stack:
        svc, svc_info = stack.enter_context(service)
        # The bar counts to what the run can spend: whole generations only.
        total = cfg.budget // cfg.population * cfg.population or cfg.budget
        bar = stack.enter_context(Progress(total, t.metric, quiet))
        say(f"tuning {t.name} on {len(run.train)} train / {len(run.dev)} dev examples -> {run_dir}")
        result = tune(
            svc,
            t,
            run.train,
            run.dev,
            run.options,
            initial_prompt=run.initial_prompt,
            run_dir=run_dir,
            callbacks=[bar],
            base_url=svc_info.get("base_url"),
            data_info=run.data_info,
            service_info=svc_info,
            plot=plot,
        )
    summary(result, say)


def _dry_run(run: Prepared, service: Any) -> None:
    """Build the run as ``tune`` would, plan it, time one probe request, print the plan."""
    from bbt.cli._dry_run import describe, make_plan
    from bbt.tuner.methods import build_tuner

    t, cfg = run.task, run.options.config
    started = time.perf_counter()
    with service as (svc, svc_info):
        before = svc.usage.copy()
        tuner = build_tuner(svc, t, run.train, run.dev, cfg, initial_prompt=run.initial_prompt)
        setup = svc.usage - before
        plan = make_plan(tuner, svc, svc_info["kind"], setup, time.perf_counter() - started)
        tuner.close()  # frees a projection session the tuner opened
    line = f"tune {t.name} on {len(run.train)} train / {len(run.dev)} dev examples"
    for text in describe(plan, line):
        typer.echo(text)


def _check_checkpoint(run_dir: Path, trust_checkpoint: bool) -> None:
    """Refuse a foreign, edited or damaged checkpoint now, as resume would once the service
    is open and the tuner built. A completed run's checkpoint is never read; a manifest that
    cannot be read, or one from before run ids, is left to resume to judge."""
    from bbt.errors import BBTError
    from bbt.tuner import read_manifest
    from bbt.tuner.run import load_checkpoint

    if trust_checkpoint:  # nothing to refuse, and a trusted legacy pickle is read only once
        return
    try:
        manifest = read_manifest(run_dir)
    except BBTError:
        return
    if manifest.get("status") != "completed" and "run_id" in manifest:
        load_checkpoint(run_dir, str(manifest["run_id"]))


def _resume(
    run_dir: Path,
    mock: bool | None,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    plot: bool,
    quiet: bool,
    say: Callable[[str], None],
    trust_checkpoint: bool = False,
    server: ServerOptions | None = None,
) -> None:
    from bbt.tuner import read_manifest, resume

    manifest = read_manifest(run_dir)
    with ExitStack() as stack:
        svc, _ = stack.enter_context(
            service_for_run(run_dir, mock, base_url, api_key, model, say, server)
        )
        bar = stack.enter_context(
            Progress(int(manifest["config"]["budget"]), manifest["task"]["metric"], quiet)
        )
        say(f"resuming {run_dir}")
        if trust_checkpoint:
            say(f"warning: --trust-checkpoint: loading {run_dir}'s checkpoint even if foreign")
        result = resume(run_dir, svc, callbacks=[bar], plot=plot, trust_checkpoint=trust_checkpoint)
    summary(result, say)


def register(app: typer.Typer) -> None:
    """Add ``tune``, ``eval`` and ``predict`` to ``app``."""
    app.command("tune")(tune_command)
    app.command("eval")(eval_command)
    app.command("predict")(predict_command)
