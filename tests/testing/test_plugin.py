"""The pytest plugin (``pytest11`` entry point ``bbt``) is loaded into every pytest run of every
project that installs bbt, so loading it must stay light: the server, FastAPI/Starlette, uvicorn,
torch and the fake vLLM load only when a test asks for a fixture that needs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bbt.testing.plugin

#: What loading the plugin must not import (a module, or a package and all its submodules).
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "torch",
    "bbt.server",  # the framework-free core too: only the fixtures need it
    "bbt.testing.vllm_fake",
    "bbt.testing._vllm_server",  # where the fake is defined, which the fixtures import
)

_LOADED = """
import sys
HEAVY = {heavy!r}
def loaded():
    return sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
"""

FIXTURES = (
    "mock_backend",
    "mock_app",
    "mock_client",
    "mock_respx",
    "live_mock_server",
    "live_mock_server_factory",
    "vllm_fake",
    "live_vllm_fake",
)


def test_importing_the_plugin_loads_nothing_heavy() -> None:
    code = _LOADED.format(heavy=HEAVY) + "import bbt.testing.plugin\nprint(loaded())\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_fixture_is_still_defined_by_the_plugin() -> None:
    for name in FIXTURES:
        assert callable(getattr(bbt.testing.plugin, name)), name


@pytest.mark.parametrize("autoload", [False, True], ids=["-p", "entry-point"])
def test_a_pytest_run_loads_nothing_heavy_until_a_fixture_is_used(
    tmp_path: Path, autoload: bool
) -> None:
    # A downstream project's pytest run: the plugin comes from `-p bbt.testing.plugin` (nothing
    # else loaded), or from the entry point with whatever other plugins are installed.
    test_file = tmp_path / "test_downstream.py"
    test_file.write_text(
        _LOADED.format(heavy=HEAVY)
        + textwrap.dedent(
            """
            def test_collection_and_plugin_load_imported_nothing_heavy():
                assert loaded() == []

            def test_the_fixtures_import_what_they_need(mock_client, vllm_fake):
                assert mock_client.tokenize(["great"]).ids
                assert type(vllm_fake).__name__ == "VLLMFake"
                assert "bbt.testing._vllm_server" in loaded()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)]
    if autoload:
        env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    else:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        args[3:3] = ["-p", "bbt.testing.plugin"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout


def test_the_vllm_fixtures_are_still_importable_from_their_old_module() -> None:
    # Conftest files written before the fixtures moved into the plugin import them from there.
    from bbt.testing.vllm_fake import live_vllm_fake, vllm_fake

    assert vllm_fake is bbt.testing.plugin.vllm_fake
    assert live_vllm_fake is bbt.testing.plugin.live_vllm_fake


def test_the_vllm_fake_itself_needs_no_pytest() -> None:
    # `python -m bbt.testing.vllm_fake` serves the fake for demos: the server extra, no pytest.
    code = (
        "import sys\nsys.modules['pytest'] = None\n"
        "from bbt.testing.vllm_fake import VLLMFake\nVLLMFake()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
