"""``bbt pretrain``: the provider's side of transfer. Tune a soft prompt with gradients on a
source task on the local model (the embedded default or a model directory) and save it as a
run directory that ``bbt tune --init run:DIR`` (or ``--init mix:DIR1,DIR2`` with
``--method mixture``) starts from; ``--publish`` also shares it in the server's registry
(``--init prompt:ID``, :mod:`bbt.cli._registry`). Needs ``bbt[whitebox]``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from bbt.cli._common import one_line_errors


def pretrain(
    task: str = typer.Option(..., "--task", help="Source task: a preset name (sst2, agnews...)."),
    train_file: Path = typer.Option(..., "--train", help="Source data (tsv, csv or jsonl)."),
    out: Path = typer.Option(..., "--out", help="Run directory to write (must not hold a run)."),
    model: str | None = typer.Option(None, "--model", help="Model directory (default: MiniLM)."),
    k: int = typer.Option(32, "--k", min=1, help="Training rows per class."),
    heldout_k: int = typer.Option(
        50, "--heldout-k", min=0, help="Held-out rows per class for the source accuracy."
    ),
    n_tokens: int = typer.Option(10, "--n-tokens", min=1, help="Prompt length n."),
    steps: int = typer.Option(60, "--steps", min=1, help="Gradient steps (Adam)."),
    lr: float | None = typer.Option(None, "--lr", help="Adam's step size (default 3e-3)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample and of the initial prompt."),
    publish: bool = typer.Option(
        False, "--publish", help="Also share it with every key (as bbt registry publish)."
    ),
    registry: str | None = typer.Option(
        None, "--registry", help="With --publish: the server's registry file."
    ),
) -> None:
    """Pre-train a soft prompt with gradients on a source task (needs bbt\\[whitebox])."""
    with one_line_errors("bbt pretrain needs {name}: pip install 'bbt[whitebox]'", also=(OSError,)):
        from bbt.tuner import get_preset, load_examples, sample_k_shot
        from bbt.whitebox.pretrain import pretrain_prompt, save_pretrained

        source = get_preset(task)
        rows = load_examples(train_file, source)
        train, heldout = sample_k_shot(rows, k, seed, source.num_classes, dev_k=heldout_k)
        pre = pretrain_prompt(
            source, train, heldout, model_dir=model, n_tokens=n_tokens, steps=steps, lr=lr,
            seed=seed, source_name=task,
        )  # fmt: skip
        path = save_pretrained(pre, out)
    meta = {k: v for k, v in pre.metadata.items() if k != "task"}
    if publish:
        from bbt.cli._registry import publish_run

        meta["shared_id"] = publish_run(path, registry, None)["id"]
    typer.echo(json.dumps({"run_dir": str(path), **meta}))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("pretrain")(pretrain)
