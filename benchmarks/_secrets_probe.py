"""A pytest plugin for ``secrets_scan.py``: keep every bbt exception message and log record.

Loaded only by the secrets scan (``pytest -p _secrets_probe``, with ``benchmarks/`` on the
path); ``SECRETS_PROBE_DIR`` names the folder it writes to. It records

- the text of every :class:`bbt.errors.BBTError`, ``ProtocolViolation`` and server
  ``APIFailure`` constructed during the run, caught or not (``exceptions.txt``);
- every log record that reaches the root logger, formatted with its arguments and any
  exception text (``log.txt``); levels are left as the tests set them, since raising
  them would change what ``caplog`` sees,

so that the scan also sees messages a test catches with ``pytest.raises`` or that
pytest only shows for failing tests.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

_lock = threading.Lock()


class _FileHandler(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(level=logging.DEBUG)
        self._path = path
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record that cannot format is the test's business, not ours
            line = f"{record.levelname} {record.name} <unformattable {record.msg!r}>"
        with _lock, self._path.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(line + "\n")


def _wrap_init(cls: type[BaseException], path: Path) -> None:
    original = cls.__init__

    def init(self: BaseException, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            text = f"{type(self).__name__}: {self}"
        except Exception:
            text = f"{type(self).__name__}: <unprintable>"
        with _lock, path.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text.replace("\n", "\\n") + "\n")

    cls.__init__ = init  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get("SECRETS_PROBE_DIR")
    if not folder:
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    from bbt.errors import BBTError
    from bbt.protocol import ProtocolViolation
    from bbt.server import APIFailure

    for cls in (BBTError, ProtocolViolation, APIFailure):
        _wrap_init(cls, out / "exceptions.txt")
    root = logging.getLogger()
    root.addHandler(_FileHandler(out / "log.txt"))
