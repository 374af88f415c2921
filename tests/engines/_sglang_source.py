"""SGLang's own request code, run from the installed wheel's source without its engine.

Importing ``sglang.srt.managers.io_struct`` pulls in the whole runtime (``schedule_batch``
-> every model config -> torchvision, triton, IPython, tvm_ffi, CUDA kernels), which does
not import on a CPU-only machine (torchvision fails on CPU torch 2.13, triton has no CPU
wheel). Stubbing those packages (sys.modules entries) was tried: the chain then stops on
transformers' version probe of the stubbed torchvision and on kernel registrations that
subclass stubs, so stubs would have to fake a large part of the runtime.

Instead this module executes **the wheel's own source text** of the two modules that decide
whether a ``/generate`` body is taken (``io_struct``: ``GenerateReqInput`` and its
``normalize_batch_and_arguments``; ``sampling_params``: ``SamplingParams`` and ``verify``),
with each ``from sglang... import`` statement at module level replaced by the stand-ins
listed in :data:`STAND_INS` (names the request path bbt exercises never calls) or by an
empty class of that name (names used only in annotations and ``isinstance`` checks). Every
other line, the request classes and all their methods included, runs as SGLang ships it.
``sglang.api.v1.api_types`` (the JSON contract gate) needs only msgspec and is imported as
is; methods of ``TokenizerManager`` are taken from its source by name (:func:`function`).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
import types
from pathlib import Path
from typing import Any


def _identity(x: Any = None, *_: Any, **__: Any) -> Any:
    return x


def _nothing(*_: Any, **__: Any) -> None:
    return None


#: sglang-internal names given a behaviour (the rest become empty classes). Each is called
#: on the request path with values bbt never sets (no watermark, no reasoning terminator,
#: no kv hints, no multimodal data), where SGLang's own function returns its input / None.
STAND_INS: dict[str, Any] = {
    "normalize_watermark_request": _identity,  # watermark=None -> None
    "get_request_reasoning_end_token_ids": _nothing,  # custom_params=None -> no ids
    "decode_kv_hints_envelope": _identity,  # only called for a truthy kv_hints
    "has_valid_data": bool,  # image/video/audio data: None -> False
    "validate_optional_list_i64_1d_2d": _identity,  # pydantic validator (unused here)
}


def _root() -> Path:
    # find_spec of a top-level package locates it without running its __init__ (which
    # imports the runtime: triton, ...).
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("sglang is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


ROOT = _root()
#: Names each loaded module got from a stand-in instead of SGLang (for the report).
STOOD_IN: dict[str, list[str]] = {}
#: Module-level statements skipped because they failed over a stand-in (for the report).
SKIPPED: dict[str, list[str]] = {}


def _sglang_import(node: ast.stmt) -> tuple[str, list[tuple[str, str]]] | None:
    """(module, [(name, bound as)]) of a ``from sglang... import``; ``("", ...)`` for a
    plain ``import sglang...``; ``None`` for any other statement."""
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sglang":
        return node.module or "", [(a.name, a.asname or a.name) for a in node.names]
    if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sglang" for a in node.names):
        return "", [(a.name, (a.asname or a.name).split(".")[0]) for a in node.names]
    return None


def load(relpath: str) -> types.ModuleType:
    """The module at ``sglang/<relpath>`` executed from its source, its ``sglang`` imports
    taken from modules loaded here before (SGLang's own code) or else stood in."""
    name = "sglang." + relpath.removesuffix(".py").replace("/", ".")
    if name in sys.modules:
        return sys.modules[name]
    path = ROOT / relpath
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    kept: list[ast.stmt] = []
    module = types.ModuleType(name)
    module.__file__ = str(path)
    stood: list[str] = []
    for node in tree.body:
        found = _sglang_import(node)
        if found is None:
            kept.append(node)
            continue
        source, names = found
        real = sys.modules.get(source) if source else None
        for orig, bound in names:
            if real is not None and hasattr(real, orig):
                module.__dict__[bound] = getattr(real, orig)
            else:
                module.__dict__[bound] = STAND_INS.get(bound) or type(bound, (), {})
                stood.append(bound)
    sys.modules[name] = module  # dataclasses and msgspec resolve annotations through it
    # One statement at a time: a module-level statement that needs a stood-in name's
    # behaviour (msgpack codecs over runtime types, registries) is skipped and listed.
    for node in kept:
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        try:
            exec(code, module.__dict__)
        except Exception as exc:  # reported in SKIPPED
            SKIPPED.setdefault(name, []).append(f"line {node.lineno}: {type(exc).__name__}")
    STOOD_IN[name] = sorted(stood)
    return module


def function(relpath: str, qualname: str, **globals_: Any) -> Any:
    """A function (``name`` or ``Class.method``) compiled from the source of
    ``sglang/<relpath>`` alone, its globals builtins plus ``globals_``: for functions that
    use nothing but their arguments (and the names given)."""
    path = ROOT / relpath
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    owner, _, fname = qualname.rpartition(".")
    scopes: list[Any] = (
        [tree]
        if not owner
        else [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == owner]
    )
    for scope in scopes:
        for item in scope.body:
            if isinstance(item, ast.FunctionDef) and item.name == fname:
                src = textwrap.dedent(ast.get_source_segment(text, item) or "")
                namespace: dict[str, Any] = {}
                code = compile("from __future__ import annotations\n" + src, str(path), "exec")
                exec(code, dict(globals_), namespace)
                return namespace[fname]
    raise LookupError(f"{qualname} is not in sglang/{relpath}")


def _hidden_states_mode(value: Any) -> Any:
    """``schedule_batch.get_return_hidden_states_mode`` as SGLang ships it (its module
    imports the runtime), over a stand-in of the ``CaptureHiddenMode`` enum."""
    modes = types.SimpleNamespace(FULL="full", LAST="last", NULL="null")
    real = function(
        "srt/managers/schedule_batch.py", "get_return_hidden_states_mode", CaptureHiddenMode=modes
    )
    return real(value)


STAND_INS["get_return_hidden_states_mode"] = _hidden_states_mode


def version() -> str:
    """The installed SGLang's version, read from its source (``version.py`` or, in newer
    wheels, the build's ``_version.py``)."""
    for name in ("_version.py", "version.py"):
        path = ROOT / name
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Assign)
                and any(
                    isinstance(t, ast.Name) and t.id in ("__version__", "version")
                    for t in node.targets
                )
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and not node.value.value.startswith("0.0.0")
            ):
                return node.value.value
    raise LookupError("no version in the installed sglang")


def contract_gate() -> Any:
    """``generate_contract_error(body) -> str | None`` of this SGLang's JSON contract gate
    (``sglang/srt/entrypoints/api_contract.py`` over ``sglang/api/v1/api_types.py``, both
    run as shipped; api_types needs only msgspec), or ``None`` where the release has none."""
    if not (ROOT / "api/v1/api_types.py").exists():
        return None
    load("api/v1/api_types.py")
    return load("srt/entrypoints/api_contract.py").generate_contract_error
