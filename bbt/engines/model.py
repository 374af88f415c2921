"""What bbt must know about the served model that an engine's API does not say (vLLM, SGLang).

vLLM reports a model's id and context length, not its hidden size, vocabulary size or the
statistics of its input-embedding table. They come from the model's ``config.json`` (given
by path), from an input-embedding table the user extracted (``.npy``, ``.safetensors`` or a
``torch.save``d tensor), or from explicit values, in that order of trust: explicit values,
then the table, then the config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError

logger = logging.getLogger("bbt.vllm")

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


def require_torch() -> Any:
    """torch, imported on first use: the core install has no torch (``pip install 'bbt[vllm]'``)."""
    try:
        import torch
    except ImportError:
        raise ConfigurationError(
            "talking to vLLM with prompt embeddings needs torch, to write the tensors vLLM "
            "reads with torch.load: pip install 'bbt[vllm]'"
        ) from None
    return torch


# Names the same quantity goes by across Hugging Face architectures.
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: Tensor names of the input-embedding table in common checkpoints, tried in order.
EMBEDDING_KEYS = (
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "wte.weight",
    "embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "gpt_neox.embed_in.weight",
    "transformer.word_embeddings.weight",
)


def _config_value(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for scope in (config, config.get("text_config") or {}):
        for key in keys:
            if isinstance(scope, dict) and scope.get(key) is not None:
                return scope[key]
    return None


def read_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the model config {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"the model config {p} is not a JSON object")
    return data


def load_embedding_table(path: str | Path, key: str | None = None) -> FloatArray:
    """The input-embedding table [vocab, hidden] from ``.npy``, ``.safetensors`` or ``.pt``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"embedding table {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix == ".safetensors":
            arr = _from_safetensors(p, key)
        elif suffix in (".pt", ".pth", ".bin"):
            torch = require_torch()
            obj = torch.load(p, weights_only=True, map_location="cpu")
            if isinstance(obj, dict):
                obj = _pick(obj, key, p)
            arr = obj.to(torch.float32).numpy()
        else:
            raise ConfigurationError(
                f"embedding table {p}: unknown format {suffix!r}; use .npy, .safetensors or .pt"
            )
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"cannot read embedding table {p}: {exc}") from None
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ConfigurationError(
            f"embedding table {p} has shape {list(arr.shape)}; expected [vocab_size, hidden_size]"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _pick(tensors: dict[str, Any], key: str | None, p: Path) -> Any:
    if key is not None:
        if key not in tensors:
            raise ConfigurationError(f"embedding table {p} has no tensor {key!r}")
        return tensors[key]
    for name in EMBEDDING_KEYS:
        if name in tensors:
            return tensors[name]
    raise ConfigurationError(
        f"embedding table {p}: none of {', '.join(EMBEDDING_KEYS)} found; name the tensor "
        "(embedding_key=..., or ?embedding_key=NAME in a vllm+http:// URL)"
    )


def _from_safetensors(p: Path, key: str | None) -> Any:
    """Read only the embedding tensor: a checkpoint shard holds gigabytes of other weights."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigurationError(
            "reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    torch = require_torch()  # numpy cannot hold bfloat16, the usual checkpoint dtype
    with safe_open(str(p), framework="pt") as f:
        names = list(f.keys())
        if key is None:
            key = next((k for k in EMBEDDING_KEYS if k in names), None)
        if key is None or key not in names:
            _pick({}, key, p)  # raises the clear error
        return f.get_tensor(key).to(torch.float32).numpy()


@dataclass(frozen=True)
class ModelFacts:
    """Hidden size, vocabulary, depth and embedding statistics of the served model."""

    hidden_size: int
    vocab_size: int
    num_layers: int
    embedding_mean: float
    embedding_std: float
    std_source: str
    #: What the engine multiplies token embeddings by (bbt.engines.scale); 1 for most models.
    embedding_scale: float = 1.0


def model_facts(
    *,
    config: dict[str, Any] | None,
    table: FloatArray | None,
    hidden_size: int | None,
    embedding_std: float | None,
    vocab_size: int | None,
) -> ModelFacts:
    """Reconcile what the user gave; every contradiction and every gap is one clear error."""
    cfg = config or {}
    sources: dict[str, int] = {}
    if hidden_size is not None:
        sources["the hidden_size setting"] = int(hidden_size)
    if table is not None:
        sources["the embedding table's columns"] = int(table.shape[1])
    cfg_hidden = _config_value(cfg, _HIDDEN_KEYS)
    if cfg_hidden is not None:
        sources["config.json"] = int(cfg_hidden)
    if not sources:
        raise ConfigurationError(
            "the model's hidden size is unknown: vLLM does not report it; give the model's "
            "config.json (config=PATH, or ?config=PATH in the vllm+http:// URL), its "
            "input-embedding table, or hidden_size=H"
        )
    if len(set(sources.values())) > 1:
        said = ", ".join(f"{where} says {h}" for where, h in sources.items())
        raise ConfigurationError(f"hidden-size mismatch: {said}; they must agree")
    hidden = next(iter(sources.values()))

    vocab = vocab_size
    if vocab is None and table is not None:
        vocab = int(table.shape[0])
    if vocab is None and cfg.get("vocab_size") is not None:
        vocab = int(cfg["vocab_size"])
    if vocab is None:
        raise ConfigurationError(
            "the model's vocabulary size is unknown: give its config.json or its "
            "input-embedding table"
        )
    layers = _config_value(cfg, _LAYER_KEYS)

    mean = 0.0
    if embedding_std is not None:
        std, where = float(embedding_std), "given"
        if table is not None:
            mean = float(table.mean())
    elif table is not None:
        std, where, mean = float(table.std()), "embedding table", float(table.mean())
    elif cfg.get("initializer_range") is not None:
        std, where = float(cfg["initializer_range"]), "config.json initializer_range"
        logger.warning(
            "embedding std taken from config.json's initializer_range (%g): that is the std "
            "the table was initialised with, usually smaller than the trained table's; give "
            "embedding_std (or the embedding table) for the real value",
            std,
        )
    else:
        raise ConfigurationError(
            "the embedding std is unknown (BBT scales its projection by it): give "
            "embedding_std=S, the model's input-embedding table, or a config.json with "
            "initializer_range"
        )
    if not std > 0:
        raise ConfigurationError(f"embedding std must be positive; got {std}")
    return ModelFacts(
        hidden_size=hidden,
        vocab_size=vocab,
        num_layers=int(layers) if layers else 1,
        embedding_mean=mean,
        embedding_std=std,
        std_source=where,
    )
