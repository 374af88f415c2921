"""``bbt eval`` and ``bbt predict``: use a finished run's prompt on labelled data or on
new inputs, against the service the run was made with (or the one named)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from bbt.cli._errors import ARG_API_KEY, guard
from bbt.cli._options import read_examples, text_columns
from bbt.cli._params import GROUP, grouped
from bbt.cli._progress import say_err
from bbt.cli._service_select import (
    ServerOptions,
    server_device_option,
    server_dtype_option,
    server_options,
    server_threads_option,
    service_for_run,
)
from bbt.errors import TaskError


# The options eval and predict share (each call makes a fresh typer.Option).
def _text_column_option() -> Any:
    return typer.Option(None, "--text-column", help="Column of the text (or a pair's first).")


def _pair_column_option() -> Any:
    return typer.Option(None, "--text-pair-column", help="Column of a pair's second text.")


@dataclass(frozen=True)
class RunService:
    """The options ``bbt eval`` and ``bbt predict`` declare once: which service answers a
    finished run's prompt, and how the prompt reaches it."""

    base_url: str | None = typer.Option(None, help="Service URL (or BBT_BASE_URL / .env).")
    api_key: str | None = typer.Option(None, help="API key (or BBT_API_KEY / .env).")
    model: str | None = typer.Option(None, help="Model id.")
    mock: bool | None = typer.Option(None, "--mock/--no-mock", help="Use the in-process mock.")
    server_dtype: str | None = server_dtype_option()
    server_threads: int | None = server_threads_option()
    server_device: str | None = server_device_option()
    upload_prompt: bool = typer.Option(
        False,
        "--upload-prompt",
        help="Send the prompt with every request instead of storing it in the service's "
        "prompt registry once (the default when the service has one).",
    )

    def server(self, ctx: typer.Context) -> ServerOptions:
        """The embedded server's options; the API key is known to the error messages."""
        ARG_API_KEY.set(self.api_key)
        return server_options(ctx, self.server_dtype, self.server_threads, self.server_device)

    @contextmanager
    def prompt(self, run_dir: Path, server: ServerOptions) -> Iterator[Any]:
        """The run's :class:`~bbt.tuner.TunedPrompt` on the service, open while in use."""
        from bbt.tuner import TunedPrompt

        service = service_for_run(
            run_dir, self.mock, self.base_url, self.api_key, self.model, say_err, server
        )
        with service as (svc, _):
            yield TunedPrompt.load(run_dir, svc, use_registry=not self.upload_prompt), svc


@grouped(RunService, "service")
def eval_command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    data: Path = typer.Option(
        ..., "--data", help="Labelled examples (TSV, CSV, JSONL, Parquet, save_to_disk dir)."
    ),
    column: list[str] = typer.Option([], "--column", help="FIELD=COLUMN mapping (repeatable)."),
    text_column: str | None = _text_column_option(),
    text_pair_column: str | None = _pair_column_option(),
    label_column: str | None = typer.Option(None, help="Label column (default: the task's)."),
    label_map: str | None = typer.Option(
        None, "--label-map", help="Data label -> task label, e.g. pos=1,neg=0."
    ),
    data_format: str | None = typer.Option(
        None, "--format", help="tsv, csv, jsonl, parquet or hf."
    ),
    service: RunService = GROUP,
    baseline: bool = typer.Option(
        False, "--baseline", help="Score the run's p0 (z = 0) too: both figures and the gain."
    ),
) -> None:
    """Score a tuned prompt on labelled data: prints one JSON object of metrics."""
    server = service.server(ctx)

    def go() -> None:
        with service.prompt(run_dir, server) as (tp, svc):
            cols = text_columns(tp.task, column, text_column, text_pair_column)
            examples = read_examples(
                tp.task, data, cols, label_column, data_format, label_map=label_map
            )
            if baseline:  # p0 too (bbt/tuner/heldout.py); the tuned figures stay the same
                from bbt.tuner.heldout import compare

                report = compare(tp, svc, examples)
                metrics = report.as_dict()
            else:
                metrics = tp.evaluate(examples)
        typer.echo(json.dumps(metrics))
        if baseline:  # the line a person reads last: p0 -> tuned on these rows
            say_err(report.summary(data.name))

    guard(go)


@grouped(RunService, "service")
def predict_command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    texts: list[str] = typer.Argument(None, help="Texts to classify (single-field tasks)."),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Inputs from a TSV/CSV/JSONL/Parquet file or dataset dir."
    ),
    column: list[str] = typer.Option([], "--column", help="FIELD=COLUMN mapping (repeatable)."),
    text_column: str | None = _text_column_option(),
    text_pair_column: str | None = _pair_column_option(),
    data_format: str | None = typer.Option(
        None, "--format", help="tsv, csv, jsonl, parquet or hf."
    ),
    service: RunService = GROUP,
) -> None:
    """Classify texts with a tuned prompt: one JSON line per input (label, probabilities)."""
    server = service.server(ctx)

    def go() -> None:
        if bool(texts) == (file is not None):
            raise TaskError("give texts as arguments or --file FILE (one of the two)")
        with service.prompt(run_dir, server) as (tp, _):
            inputs: list[Any]
            if file is not None:
                cols = text_columns(tp.task, column, text_column, text_pair_column)
                examples = read_examples(tp.task, file, cols, None, data_format, labels=False)
                inputs = [dict(e.fields) for e in examples]
            else:
                inputs = list(texts)
            preds = tp.predict(inputs)
        for item, pred in zip(inputs, preds, strict=True):
            sys.stdout.write(json.dumps({"input": item, **pred.as_dict()}) + "\n")

    guard(go)
