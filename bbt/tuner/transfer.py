"""Transfer: a prompt tuned (or pre-trained) elsewhere as the starting point p0 of a run.

Sun et al. (2022, Sec. 4.2) get their largest gains not from the optimiser but from p0: a
prompt pre-trained on a source task (MNLI) and tuned from there on the target. Here a
prompt travels as a run directory (``--init run:DIR``: its selected ``prompt.npy``), and a
prompt is only taken by a run on the same model with the same prompt length: the source's
model fingerprint (:func:`model_fingerprint`) must match the service's, one clear error
otherwise. The manifest of the new run records where p0 came from (the directory, the
prompt's SHA-256 and the model fingerprint).

A prompt also travels through the service's registry (``--init prompt:ID``, protocol 1.4):
one the operator published as shared (``bbt registry publish``, which records the model
fingerprint beside it) or one this key stored; the client fetches its values
(``fetch_prompt``), checks them against the registry's digest, then as a run's prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import BBTError, ConfigurationError, NotFoundError, RunError
from bbt.protocol import ModelInfo
from bbt.protocol.shared import SHARED_PROMPTS_CAPABILITY
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


def read_run_prompt(run_dir: str) -> tuple[F32, dict[str, Any], str]:
    """The selected prompt of the finished run in ``run_dir``, unchecked: (prompt, the run's
    manifest, the fingerprint of the model it was tuned on)."""
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
    return np.ascontiguousarray(prompt, dtype=np.float32), manifest, fingerprint


def load_run_prompt(run_dir: str, info: ModelInfo, n_tokens: int) -> tuple[F32, str, str]:
    """The selected prompt of the finished run in ``run_dir``, checked against the service's
    model and ``n_tokens``: (prompt [n, H], its SHA-256, the model fingerprint)."""
    arr, _, fingerprint = read_run_prompt(run_dir)
    check_transfer(f"run {run_dir}", arr, fingerprint, info, n_tokens)
    return arr, prompt_sha256(arr), fingerprint


def publication(run_dir: str) -> tuple[F32, str, dict[str, Any]]:
    """What publishing the run in ``run_dir`` as a shared prompt stores: (prompt, model id,
    provenance: source task, model fingerprint, tokens, and for a ``bbt pretrain`` run its
    steps and source accuracy)."""
    prompt, manifest, fingerprint = read_run_prompt(run_dir)
    task, found = manifest.get("task"), manifest.get("pretrain")
    pre: dict[str, Any] = found if isinstance(found, dict) else {}
    name = task.get("name") if isinstance(task, dict) else None
    meta: dict[str, Any] = {
        "source_task": pre.get("source_task") or name,
        "fingerprint": fingerprint,
        "tokens": int(prompt.shape[0]) if prompt.ndim >= 2 else None,
        "steps": pre.get("steps"),
        "source_accuracy": pre.get("source_accuracy"),
    }
    return prompt, str(manifest["model"].get("id")), meta


def load_registry_prompt(
    service: object, prompt_id: str, info: ModelInfo, n_tokens: int, sha256: str | None = None
) -> tuple[F32, str, str]:
    """The registry prompt ``prompt_id`` fetched through ``service`` and checked against its
    model and ``n_tokens``: (prompt [n, H], its SHA-256, the model fingerprint). ``sha256``:
    what a resumed run recorded; a prompt that changed since is refused."""
    source = f"registry prompt {prompt_id}"
    fetch = getattr(service, "fetch_prompt", None)
    in_process = bool(getattr(service, "in_process", False))  # a LocalClient: the server's code
    served = in_process or SHARED_PROMPTS_CAPABILITY in info.capabilities
    if not callable(fetch) or not served:
        raise ConfigurationError(
            f"cannot start from {source}: this service does not hand out registry prompts "
            "(it needs protocol 1.4 and the 'shared_prompts' capability)"
        )
    try:
        got = fetch(prompt_id)
        prompt = np.ascontiguousarray(got.tensor.to_numpy(), dtype=np.float32)
    except NotFoundError:
        raise ConfigurationError(
            f"cannot start from {source}: the service has no such prompt for this API key"
        ) from None
    except (BBTError, ValueError) as exc:
        raise ConfigurationError(f"cannot fetch {source}: {exc}") from None
    digest = prompt_sha256(prompt)
    if digest != got.sha256:
        raise ConfigurationError(f"{source} arrived damaged (its digest does not match)")
    if sha256 is not None and sha256 != digest:
        raise ConfigurationError(f"{source} changed since this run started")
    fingerprint = got.recipe.get("fingerprint")
    if not isinstance(fingerprint, str):
        # A key's own stored prompt records no fingerprint: its model id must be the served
        # model's (the registry refuses to score it on another model for the same reason).
        if got.model != info.id:
            raise ConfigurationError(
                f"{source} was stored for model {got.model!r}; this service serves "
                f"{info.id!r}: a prompt only transfers within a model"
            )
        fingerprint = model_fingerprint(info)
    check_transfer(source, prompt, fingerprint, info, n_tokens)
    return prompt, digest, fingerprint


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
