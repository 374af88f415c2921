"""``bbt --help``: every command's summary in the command list is one line of text."""

from __future__ import annotations

from typing import Any

import typer

from bbt.cli import app


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, cmd)]
    if hasattr(cmd, "list_commands"):
        ctx = type(cmd).context_class(cmd)
        for name in cmd.list_commands(ctx):
            out += _commands(cmd.get_command(ctx, name), (*path, name))
    return out


def test_every_command_summary_is_one_line() -> None:
    for path, cmd in _commands(typer.main.get_command(app))[1:]:
        summary = (cmd.short_help or cmd.help or "").strip().split("\n\n")[0]
        assert summary, f"bbt {' '.join(path)} has no help"
        # A summary over two source lines shows its line break in `bbt --help`'s list.
        assert "\n" not in summary, f"bbt {' '.join(path)}: {summary!r}"


def test_compare_data_help_names_every_format_the_reader_takes() -> None:
    """``bbt compare`` reads its rows as ``bbt tune`` does (bbt.tuner.load_examples)."""
    from bbt.tuner.data import FORMATS

    cmd = typer.main.get_command(app)
    ctx = type(cmd).context_class(cmd)
    compare = cmd.get_command(ctx, "compare")  # type: ignore[attr-defined]
    data = next(p for p in compare.params if "--data" in p.opts)
    text = data.help.lower()
    names = {"hf": "save_to_disk"}
    assert all(names.get(f, f) in text for f in FORMATS), data.help
