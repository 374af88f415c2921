"""How the tune/eval/predict commands fail: one redacted line and an exit code, never a
traceback (the traceback of an internal error goes to the run directory's error.log)."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import NoReturn, TypeVar

import typer

from bbt.cli._common import fail
from bbt.errors import BBTError, UnsafeRunDirError

T = TypeVar("T")

EXIT_INTERNAL = 1  # a bug in bbt (or a dependency), not a bad input
EXIT_INTERRUPTED = 130

# No `import click` anywhere: typer >= 0.2x vendors its own copy of click and no longer depends
# on the click package, which a core install therefore lacks (and where both are installed,
# click's classes and context stack are not the ones typer uses). What the guard lets through
# comes from typer: Exit, Abort, and click's usage errors, found as typer.BadParameter's base.
CLI_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)
#: The command's --api-key, for redaction; each command sets it (None when not given).
ARG_API_KEY: ContextVar[str | None] = ContextVar("bbt_cli_api_key", default=None)


def say_error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def secrets_in_use() -> list[str]:
    """Every API key this command may hold (argument, environment, .env), for redaction."""
    found = [ARG_API_KEY.get() or ""]
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


def redact(text: str) -> str:
    from bbt.client.redaction import redact_url

    for key in secrets_in_use():
        text = text.replace(key, "***")
    return redact_url(text)  # and any user:password@ of a URL


def checkpointed(run_dir: Path | None) -> bool:
    from bbt.tuner.run import CHECKPOINT

    return run_dir is not None and (run_dir / CHECKPOINT).exists()


def resume_line(run_dir: Path) -> str:
    return f"the run is checkpointed; continue with: bbt tune --resume {run_dir}"


def internal_error(exc: Exception, run_dir: Path | None) -> NoReturn:
    """The last resort: one redacted line (no traceback on the terminal), the full traceback
    in the run directory when there is one, and the resume hint when the run can go on."""
    message = redact(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])
    if run_dir is not None and run_dir.is_dir():
        from bbt.tuner.run import ERROR_LOG
        from bbt.tuner.rundir import open_file

        log_path = run_dir / ERROR_LOG
        try:
            text = "".join(traceback.format_exception(exc))
            entry = f"--- {datetime.now().isoformat(timespec='seconds')}\n{redact(text)}"
            # Appended in place, so never through a link (or a second hard link) that the
            # run directory might hold: that would write the traceback into another file.
            with open_file(log_path, "ab") as fh:
                fh.write(entry.encode("utf-8"))
            message += f" (traceback in {log_path})"
        except (OSError, BBTError):
            pass  # the one line still goes out; the traceback has nowhere safe to go
    if checkpointed(run_dir):
        assert run_dir is not None
        message += "\n" + resume_line(run_dir)
    fail(message, EXIT_INTERNAL)


def guard(fn: Callable[[], T], resume_hint: Path | None = None) -> T:
    """Run ``fn``, turning bbt errors, Ctrl-C and, as a last resort, any other exception
    into one-line messages and exit codes: no traceback ever reaches the user."""
    try:
        return fn()
    except CLI_EXITS:
        raise  # typer's own ways out (Exit is a RuntimeError): not failures
    except BBTError as exc:
        # No resume hint for a directory refused as unsafe: resuming it is what must not be.
        if checkpointed(resume_hint) and not isinstance(exc, UnsafeRunDirError):
            # A run that got going keeps its checkpoint: a failure mid-way costs nothing done.
            assert resume_hint is not None
            fail(f"{redact(str(exc))}\n{resume_line(resume_hint)}")
        fail(redact(str(exc)))
    except Exception as exc:  # the last resort: see the docstring
        internal_error(exc, resume_hint)
    except KeyboardInterrupt:
        if resume_hint is not None:
            say_error(
                "interrupted; the last finished generation is checkpointed. "
                f"Continue with: bbt tune --resume {resume_hint}"
            )
        else:
            say_error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
