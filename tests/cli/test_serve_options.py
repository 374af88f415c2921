"""``bbt serve``'s options as data: every option has one help text and one help panel."""

from __future__ import annotations

import inspect

import pytest

from bbt.cli._serve import serve
from bbt.cli._serve_options import HELP, PANELS, option


def test_every_option_of_serve_has_help_and_one_panel() -> None:
    names = list(inspect.signature(serve).parameters)
    assert sorted(names) == sorted(HELP)
    in_panels = [name for members in PANELS.values() for name in members]
    assert sorted(in_panels) == sorted(HELP)  # each in exactly one panel


def test_option_takes_its_flag_from_its_name_unless_told() -> None:
    made = option("max_queue", None, min=0)
    assert made.param_decls == ("--max-queue",)
    assert made.rich_help_panel == "Listening, access and logs"
    assert made.help == HELP["max_queue"]
    assert option("port", 8000, "-p").param_decls == ("--port", "-p")
    assert option("sessions", None, flag="--a/--b").param_decls == ("--a/--b",)
    with pytest.raises(KeyError):
        option("no_such_option", None)
