"""The top-level package: curated exports and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


# The extras' modules, and click: typer >= 0.2x vendors its own click and no longer depends on
# it, so on a core install (`pip install bbt`, no extras) none of these can be imported.
NOT_ON_THE_CORE_INSTALL = ("click", "fastapi", "starlette", "uvicorn", "torch", "matplotlib")

# A prelude that makes the modules above unimportable, as on a core install: a meta-path finder
# ahead of every other one that raises ModuleNotFoundError for them and their submodules.
_BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
"""


def _without_extras(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (then ``args`` as its sys.argv[1:]) in a fresh interpreter in which none of
    :data:`NOT_ON_THE_CORE_INSTALL` can be imported."""
    return subprocess.run(
        [sys.executable, "-c", _BLOCKER + code, ",".join(NOT_ON_THE_CORE_INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_blocker_blocks() -> None:
    # Guards the tests below: a blocker that blocked nothing would prove nothing.
    r = _without_extras("import click")
    assert r.returncode != 0
    assert "No module named 'click' (blocked)" in r.stderr


def test_import_bbt_and_the_cli_need_no_extra_and_no_click() -> None:
    r = _without_extras("import bbt, bbt.cli, bbt.client, bbt.tuner, bbt.testing; print('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


_BBT = "import sys; from bbt.cli import main; sys.argv[0] = 'bbt'; main()"


def test_bbt_help_needs_no_extra_and_no_click() -> None:
    r = _without_extras(_BBT, "--help")
    assert r.returncode == 0, r.stderr
    for command in ("tune", "eval", "predict", "serve", "mock-server"):
        assert command in r.stdout, command


def test_tune_eval_predict_on_the_mock_need_no_extra_and_no_click(tmp_path: Path) -> None:
    # What a user of the core install runs first: a short tune on the in-process mock (no
    # matplotlib: the run says why there is no plot), then eval and predict on the run.
    run = tmp_path / "run"
    r = _without_extras(
        _BBT,
        *("tune", "--task", "mock", "--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20"),
        *("--popsize", "8", "--budget", "32", "--eval-every", "16", "-q", "--out", str(run)),
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert (run / "manifest.json").is_file()
    data = tmp_path / "dev.tsv"
    data.write_text("text\tlabel\nit was great\t1\nit was bad\t0\n")
    r = _without_extras(_BBT, "eval", str(run), "--data", str(data), "--mock")
    assert r.returncode == 0, r.stderr
    assert "accuracy" in json.loads(r.stdout)
    r = _without_extras(_BBT, "predict", str(run), "it was great", "--mock")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["input"] == "it was great"
