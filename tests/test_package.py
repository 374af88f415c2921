"""The top-level package: curated exports and a light import."""

from __future__ import annotations

import subprocess
import sys

import bbt


def test_all_is_sorted_and_resolvable() -> None:
    assert sorted(bbt.__all__) == bbt.__all__
    for name in bbt.__all__:
        assert getattr(bbt, name) is not None, name


def test_every_public_class_of_the_subpackages_is_reachable() -> None:
    # What a pipeline author needs most must not require knowing the package layout.
    for name in ("Client", "AsyncClient", "LocalClient", "tune", "resume", "TunedPrompt"):
        assert name in bbt.__all__


def test_core_import_pulls_no_heavy_dependency() -> None:
    code = (
        "import sys, bbt, bbt.client, bbt.tuner, bbt.protocol, bbt.errors\n"
        "heavy = {'torch', 'transformers', 'fastapi', 'uvicorn', 'matplotlib'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_errors_share_one_base() -> None:
    for name in bbt.errors.__all__:
        cls = getattr(bbt.errors, name)
        assert issubclass(cls, bbt.BBTError), name
