"""``bbt tune``, ``bbt eval`` and ``bbt predict``: Black-Box Tuning from the command line.

Which model answers, in order: ``--mock`` (the mock model in this process), then a URL from
``--base-url`` / ``BBT_BASE_URL`` / ``.env``, and with none of those the embedded default
server, started for the command and stopped after it. Every bbt error ends the command
with a one-line message and a non-zero status, never a traceback.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from bbt.errors import BBTError, ConfigurationError, TaskError, UnsafeRunDirError

T = TypeVar("T")

EXIT_ERROR = 2
EXIT_INTERNAL = 1  # a bug in bbt (or a dependency), not a bad input
EXIT_INTERRUPTED = 130
MOCK_EXAMPLES = 400  # examples drawn from the mock's task when it gets no --data
DEFAULT_MOCK_HIDDEN = 64
#: Read timeout (s) for the embedded server unless BBT_TIMEOUT or .env sets one.
EMBEDDED_TIMEOUT = 3600.0

# No `import click` anywhere: typer >= 0.2x vendors its own copy of click and no longer depends
# on the click package, which a core install therefore lacks (and where both are installed,
# click's classes and context stack are not the ones typer uses). What the guard lets through
# comes from typer: Exit, Abort, and click's usage errors, found as typer.BadParameter's base.
_CLI_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)
#: The command's --api-key, for redaction; each command sets it (None when not given).
_ARG_API_KEY: ContextVar[str | None] = ContextVar("bbt_cli_api_key", default=None)


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    _err(message)
    raise typer.Exit(code)


def _secrets() -> list[str]:
    """Every API key this command may hold (argument, environment, .env), for redaction."""
    found = [_ARG_API_KEY.get() or ""]
    found.append(os.environ.get("BBT_API_KEY", ""))
    try:
        from bbt.client import ClientSettings

        key = ClientSettings().api_key
        if key is not None:
            found.append(key.get_secret_value())
    except Exception:  # redaction must never fail the error path
        pass
    # Longest first, so a key that contains another is replaced whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


def _redact(text: str) -> str:
    from bbt.client.redaction import redact_url

    for key in _secrets():
        text = text.replace(key, "***")
    return redact_url(text)  # and any user:password@ of a URL


def _checkpointed(run_dir: Path | None) -> bool:
    from bbt.tuner.run import CHECKPOINT

    return run_dir is not None and (run_dir / CHECKPOINT).exists()


def _resume_line(run_dir: Path) -> str:
    return f"the run is checkpointed; continue with: bbt tune --resume {run_dir}"


def _internal_error(exc: Exception, run_dir: Path | None) -> NoReturn:
    """The last resort: one redacted line (no traceback on the terminal), the full traceback
    in the run directory when there is one, and the resume hint when the run can go on."""
    message = _redact(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])
    if run_dir is not None and run_dir.is_dir():
        from bbt.tuner._rundir import open_file
        from bbt.tuner.run import ERROR_LOG

        log_path = run_dir / ERROR_LOG
        try:
            text = "".join(traceback.format_exception(exc))
            entry = f"--- {datetime.now().isoformat(timespec='seconds')}\n{_redact(text)}"
            # Appended in place, so never through a link (or a second hard link) that the
            # run directory might hold: that would write the traceback into another file.
            with open_file(log_path, "ab") as fh:
                fh.write(entry.encode("utf-8"))
            message += f" (traceback in {log_path})"
        except (OSError, BBTError):
            pass  # the one line still goes out; the traceback has nowhere safe to go
    if _checkpointed(run_dir):
        assert run_dir is not None
        message += "\n" + _resume_line(run_dir)
    _fail(message, EXIT_INTERNAL)


def _guard(fn: Callable[[], T], resume_hint: Path | None = None) -> T:
    """Run ``fn``, turning bbt errors, Ctrl-C and, as a last resort, any other exception
    into one-line messages and exit codes: no traceback ever reaches the user."""
    try:
        return fn()
    except _CLI_EXITS:
        raise  # typer's own ways out (Exit is a RuntimeError): not failures
    except BBTError as exc:
        # No resume hint for a directory refused as unsafe: resuming it is what must not be.
        if _checkpointed(resume_hint) and not isinstance(exc, UnsafeRunDirError):
            # A run that got going keeps its checkpoint: a failure mid-way costs nothing done.
            assert resume_hint is not None
            _fail(f"{_redact(str(exc))}\n{_resume_line(resume_hint)}")
        _fail(_redact(str(exc)))
    except Exception as exc:  # the last resort: see the docstring
        _internal_error(exc, resume_hint)
    except KeyboardInterrupt:
        if resume_hint is not None:
            _err(
                "interrupted; the last finished generation is checkpointed. "
                f"Continue with: bbt tune --resume {resume_hint}"
            )
        else:
            _err("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


# --------------------------------------------------------------------------- service

#: Environment variables for the embedded server's options, read when no flag is given.
SERVER_ENV = {
    "dtype": "BBT_EMBEDDED_DTYPE",
    "num_threads": "BBT_EMBEDDED_THREADS",
    "device": "BBT_EMBEDDED_DEVICE",
}
#: Command parameter -> its flag, in the order messages name them.
_SERVER_FLAGS = {
    "server_dtype": "--server-dtype",
    "server_threads": "--server-threads",
    "server_device": "--server-device",
}


@dataclass(frozen=True)
class ServerOptions:
    """How to run the embedded server, when the command starts one.

    ``given`` names the flags typed on the command line: those are refused when another
    service answers (a URL, ``--mock``), since they could not have any effect. Values from
    ``BBT_EMBEDDED_*`` are meant for whenever the embedded server starts, and are ignored
    otherwise.
    """

    dtype: str | None = None
    num_threads: int | None = None
    device: str | None = None
    given: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> ServerOptions:
        threads = os.environ.get(SERVER_ENV["num_threads"]) or None
        try:
            num_threads = None if threads is None else int(threads)
        except ValueError:
            raise ConfigurationError(
                f"{SERVER_ENV['num_threads']} must be a whole number, not {threads!r}"
            ) from None
        return cls(
            dtype=os.environ.get(SERVER_ENV["dtype"]) or None,
            num_threads=num_threads,
            device=os.environ.get(SERVER_ENV["device"]) or None,
        )

    def refuse(self, other: str) -> None:
        """Raise when flags for the embedded server were given but ``other`` answers."""
        if self.given:
            flags = " and ".join(self.given)
            verb = "applies" if len(self.given) == 1 else "apply"
            raise ConfigurationError(
                f"{flags} only {verb} to the embedded server, which this command does not "
                f"start: the {other} answers, with its own settings"
            )

    def backend_options(self) -> dict[str, Any]:
        """Keyword arguments for ``embedded_server``: only what was set, so the embedded
        defaults decide the rest; the backend validates the values."""
        options: dict[str, Any] = {}
        if self.dtype is not None:
            options["dtype"] = self.dtype
        if self.num_threads is not None:
            options["num_threads"] = self.num_threads
        if self.device is not None:
            options["device"] = _resolve_device(self.device)
        return options


def _resolve_device(device: str) -> str:
    """``auto``: CUDA where torch sees a device, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _server_options(
    ctx: typer.Context, dtype: str | None, num_threads: int | None, device: str | None
) -> ServerOptions:
    def typed(name: str) -> bool:
        # By name: typer may ship its own copy of click's ParameterSource enum.
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    given = tuple(flag for name, flag in _SERVER_FLAGS.items() if typed(name))
    return ServerOptions(dtype=dtype, num_threads=num_threads, device=device, given=given)


@contextmanager
def _service(
    *,
    mock: bool,
    mock_hidden_size: int,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    say: Callable[[str], None],
    server: ServerOptions | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The service to use and how the manifest should describe it (no credentials).

    ``server`` (default: the ``BBT_EMBEDDED_*`` variables) configures the embedded server.
    """
    server = server if server is not None else ServerOptions.from_env()
    if mock:
        server.refuse("in-process mock")
        from bbt.client import LocalClient
        from bbt.server.mock import MockBackend

        yield (
            LocalClient(MockBackend(hidden_size=mock_hidden_size)),
            {"kind": "mock", "hidden_size": mock_hidden_size},
        )
        return
    from bbt.client import Client, ClientSettings

    settings = ClientSettings(base_url=base_url, api_key=api_key, model=model)
    if settings.base_url and settings.base_url.lower().startswith("vllm+"):
        server.refuse("vLLM server at the configured URL")
        from bbt.vllm import service_from_settings

        with service_from_settings(settings) as svc:
            yield svc, {"kind": "vllm", "base_url": settings.base_url}
        return
    if settings.base_url:
        server.refuse("service at the configured URL (--base-url, BBT_BASE_URL or .env)")
        with Client.from_settings(settings) as client:
            yield client, {"kind": "http", "base_url": settings.base_url}
        return
    try:
        from bbt.server.embedded import embedded_server
    except ImportError as exc:
        raise ConfigurationError(
            "no service URL configured (--base-url or BBT_BASE_URL) and the embedded default "
            f"server is not available ({exc}); install it with: pip install 'bbt[serve]'"
        ) from None
    say("no service URL configured: starting the embedded default server (stopped at the end)")
    # The embedded server has no keys and listens on loopback: a BBT_API_KEY meant for a
    # remote service has no business travelling, even to 127.0.0.1.
    update: dict[str, Any] = {"api_key": None}
    if "timeout" not in settings.model_fields_set:
        # The embedded model shares this machine's CPU: a population request can outlast a
        # network timeout, and a retry would only queue the same work again behind it.
        update["timeout"] = EMBEDDED_TIMEOUT
    with embedded_server(say=say, **server.backend_options()) as url:
        update["base_url"] = url
        with Client.from_settings(settings.model_copy(update=update)) as client:
            yield client, {"kind": "embedded", "base_url": url}
    say("embedded server stopped")


def _service_for_run(
    run_dir: Path,
    mock: bool | None,
    base_url: str | None,
    api_key: str | None,
    model: str | None,
    say: Callable[[str], None],
    server: ServerOptions | None = None,
) -> Any:
    """A run made against the in-process mock is resumed/used against it again."""
    from bbt.tuner import read_manifest

    manifest = read_manifest(run_dir)
    svc = manifest.get("service", {})
    use_mock = mock if mock is not None else (svc.get("kind") == "mock" and not base_url)
    hidden = int(svc.get("hidden_size") or manifest["model"]["hidden_size"])
    return _service(
        mock=use_mock,
        mock_hidden_size=hidden,
        base_url=base_url,
        api_key=api_key,
        model=model,
        say=say,
        server=server,
    )


# --------------------------------------------------------------------------- progress

#: The console of the progress bar while one is on screen: messages must go through it, or
#: the bar's next refresh draws over them (or they land glued to the bar's line).
_live: list[Any] = []


def _console() -> Any:
    """Where the bar draws: stderr, with everything else the command says, so stdout stays
    the command's result (JSON lines, a dry run's plan)."""
    from rich.console import Console

    return Console(stderr=True)


def _clock(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class _Eta:
    """Time left from the pace of the generations so far.

    Records carry the run's cumulative wall time. After the first record the pace is taken
    from there on, so the start-up before it (imports, discovery, p0's dev score) does not
    inflate the estimate; on the first record alone, the cumulative pace is all there is
    (after a resume it covers the earlier sessions too).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._first: tuple[int, float] | None = None

    def __call__(self, calls: int, wall_time: float) -> str:
        if self._first is None:
            self._first = (calls, wall_time)
            spent_calls, spent_s = calls, wall_time
        else:
            spent_calls, spent_s = calls - self._first[0], wall_time - self._first[1]
        if spent_calls <= 0 or spent_s <= 0:
            return "-:--:--"
        return _clock(max(self.total - calls, 0) * spent_s / spent_calls)


class _Progress:
    """A rich progress bar: API calls spent, current loss, best dev metric, time, ETA.

    The ETA (see :class:`_Eta`) shows from the first generation on, so a user knows at once
    whether to wait.
    """

    def __init__(self, budget: int, metric: str, quiet: bool) -> None:
        self.quiet = quiet
        self.metric = metric
        self._bar: Any = None
        self._task: Any = None
        self.budget = budget
        self._eta = _Eta(budget)

    def __enter__(self) -> _Progress:
        if self.quiet:
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]tuning[/bold]"),
            BarColumn(bar_width=None),
            TextColumn("{task.completed}/{task.total} calls"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("dev {task.fields[metric]} {task.fields[dev]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=_console(),
            transient=False,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task(
            "tune", total=self.budget, loss="-", dev="-", metric=self.metric, eta="-:--:--"
        )
        _live.append(self._bar.console)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            _live.remove(self._bar.console)
            self._bar.__exit__(None, None, None)

    def __call__(self, rec: Any) -> None:
        if self._bar is None:
            return
        dev = "-" if rec.best_dev_metric is None else f"{rec.best_dev_metric:.4f}"
        self._bar.update(
            self._task,
            completed=rec.calls,
            loss=f"{rec.loss_min:.4f}",
            dev=dev,
            eta=self._eta(rec.calls, rec.wall_time),
        )


# --------------------------------------------------------------------------- helpers


def _task(
    task: str | None,
    task_file: Path | None,
    template: str | None,
    verbalizer: str | None,
    metric: str,
) -> Any:
    from bbt.tuner import custom_task, get_preset, load_task_file

    given = sum(x is not None for x in (task, task_file, template))
    if given != 1:
        raise TaskError(
            "name the task once: --task PRESET, --task-file FILE, or --template with --verbalizer"
        )
    if task is not None:
        return get_preset(task)
    if task_file is not None:
        return load_task_file(task_file)
    if verbalizer is None:
        raise TaskError("--template needs --verbalizer, e.g. --verbalizer 0=bad,1=great")
    if metric not in ("accuracy", "f1"):
        raise TaskError(f"--metric must be accuracy or f1, not {metric!r}")
    return custom_task(str(template), verbalizer, metric=metric)  # type: ignore[arg-type]


def _examples(
    task: Any,
    path: Path,
    columns: list[str],
    label_column: str | None,
    fmt: str | None,
    labels: bool = True,
) -> Any:
    from bbt.tuner import load_examples, parse_columns

    return load_examples(
        path,
        task,
        columns=parse_columns(columns),
        label_column=label_column,
        fmt=fmt,
        require_labels=labels,
    )


def _default_out(task_name: str) -> Path:
    """``runs/TASK-YYYYmmdd-HHMMSS-RANDOM``: readable, sorted by time, and with 32 random bits
    so that runs started in the same second (seeds in parallel) never share a directory.
    (Should two ever collide, the run directory's exclusive creation refuses the second.)"""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{task_name}-{stamp}-{secrets.token_hex(4)}"


def _summary(result: Any, say: Callable[[str], None]) -> None:
    m = result.metric
    init = result.initial_dev_metric
    say(
        f"done: dev {m} {result.dev_metric:.4f}"
        + (f" (p0: {init:.4f})" if init is not None else "")
        + f", selected at {result.selected_at_calls} of {result.calls} calls "
        f"({result.dev_calls} dev), stop: {result.stop_reason}"
    )
    if result.run_dir is not None:
        say(f"run directory: {result.run_dir}")


# --------------------------------------------------------------------------- commands

_DTYPE_HELP = (
    "Embedded server only: compute dtype, auto | float32 | bfloat16 | float16 (CUDA) "
    f"(or {SERVER_ENV['dtype']}; default: the embedded default)."
)
_THREADS_HELP = f"Embedded server only: torch threads (or {SERVER_ENV['num_threads']})."
_DEVICE_HELP = (
    f"Embedded server only: auto | cpu | cuda (or {SERVER_ENV['device']}); auto picks CUDA "
    "when torch sees a GPU."
)


def _server_dtype_option() -> Any:
    return typer.Option(None, "--server-dtype", envvar=SERVER_ENV["dtype"], help=_DTYPE_HELP)


def _server_threads_option() -> Any:
    return typer.Option(
        None, "--server-threads", envvar=SERVER_ENV["num_threads"], help=_THREADS_HELP
    )


def _server_device_option() -> Any:
    return typer.Option(None, "--server-device", envvar=SERVER_ENV["device"], help=_DEVICE_HELP)


def tune_command(
    ctx: typer.Context,
    task: str | None = typer.Option(
        None, "--task", "-t", help="Preset: sst2, yelp, agnews, dbpedia, mrpc, snli, rte, mock."
    ),
    task_file: Path | None = typer.Option(None, "--task-file", help="Task from a JSON/TOML file."),
    template: str | None = typer.Option(
        None, help="Custom template, e.g. '{text} It was {mask} .'"
    ),
    verbalizer: str | None = typer.Option(None, help="Custom verbalizer, e.g. 0=bad,1=great."),
    metric: str = typer.Option("accuracy", help="Custom task's metric: accuracy or f1."),
    data: Path | None = typer.Option(None, "--data", help="Labelled examples (TSV, CSV, JSONL)."),
    dev_data: Path | None = typer.Option(None, help="Draw the dev set from this file instead."),
    column: list[str] = typer.Option([], "--column", help="FIELD=COLUMN mapping (repeatable)."),
    text_field: str | None = typer.Option(
        None, "--text-field", help="Column holding the text of a one-field task."
    ),
    label_column: str | None = typer.Option(None, help="Label column (default: label)."),
    data_format: str | None = typer.Option(None, "--format", help="tsv, csv or jsonl."),
    k_shot: int = typer.Option(16, "--k-shot", "-k", help="Training examples per class."),
    dev_k: int | None = typer.Option(None, help="Dev examples per class (default: k)."),
    seed: int = typer.Option(42, help="Seed of CMA-ES and the projection."),
    data_seed: int | None = typer.Option(None, help="Seed of k-shot sampling (default: --seed)."),
    budget: int = typer.Option(8000, help="API calls (one candidate on the training set)."),
    n_tokens: int = typer.Option(50, "--n-tokens", "-n", help="Soft prompt length n."),
    dim: int = typer.Option(500, "--dim", "-d", help="Intrinsic dimension d."),
    popsize: int = typer.Option(20, help="CMA-ES population size."),
    sigma: float = typer.Option(1.0, help="CMA-ES initial step size."),
    alpha: float = typer.Option(1.0, help="Projection scale alpha."),
    bound: float | None = typer.Option(None, help="Box bound on z (none by default)."),
    loss: str = typer.Option("ce", help="ce, hinge, neg_accuracy or neg_f1."),
    eval_every: int = typer.Option(100, help="Score the best candidate on dev every N calls."),
    patience: int | None = typer.Option(None, help="Stop after N dev evaluations without gain."),
    eval_mean: bool | None = typer.Option(
        None,
        "--eval-mean/--no-eval-mean",
        help="Also score the CMA-ES mean on dev at each check (one more dev call).",
        show_default=False,
    ),
    method: str = typer.Option(
        "bbt",
        help="bbt (a prompt at the input) or bbtv2 (a prompt at every layer, layers tuned in "
        "turn; needs a server with deep prompts, e.g. bbt's own).",
    ),
    layer_generations: int = typer.Option(
        1, help="bbtv2: CMA-ES generations each layer runs per turn."
    ),
    projection: str = typer.Option("normal", help="Projection distribution: normal or uniform."),
    sessions: str = typer.Option(
        "auto",
        "--sessions",
        help="auto: send z to a projection session when the server offers them, else full "
        "prompts; on: require a session; off: always full prompts. Same results.",
    ),
    init: str = typer.Option("zeros", help="p0: zeros, vocab, vocab:START, text:WORDS, file:PATH."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory (default runs/TASK-TIME-RANDOM)."
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue the run in this directory (its manifest fixes task, data and settings).",
    ),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="With --resume: load a checkpoint not written under this user's key (a pickle: "
        "it can run code; only for run directories you trust).",
    ),
    base_url: str | None = typer.Option(None, help="Service URL (or BBT_BASE_URL / .env)."),
    api_key: str | None = typer.Option(None, help="API key (or BBT_API_KEY / .env); never stored."),
    model: str | None = typer.Option(None, help="Model id (default: the first served)."),
    mock: bool = typer.Option(
        False, "--mock", help="Use the mock model in this process (offline)."
    ),
    mock_hidden_size: int = typer.Option(DEFAULT_MOCK_HIDDEN, help="Hidden size of --mock."),
    server_dtype: str | None = _server_dtype_option(),
    server_threads: int | None = _server_threads_option(),
    server_device: str | None = _server_device_option(),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print what the run would cost (calls, requests, bytes, time from one probe "
        "request) and exit: no run directory, no tuning.",
    ),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write plot.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Tune a soft prompt with Black-Box Tuning (Sun et al., ICML 2022)."""
    say = _sayer(quiet)
    _ARG_API_KEY.set(api_key)
    server = _server_options(ctx, server_dtype, server_threads, server_device)

    if trust_checkpoint and resume is None:
        _fail("--trust-checkpoint goes with --resume DIR")
    if resume is not None and dry_run:
        _fail("--dry-run does not apply to --resume")
    if resume is not None:
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

    def prepare() -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        from bbt.tuner import InitialPrompt, TuneConfig, sample_k_shot

        t = _task(task, task_file, template, verbalizer, metric)
        cfg = TuneConfig(
            n_tokens=n_tokens,
            dim=dim,
            popsize=popsize,
            sigma=sigma,
            alpha=alpha,
            bound=bound,
            budget=budget,
            loss=loss,
            eval_every=eval_every,
            patience=patience,
            seed=seed,
            projection=projection,  # type: ignore[arg-type]
            method=method,
            layer_generations=layer_generations,
            sessions=sessions,
            # Unset: TuneConfig's own default.
            **({} if eval_mean is None else {"eval_mean": eval_mean}),
        )
        dseed = seed if data_seed is None else data_seed
        columns = list(column)
        if text_field is not None:
            if len(t.fields) != 1:
                raise TaskError(
                    f"--text-field needs a one-field task; {t.name!r} has fields "
                    f"{', '.join(t.fields)}: map each with --column FIELD=COLUMN"
                )
            columns.append(f"{t.fields[0]}={text_field}")
        info: dict[str, Any] = {"k_shot": k_shot, "dev_k": dev_k or k_shot, "data_seed": dseed}
        if data is None:
            if t.name != "mock":
                raise TaskError("--data FILE is required (only the mock task has built-in data)")
            from bbt.server.mock import sample_mock_dataset
            from bbt.tuner import Example

            pool = [Example({t.fields[0]: s}, y) for s, y in sample_mock_dataset(MOCK_EXAMPLES, 0)]
            info["source"] = f"bbt.server.mock.sample_mock_dataset({MOCK_EXAMPLES}, 0)"
        else:
            pool = _examples(t, data, columns, label_column, data_format)
            info["source"] = str(data)
        if dev_data is None:
            train, dev = sample_k_shot(pool, k_shot, dseed, t.num_classes, dev_k=dev_k)
        else:
            train, _ = sample_k_shot(pool, k_shot, dseed, t.num_classes, dev_k=0)
            dpool = _examples(t, dev_data, columns, label_column, data_format)
            dev, _ = sample_k_shot(dpool, dev_k or k_shot, dseed + 1, t.num_classes, dev_k=0)
            info["dev_source"] = str(dev_data)
        p0 = InitialPrompt.parse(init, seed=seed)
        return t, cfg, train, dev, {"p0": p0, "info": info}

    t, cfg, train, dev, extra = _guard(prepare)

    def service() -> Any:
        """The service the run (or the dry run) talks to, as a context manager."""
        return _service(
            mock=mock,
            mock_hidden_size=mock_hidden_size,
            base_url=base_url,
            api_key=api_key,
            model=model,
            say=say,
            server=server,
        )

    if dry_run:
        _guard(lambda: _dry_run(t, cfg, train, dev, extra["p0"], service()))
        return
    run_dir = out or _default_out(t.name)

    def go() -> None:
        from bbt.tuner import tune

        with ExitStack() as stack:
            svc, svc_info = stack.enter_context(service())
            # The bar counts to what the run can spend: whole generations only.
            total = cfg.budget // cfg.population * cfg.population or cfg.budget
            bar = stack.enter_context(_Progress(total, t.metric, quiet))
            say(f"tuning {t.name} on {len(train)} train / {len(dev)} dev examples -> {run_dir}")
            result = tune(
                svc,
                t,
                train,
                dev,
                cfg,
                initial_prompt=extra["p0"],
                run_dir=run_dir,
                callbacks=[bar],
                base_url=svc_info.get("base_url"),
                data_info=extra["info"],
                service_info=svc_info,
                plot=plot,
            )
        _summary(result, say)

    _guard(go, run_dir)


def _dry_run(t: Any, cfg: Any, train: Any, dev: Any, p0: Any, service: Any) -> None:
    """Build the run as ``tune`` would, plan it, time one probe request, print the plan."""
    from bbt.cli._dry_run import describe, make_plan
    from bbt.tuner.bbtv2 import make_tuner

    started = time.perf_counter()
    with service as (svc, svc_info):
        before = svc.usage.copy()
        tuner = make_tuner(svc, t, train, dev, cfg, initial_prompt=p0)
        setup = svc.usage - before
        plan = make_plan(tuner, svc, svc_info["kind"], setup, time.perf_counter() - started)
        tuner.close()  # frees a projection session the tuner opened
    summary = f"tune {t.name} on {len(train)} train / {len(dev)} dev examples"
    for line in describe(plan, summary):
        typer.echo(line)


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
            _service_for_run(run_dir, mock, base_url, api_key, model, say, server)
        )
        bar = stack.enter_context(
            _Progress(int(manifest["config"]["budget"]), manifest["task"]["metric"], quiet)
        )
        say(f"resuming {run_dir}")
        if trust_checkpoint:
            say(f"warning: --trust-checkpoint: loading {run_dir}'s checkpoint even if foreign")
        result = resume(run_dir, svc, callbacks=[bar], plot=plot, trust_checkpoint=trust_checkpoint)
    _summary(result, say)


def eval_command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    data: Path = typer.Option(..., "--data", help="Labelled examples (TSV, CSV, JSONL)."),
    column: list[str] = typer.Option([], "--column", help="FIELD=COLUMN mapping (repeatable)."),
    label_column: str | None = typer.Option(None, help="Label column (default: the task's)."),
    data_format: str | None = typer.Option(None, "--format", help="tsv, csv or jsonl."),
    base_url: str | None = typer.Option(None, help="Service URL (or BBT_BASE_URL / .env)."),
    api_key: str | None = typer.Option(None, help="API key (or BBT_API_KEY / .env)."),
    model: str | None = typer.Option(None, help="Model id."),
    mock: bool | None = typer.Option(None, "--mock/--no-mock", help="Use the in-process mock."),
    server_dtype: str | None = _server_dtype_option(),
    server_threads: int | None = _server_threads_option(),
    server_device: str | None = _server_device_option(),
    upload_prompt: bool = typer.Option(
        False,
        "--upload-prompt",
        help="Send the prompt with every request instead of storing it in the service's "
        "prompt registry once (the default when the service has one).",
    ),
) -> None:
    """Score a tuned prompt on labelled data: prints one JSON object of metrics."""
    _ARG_API_KEY.set(api_key)
    server = _server_options(ctx, server_dtype, server_threads, server_device)

    def go() -> None:
        from bbt.tuner import TunedPrompt

        service = _service_for_run(run_dir, mock, base_url, api_key, model, _say_err, server)
        with service as (svc, _):
            tp = TunedPrompt.load(run_dir, svc, use_registry=not upload_prompt)
            examples = _examples(tp.task, data, column, label_column, data_format)
            metrics = tp.evaluate(examples)
        typer.echo(json.dumps(metrics))

    _guard(go)


def predict_command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    texts: list[str] = typer.Argument(None, help="Texts to classify (single-field tasks)."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Inputs from a TSV/CSV/JSONL file."
    ),
    column: list[str] = typer.Option([], "--column", help="FIELD=COLUMN mapping (repeatable)."),
    data_format: str | None = typer.Option(None, "--format", help="tsv, csv or jsonl."),
    base_url: str | None = typer.Option(None, help="Service URL (or BBT_BASE_URL / .env)."),
    api_key: str | None = typer.Option(None, help="API key (or BBT_API_KEY / .env)."),
    model: str | None = typer.Option(None, help="Model id."),
    mock: bool | None = typer.Option(None, "--mock/--no-mock", help="Use the in-process mock."),
    server_dtype: str | None = _server_dtype_option(),
    server_threads: int | None = _server_threads_option(),
    server_device: str | None = _server_device_option(),
    upload_prompt: bool = typer.Option(
        False,
        "--upload-prompt",
        help="Send the prompt with every request instead of storing it in the service's "
        "prompt registry once (the default when the service has one).",
    ),
) -> None:
    """Classify texts with a tuned prompt: one JSON line per input (label, probabilities)."""
    _ARG_API_KEY.set(api_key)
    server = _server_options(ctx, server_dtype, server_threads, server_device)

    def go() -> None:
        from bbt.tuner import TunedPrompt

        if bool(texts) == (file is not None):
            raise TaskError("give texts as arguments or --file FILE (one of the two)")
        service = _service_for_run(run_dir, mock, base_url, api_key, model, _say_err, server)
        with service as (svc, _):
            tp = TunedPrompt.load(run_dir, svc, use_registry=not upload_prompt)
            inputs: list[Any]
            if file is not None:
                examples = _examples(tp.task, file, column, None, data_format, labels=False)
                inputs = [dict(e.fields) for e in examples]
            else:
                inputs = list(texts)
            preds = tp.predict(inputs)
        for item, pred in zip(inputs, preds, strict=True):
            sys.stdout.write(json.dumps({"input": item, **pred.as_dict()}) + "\n")

    _guard(go)


def _sayer(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            _say_err(message)

    return say


def _say_err(message: str) -> None:
    """A message on stderr: above the progress bar while one is live, through its console."""
    if _live:
        _live[-1].print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        typer.echo(message, err=True)


def register(app: typer.Typer) -> None:
    """Add ``tune``, ``eval`` and ``predict`` to ``app``."""
    app.command("tune")(tune_command)
    app.command("eval")(eval_command)
    app.command("predict")(predict_command)
