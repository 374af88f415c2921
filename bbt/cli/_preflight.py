"""Checks of a new ``bbt tune`` run that need no service, made before anything is drawn.

The tuner makes the same checks when it builds the run, but by then the command has said
where it tunes and drawn its progress bar: a typo in ``--init`` or ``--label-words`` would
end a run that seemed to start. Here they fail first, with the tuner's own messages (the
same functions read the same inputs). What needs the service (a registry prompt's presence,
a prompt's shape against the model's hidden size, the model a source run was tuned on) is
still checked when the run is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bbt.errors import ConfigurationError

__all__ = ["preflight"]


def preflight(run: Any) -> None:
    """Raise the error the run ``run`` (a :class:`~bbt.cli._options.Prepared`) would fail
    with once built, where no service is needed to know it."""
    cfg = run.options.config
    _check_data_options(run.options)
    _check_init(run.initial_prompt)
    if cfg.method == "mixture" and run.initial_prompt.kind != "mix":
        raise ConfigurationError(
            "method mixture needs its source prompts: --init mix:RUN_DIR1,RUN_DIR2,..."
        )
    if cfg.label_words is not None:
        from bbt.tuner.readout import parse_label_words

        parse_label_words(cfg.label_words, run.task.labels)


def _check_init(recipe: Any) -> None:
    from bbt.protocol import is_prompt_id
    from bbt.tuner.transfer import read_run_prompt

    if recipe.kind == "run":
        read_run_prompt(recipe.path)
    elif recipe.kind == "mix":
        if len(recipe.sources) < 2:
            raise ConfigurationError("a mixture needs at least two source runs (mix:DIR1,DIR2)")
        for source in recipe.sources:
            read_run_prompt(source)
    elif recipe.kind == "prompt" and not is_prompt_id(recipe.prompt_id):
        raise ConfigurationError(
            f"cannot fetch registry prompt {recipe.prompt_id}: not a prompt id (ids look "
            "like 'bp_' followed by letters, digits, '-' or '_')"
        )
    elif recipe.kind == "file" and not Path(recipe.path).is_file():
        raise ConfigurationError(f"cannot read initial prompt {recipe.path}: no such file")


def _check_data_options(options: Any) -> None:
    """Options that describe a data file, given with none (the mock task's built-in data):
    ignored until now, so a typo in them went unnoticed."""
    from bbt.tuner.readers import parse_label_map

    parse_label_map(options.label_map)  # its syntax, with data or without
    if options.data is not None or options.dev_data is not None:
        return
    given = [
        flag
        for flag, value in (
            ("--label-map", options.label_map),
            ("--label-column", options.label_column),
            ("--column", options.columns or None),
            ("--text-field", options.text_field),
            ("--text-pair-column", options.text_pair_column),
            ("--format", options.data_format),
        )
        if value is not None
    ]
    if given:
        raise ConfigurationError(
            f"{', '.join(given)} describe(s) a data file; give it with --data FILE"
        )
