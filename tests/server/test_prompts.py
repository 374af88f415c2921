"""A registry row as the wire's StoredPrompt: every field the protocol shows, nothing else."""

from __future__ import annotations

import numpy as np

from bbt.server._prompts import stored_prompt
from bbt.server._registry_rows import PromptRecord


def test_a_record_becomes_its_wire_metadata() -> None:
    record = PromptRecord(
        id="p1",
        model="m",
        kind="tensor",
        shape=(np.int64(5), 8),
        nbytes=160,
        sha256="ab" * 32,
        recipe={"seed": 3},
        label="mine",
        created_at=12.5,
        stored_bytes=999,  # the server's own accounting: never on the wire
        damaged="label unreadable",
    )
    got = stored_prompt(record)
    assert got.model_dump() == {
        "id": "p1",
        "object": "prompt",
        "model": "m",
        "kind": "tensor",
        "shape": [5, 8],
        "dtype": "float32",
        "nbytes": 160,
        "sha256": "ab" * 32,
        "label": "mine",
        "recipe": {"seed": 3},
        "created_at": 12.5,
        "damaged": "label unreadable",
        "shared": False,
    }
    assert stored_prompt(record, shared=True) == got.model_copy(update={"shared": True})
