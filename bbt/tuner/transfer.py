"""Transfer: a prompt tuned (or pre-trained) elsewhere as the starting point p0 of a run.

Sun et al. (2022, Sec. 4.2) get their largest gains not from the optimiser but from p0: a
prompt pre-trained on a source task (MNLI) and tuned from there on the target. Here a
prompt travels as a run directory (``--init run:DIR``: its selected ``prompt.npy``), and a
prompt is only taken by a run on the same model with the same prompt length: the source's
model fingerprint (:func:`model_fingerprint`) must match the service's, one clear error
otherwise. The manifest of the new run records where p0 came from (the directory, the
prompt's SHA-256 and the model fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError, RunError
from bbt.protocol import ModelInfo
from bbt.tuner.manifest import PROMPT, read_manifest
from bbt.tuner.rundir import load_npy

F32 = np.ndarray[Any, np.dtype[np.float32]]

#: What identifies a model for a prompt: a prompt means something only to the model (and
#: the embedding table) it was tuned on.
FINGERPRINT_FIELDS: tuple[str, ...] = ("id", "kind", "hidden_size", "vocab_size")


def model_fingerprint(model: Mapping[str, Any] | ModelInfo) -> str:
    """A short SHA-256 of the model's id, kind, hidden size and vocabulary size (what a run
    manifest records under ``"model"``; a run from before causal LMs is masked)."""
    data = model.model_dump() if isinstance(model, ModelInfo) else dict(model)
    data.setdefault("kind", "masked_lm")
    core = {k: data.get(k) for k in FINGERPRINT_FIELDS}
    blob = json.dumps(core, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def prompt_sha256(prompt: np.ndarray[Any, Any]) -> str:
    """SHA-256 of a prompt's float32 little-endian bytes (as the registry hashes them)."""
    data = np.ascontiguousarray(prompt, dtype="<f4")
    return hashlib.sha256(data.tobytes()).hexdigest()


def check_transfer(
    source: str, prompt: np.ndarray[Any, Any], fingerprint: str, info: ModelInfo, n_tokens: int
) -> None:
    """Refuse a prompt made for another model or another prompt length (one line)."""
    here = model_fingerprint(info)
    if fingerprint != here:
        raise ConfigurationError(
            f"{source} was tuned on another model (fingerprint {fingerprint}); this service "
            f"serves {info.id!r} (fingerprint {here}): a prompt only transfers within a model"
        )
    if prompt.shape != (n_tokens, info.hidden_size):
        raise ConfigurationError(
            f"{source} holds a prompt of shape {list(prompt.shape)}; this run needs "
            f"[{n_tokens}, {info.hidden_size}] (set --n-tokens {prompt.shape[0]} to match)"
            if prompt.ndim == 2
            else f"{source} holds a prompt of shape {list(prompt.shape)}, not [n, H]: a deep "
            "(BBTv2) prompt cannot start a BBT run"
        )


def load_run_prompt(run_dir: str, info: ModelInfo, n_tokens: int) -> tuple[F32, str, str]:
    """The selected prompt of the finished run in ``run_dir``, checked against the service's
    model and ``n_tokens``: (prompt [n, H], its SHA-256, the model fingerprint)."""
    source = f"run {run_dir}"
    try:
        manifest = read_manifest(run_dir)
    except RunError as exc:
        raise ConfigurationError(f"cannot start from {source}: {exc}") from None
    if not isinstance(manifest.get("model"), dict):
        raise ConfigurationError(f"cannot start from {source}: its manifest records no model")
    fingerprint = model_fingerprint(manifest["model"])
    try:
        prompt = load_npy(Path(run_dir) / PROMPT)
    except FileNotFoundError:
        raise ConfigurationError(
            f"cannot start from {source}: it has no {PROMPT} (status "
            f"{manifest.get('status')!r}; only a finished run has a selected prompt)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the prompt of {source}: {exc}") from None
    check_transfer(source, prompt, fingerprint, info, n_tokens)
    arr = np.ascontiguousarray(prompt, dtype=np.float32)
    return arr, prompt_sha256(arr), fingerprint


def load_sources(
    run_dirs: tuple[str, ...], info: ModelInfo, n_tokens: int, sha256: str | None = None
) -> tuple[np.ndarray[Any, np.dtype[np.float64]], str, str]:
    """The selected prompts of K finished runs, stacked [K, n, H] (float64), each checked as
    by :func:`load_run_prompt`: (stack, SHA-256 of the float32 stack, model fingerprint).
    ``sha256``: what a run recorded; a stack that changed since is refused."""
    if len(run_dirs) < 2:
        raise ConfigurationError("a mixture needs at least two source runs (mix:DIR1,DIR2)")
    prompts = [load_run_prompt(d, info, n_tokens) for d in run_dirs]
    stack32 = np.stack([p for p, _, _ in prompts])
    digest = prompt_sha256(stack32)
    if sha256 is not None and sha256 != digest:
        raise ConfigurationError("the source prompts of this mixture changed since it started")
    return stack32.astype(np.float64), digest, prompts[0][2]


def mix_prompts(weights: np.ndarray[Any, Any], stack: np.ndarray[Any, np.dtype[np.float64]]) -> F32:
    """sum_k softmax(w)_k P_k for each row of ``weights`` [P, K]: prompts [P, n, H], float32."""
    w = np.asarray(weights, dtype=np.float64)
    w = np.exp(w - w.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    mixed = np.einsum("pk,knh->pnh", w, stack)
    return np.ascontiguousarray(mixed, dtype=np.float32)
