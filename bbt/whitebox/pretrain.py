"""Provider-side pre-training: a soft prompt tuned with gradients on a source task, kept
where a black-box run can start from it (``--init run:DIR`` or ``--init mix:DIR1,DIR2``).

The provider serves the model, so it can train with gradients what its users then tune
without: :func:`pretrain_prompt` runs prompt tuning (:func:`~bbt.whitebox.train_whitebox`)
on the source task and writes a run directory holding the prompt (``prompt.npy``) and a
manifest with its metadata (source task, model and its fingerprint, tokens, steps, source
accuracy on held-out rows), which :mod:`bbt.tuner.transfer` reads and checks.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError
from bbt.tuner.data import Example
from bbt.tuner.manifest import MANIFEST, PROMPT, RUN_FORMAT, model_record, now, versions
from bbt.tuner.rundir import atomic_write, save_npy
from bbt.tuner.tasks import Task
from bbt.tuner.transfer import model_fingerprint, prompt_sha256
from bbt.whitebox.train import train_whitebox


@dataclass
class Pretrained:
    """A pre-trained prompt and what describes it (the manifest's ``pretrain`` entry)."""

    prompt: np.ndarray[Any, Any]  # [n, H], float32
    metadata: dict[str, Any]
    model: dict[str, Any]  # what a run manifest records under "model"


def pretrain_prompt(
    task: Task,
    train: Sequence[Example],
    heldout: Sequence[Example] = (),
    *,
    model_dir: str | None = None,
    n_tokens: int = 10,
    steps: int = 100,
    lr: float | None = None,
    seed: int = 0,
    source_name: str | None = None,
) -> Pretrained:
    """Prompt tuning on ``train`` (the source task); accuracy on ``heldout`` when given."""
    result = train_whitebox(
        "prompt-tuning", task=task, train=train, model_dir=model_dir,
        n_tokens=n_tokens, steps=steps, lr=lr, seed=seed,
    )  # fmt: skip
    assert result.prompt is not None  # prompt tuning always returns its prompt
    accuracy = None
    if heldout:
        labels = np.array([e.label for e in heldout])
        accuracy = float(np.mean(result.predict(heldout) == labels))
    info = result.model_info
    assert info is not None
    model = model_record(info)
    metadata = {
        "source_task": source_name or task.name,
        "task": task.as_dict(),
        "fingerprint": model_fingerprint(model),
        "tokens": n_tokens,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "n_train": len(train),
        "n_heldout": len(heldout),
        "source_accuracy": accuracy,
        "train_seconds": result.train_seconds,
        "final_loss": result.losses[-1] if result.losses else None,
        "sha256": prompt_sha256(result.prompt),
    }
    return Pretrained(result.prompt, metadata, model)


def save_pretrained(pre: Pretrained, run_dir: str | Path) -> Path:
    """Write ``pre`` as a finished run directory (manifest + ``prompt.npy``) that
    ``--init run:DIR`` reads. An existing run is never overwritten."""
    path = Path(run_dir)
    if (path / MANIFEST).exists():
        raise ConfigurationError(f"{path} already holds a run; choose another directory")
    path.mkdir(parents=True, exist_ok=True)
    save_npy(path / PROMPT, np.ascontiguousarray(pre.prompt, dtype=np.float32))
    manifest = {
        "format": RUN_FORMAT,
        "run_id": secrets.token_hex(16),
        "status": "completed",
        "created": now(),
        "kind": "pretrained",
        "model": pre.model,
        "task": pre.metadata["task"],
        "pretrain": {k: v for k, v in pre.metadata.items() if k != "task"},
        "versions": versions(),
    }
    atomic_write(path / MANIFEST, json.dumps(manifest, indent=2).encode())
    return path
