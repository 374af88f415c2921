"""``one_line_errors``: what the serve, mock-server and pretrain commands fail with."""

from __future__ import annotations

import pydantic
import pytest
import typer

from bbt.cli._common import EXIT_ERROR, one_line_errors
from bbt.errors import BBTError, ConfigurationError


class _Settings(pydantic.BaseModel):
    port: int


def _exit_line(capsys: pytest.CaptureFixture[str], block: object) -> str:
    assert isinstance(block, typer.Exit)
    assert block.exit_code == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.strip()


def test_a_bbt_error_becomes_its_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    closed: list[bool] = []
    with pytest.raises(typer.Exit) as info, one_line_errors(cleanup=lambda: closed.append(True)):
        raise ConfigurationError("no such registry file")
    assert _exit_line(capsys, info.value) == "error: no such registry file"
    assert closed == [True]


def test_a_missing_import_names_the_module_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info, one_line_errors("needs {name}: pip install x"):
        raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")
    assert _exit_line(capsys, info.value) == "error: needs uvicorn: pip install x"
    # Without ``needs`` an import error is not this helper's to report.
    with pytest.raises(ModuleNotFoundError), one_line_errors():
        raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")


def test_invalid_settings_show_messages_not_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info, one_line_errors(invalid="invalid settings"):
        _Settings(port="secret-key-value")  # type: ignore[arg-type]
    line = _exit_line(capsys, info.value)
    assert line.startswith("error: invalid settings: port: ")
    assert "secret-key-value" not in line
    with pytest.raises(ValueError, match="plain"), one_line_errors():
        raise ValueError("plain")


def test_also_and_a_clean_block(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info, one_line_errors(also=(OSError,)):
        raise FileExistsError("out exists")
    assert _exit_line(capsys, info.value) == "error: out exists"
    with one_line_errors(cleanup=lambda: pytest.fail("cleanup ran without an error")):
        value = 1
    assert value == 1
    assert issubclass(ConfigurationError, BBTError)
