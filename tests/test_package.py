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


def test_import_bbt_loads_no_server_code() -> None:
    # The client's LocalClient needs the backend contract only (bbt.protocol.backend); the
    # server package (and the mock's vocabulary it builds) loads when a server is asked for.
    code = "import bbt, sys; assert not any(m.startswith('bbt.server') for m in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_backend_contract_is_one_class_under_both_names() -> None:
    from bbt.protocol.backend import Backend
    from bbt.server.backend import Backend as ServerBackend

    assert ServerBackend is Backend
