"""scripts/check_imports.py: bbt's import graph has no circles, no reaches into another
package's private module, and the client never imports the server (issue 19)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_imports.py"

#: What is still found in bbt/: the test fails on anything new; entries may only disappear.
#: None: the plugin's vLLM fixtures import the fake from where it is defined
#: (bbt.testing._vllm_server), so only bbt.testing.vllm_fake, which re-exports the fixtures
#: for old conftest files, imports the plugin.
KNOWN_CIRCLES: set[tuple[str, ...]] = set()
#: Imports of another package's private module: none (the protocol's framing, validation and
#: registry rules and the tuner's run-directory files are public modules the server and the
#: CLI import by name).
KNOWN_PRIVATE: set[tuple[str, str]] = set()


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check_imports() -> ModuleType:
    return _load()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_it_finds_each_kind_of_fault_in_a_small_package(
    check_imports: ModuleType, tmp_path: Path
) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg._version import v\n",
            "pkg/_version.py": "v = 1\n",
            "pkg/client/__init__.py": "",
            "pkg/client/_base.py": "from pkg.client import _service\n",
            "pkg/client/_service.py": "def f():\n    from pkg.client._base import x\n",
            "pkg/client/_typed.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.client import _typed2\n"
            ),
            "pkg/client/_typed2.py": "from pkg.client import _typed\n",
            "pkg/client/local.py": (
                "import importlib\n\ndef f():\n    importlib.import_module('pkg.server.x')\n"
            ),
            "pkg/server/__init__.py": "",
            "pkg/server/x.py": "from ..client._base import y\nfrom pkg import _version\n",
        },
    )
    report = check_imports.check(tmp_path, "pkg")
    assert report.cycles == [["pkg.client._base", "pkg.client._service"]]
    assert report.typing_cycles == [["pkg.client._typed", "pkg.client._typed2"]]
    assert [(e.source, e.target) for e in report.private] == [("pkg.server.x", "pkg.client._base")]
    assert [(e.source, e.target) for e in report.client_to_server] == [
        ("pkg.client.local", "pkg.server.x")
    ]
    assert report.failed


def test_a_clean_package_passes_and_the_script_exits_by_it(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n", "pkg/b.py": ""})
    run = [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--package", "pkg"]
    ok = subprocess.run(run, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "import circles: 0" in ok.stdout
    (tmp_path / "pkg" / "b.py").write_text("from pkg import a\n", encoding="utf-8")
    bad = subprocess.run(run, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "pkg.a <-> pkg.b" in bad.stdout


def test_bbt_has_no_new_circle_or_private_reach(check_imports: ModuleType) -> None:
    report = check_imports.check(ROOT, "bbt")
    assert {tuple(c) for c in report.cycles} <= KNOWN_CIRCLES
    assert {(e.source, e.target) for e in report.private} <= KNOWN_PRIVATE


def test_the_client_imports_nothing_of_the_server(check_imports: ModuleType) -> None:
    report = check_imports.check(ROOT, "bbt")
    assert report.client_to_server == []
    assert not any(e.source.startswith("bbt.client") for e in report.private)
    assert not any(c[0].startswith(("bbt.client", "bbt.vllm", "bbt.tuner")) for c in report.cycles)


def test_it_finds_private_reaches_from_a_tree_outside_the_package(
    check_imports: ModuleType, tmp_path: Path
) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/server/__init__.py": "from pkg.server._core import Failure\n",
            "pkg/server/_core.py": "class Failure(Exception): ...\n_LIMIT = 1\n",
            "pkg/server/hf.py": "_HIDDEN = 2\nSHOWN = 3\n",
            "bench/ok.py": "from pkg.server import Failure\nfrom pkg.server.hf import SHOWN\n",
            "bench/bad.py": (
                "from pkg.server._core import Failure\n"
                "def f():\n    from pkg.server.hf import _HIDDEN\n"
                "import pkg.server._core\n"
            ),
        },
    )
    report = check_imports.check(tmp_path, "pkg", [tmp_path / "bench"])
    assert sorted((e.source, e.target, e.line) for e in report.outside) == [
        ("bench.bad", "pkg.server._core", 1),
        ("bench.bad", "pkg.server._core", 4),
        ("bench.bad", "pkg.server.hf._HIDDEN", 3),
    ]
    assert report.failed
    run = [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--package", "pkg"]
    outside = subprocess.run([*run, "--outside", "bench"], capture_output=True, text=True)
    assert outside.returncode == 1
    assert "bench/bad.py:3: bench.bad -> pkg.server.hf._HIDDEN" in outside.stdout
    inside_only = subprocess.run(run, capture_output=True, text=True)  # no benchmarks/ there
    assert inside_only.returncode == 0, inside_only.stdout


def test_the_benchmarks_import_only_public_names_of_bbt(check_imports: ModuleType) -> None:
    report = check_imports.check(ROOT, "bbt", [ROOT / "benchmarks"])
    assert [check_imports._where(e, ROOT) for e in report.outside] == []
