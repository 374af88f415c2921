"""``bbt tune``'s options as data: the typer options (grouped in help panels) with their
defaults and help text from :mod:`bbt.tuner.options`, and how the flags become a
:class:`~bbt.tuner.options.TuneOptions`, a task and a k-shot split."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from bbt.errors import TaskError
from bbt.tuner.options import HELP, TuneOptions, default

MOCK_EXAMPLES = 400  # examples drawn from the mock's task when it gets no --data

# The help panels of ``bbt tune --help``.
TASK_PANEL = "Task & data"
BUDGET_PANEL = "Budget & CMA-ES"
PROMPT_PANEL = "Prompt"
SERVICE_PANEL = "Service"
RUN_PANEL = "Run directory"


def option(name: str, *flags: str, panel: str, **kwargs: Any) -> Any:
    """The typer option of run option ``name``: its default and help text come from
    :mod:`bbt.tuner.options` (one source of truth), grouped under ``panel``."""
    kwargs.setdefault("help", HELP[name])
    value = kwargs.pop("default", default(name))
    return typer.Option(value, *flags, rich_help_panel=panel, **kwargs)


def resolve_task(
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


def read_examples(
    task: Any,
    path: Path,
    columns: list[str],
    label_column: str | None,
    fmt: str | None,
    labels: bool = True,
    label_map: str | None = None,
) -> Any:
    from bbt.tuner import load_examples, parse_columns

    return load_examples(
        path,
        task,
        columns=parse_columns(columns),
        label_column=label_column,
        fmt=fmt,
        require_labels=labels,
        label_map=label_map,
    )


def text_columns(
    task: Any, columns: list[str], text_column: str | None, text_pair_column: str | None
) -> list[str]:
    """``columns`` plus the FIELD=COLUMN items ``--text-column`` (a one-field task's text, or
    a two-field task's first) and ``--text-pair-column`` (the second) stand for."""
    out = list(columns)
    if text_pair_column is not None:
        if len(task.fields) != 2:
            raise TaskError(
                f"--text-pair-column needs a two-field task; {task.name!r} has fields "
                f"{', '.join(task.fields)}"
            )
        out.append(f"{task.fields[1]}={text_pair_column}")
    if text_column is not None:
        if len(task.fields) != 1 and text_pair_column is None:
            raise TaskError(
                f"--text-field needs a one-field task; {task.name!r} has fields "
                f"{', '.join(task.fields)}: map each with --column FIELD=COLUMN"
            )
        out.append(f"{task.fields[0]}={text_column}")
    return out


def default_out(task_name: str) -> Path:
    """``runs/TASK-YYYYmmdd-HHMMSS-RANDOM``: readable, sorted by time, and with 32 random bits
    so that runs started in the same second (seeds in parallel) never share a directory.
    (Should two ever collide, the run directory's exclusive creation refuses the second.)"""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{task_name}-{stamp}-{secrets.token_hex(4)}"


@dataclass
class Prepared:
    """A new run, ready to start: its options, task and k-shot split, and what the manifest
    records about the data."""

    options: TuneOptions
    task: Any
    train: list[Any]
    dev: list[Any]
    data_info: dict[str, Any]
    initial_prompt: Any  # InitialPrompt, parsed from options.init


def prepare(options: TuneOptions, task: Any) -> Prepared:
    """Load and sample the data ``options`` name for ``task`` (see ``bbt tune --help``)."""
    from bbt.tuner import InitialPrompt, sample_k_shot

    t = task
    dseed = options.sampling_seed
    columns = text_columns(t, list(options.columns), options.text_field, options.text_pair_column)
    k_shot, dev_k = options.k_shot, options.dev_k
    info: dict[str, Any] = {"k_shot": k_shot, "dev_k": dev_k or k_shot, "data_seed": dseed}
    if options.data is None:
        if t.name != "mock":
            raise TaskError("--data FILE is required (only the mock task has built-in data)")
        from bbt.server.mock import sample_mock_dataset
        from bbt.tuner import Example

        pool = [Example({t.fields[0]: s}, y) for s, y in sample_mock_dataset(MOCK_EXAMPLES, 0)]
        info["source"] = f"bbt.server.mock.sample_mock_dataset({MOCK_EXAMPLES}, 0)"
    else:
        pool = _read(t, options.data, columns, options)
        info["source"] = str(options.data)
    if options.dev_data is None:
        train, dev = sample_k_shot(pool, k_shot, dseed, t.num_classes, dev_k=dev_k)
    else:
        train, _ = sample_k_shot(pool, k_shot, dseed, t.num_classes, dev_k=0)
        dpool = _read(t, options.dev_data, columns, options)
        dev, _ = sample_k_shot(dpool, dev_k or k_shot, dseed + 1, t.num_classes, dev_k=0)
        info["dev_source"] = str(options.dev_data)
    p0 = InitialPrompt.parse(options.init, seed=options.config.seed)
    return Prepared(options, t, train, dev, info, p0)


def _read(task: Any, path: str, columns: list[str], options: TuneOptions) -> Any:
    return read_examples(
        task,
        Path(path),
        columns,
        options.label_column,
        options.data_format,
        label_map=options.label_map,
    )
