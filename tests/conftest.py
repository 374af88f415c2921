"""Isolation shared by the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_bbt_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests (and the ``bbt`` subprocesses they start) keep their per-user checkpoint key in a
    temp directory, never in the developer's ``~/.config/bbt``. A test that needs its own
    BBT_HOME sets it over this one."""
    monkeypatch.setenv("BBT_HOME", str(tmp_path_factory.mktemp("bbt-home")))
